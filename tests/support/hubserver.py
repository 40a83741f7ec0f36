"""A local Hugging Face Hub for tests: stdlib HTTP, real huggingface_hub clients, countable and breakable.

Point a client at it with `HF_ENDPOINT=<hub.endpoint>` (huggingface_hub reads it at import, so set it before importing,
usually in a subprocess). It serves what `snapshot_download`, `hf_hub_download`, `HfApi.model_info`,
`HfApi.list_repo_tree`, `HfApi.get_paths_info`, `HfApi.list_repo_refs` and `hf cache verify` ask for
(huggingface_hub 2.4):

    GET  /api/models/{repo}[/revision/{rev}]      model info (`?blobs=true`: sizes, blob ids, LFS sha256)
    GET  /api/models/{repo}/tree/{rev}[/{path}]   `?recursive=`, `?expand=`, cursor pagination via `Link`
    POST /api/models/{repo}/paths-info/{rev}      form fields `paths` (repeated) and `expand`
    GET  /api/models/{repo}/refs                  branches and tags (all refs are listed as branches)
    HEAD /{repo}/resolve/{rev}/{path}             X-Repo-Commit, ETag, X-Linked-Etag/-Size (LFS), Content-Length
    GET  /{repo}/resolve/{rev}/{path}             the bytes, with single-range `Range` support (206)

Errors carry `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) and `X-Error-Message`, which is
what huggingface_hub turns into its typed exceptions. Anything else (e.g. `GET /api/agent-harnesses`, which
huggingface_hub sends once per process while building its user agent) gets a 404 and is listed in `unhandled`.

Files are served from memory (or, above `memory_limit`, from disk with a check that they did not change). A file is
LFS when it ends in an LFS suffix (`.safetensors`, `.bin`, ...) or is at least `lfs_threshold` bytes, as on the Hub:
then its ETag is the content sha256; otherwise it is the git blob sha1. Commit shas are a pure function of the file
listing, so the same folder always gives the same sha.

Tests count requests (`requests`, `request_count`, `bytes_sent`, `records`) and inject faults at the socket:
`throttle_bytes_per_s`, `latency_s`, `fail_next()`, `cut_after()`. `python -m tests.support.hubserver` runs it as its
own process (see `main`); `GET /__stats` and `POST /__reset` serve other processes and are not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

logger = logging.getLogger(__name__)

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".npz")
DEFAULT_LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub rejects plain git files above 10 MB
DEFAULT_MEMORY_LIMIT = 64 * 1024 * 1024
EXCLUDED_DIRS = (".git", ".cache/huggingface")  # git internals, local_dir download metadata
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
_CHUNK = 64 * 1024


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob, as the Hub reports it in `blobId` / `oid`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclasses.dataclass(frozen=True)
class HubFile:
    """One file of one commit."""

    path: str
    size: int
    blob_id: str  # git sha1 of the content, or of the LFS pointer for LFS files
    sha256: str
    lfs: bool
    data: bytes | None  # None: read from `source` at request time
    source: Path
    stat_key: tuple[int, int]  # (size, mtime_ns) of `source` when added

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))


@dataclasses.dataclass(frozen=True)
class Commit:
    sha: str
    title: str
    date: datetime
    files: dict[str, HubFile]

    def directories(self) -> set[str]:
        dirs: set[str] = set()
        for path in self.files:
            parts = path.split("/")[:-1]
            dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return dirs


@dataclasses.dataclass
class _Repo:
    commits: dict[str, Commit] = dataclasses.field(default_factory=dict)
    refs: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One request as the hub saw it.

    `status` is the status line sent (0 before it is sent); `complete` turns true once the whole response is written,
    so a response cut by `cut_after`, a stop or a vanished client stays incomplete.
    """

    method: str
    path: str
    query: str
    range: str | None
    status: int
    body_bytes: int
    complete: bool


@dataclasses.dataclass
class _Entry:
    method: str
    path: str
    query: str
    range: str | None
    status: int = 0
    body_bytes: int = 0
    complete: bool = False


@dataclasses.dataclass
class _Fault:
    kind: str  # "fail" | "cut"
    remaining: int | None  # None: forever
    match: str | None
    status: int = 500
    nbytes: int = 0


class _HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.commit = commit


def _read_file(path: Path, *, lfs_threshold: int, memory_limit: int, rel: str) -> HubFile:
    st = path.stat()
    size = st.st_size
    lfs = rel.endswith(LFS_SUFFIXES) or size >= lfs_threshold
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
    keep = size <= memory_limit
    chunks: list[bytes] = []
    read = 0
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            sha256.update(chunk)
            if not lfs:
                sha1.update(chunk)
            if keep:
                chunks.append(chunk)
            read += len(chunk)
    if read != size:
        raise RuntimeError(f"{path} changed while LocalHub was reading it")
    digest = sha256.hexdigest()
    blob_id = git_blob_sha1(lfs_pointer(digest, size)) if lfs else sha1.hexdigest()
    return HubFile(
        path=rel,
        size=size,
        blob_id=blob_id,
        sha256=digest,
        lfs=lfs,
        data=b"".join(chunks) if keep else None,
        source=path,
        stat_key=(size, st.st_mtime_ns),
    )


def _list_folder(folder: Path) -> list[tuple[str, Path]]:
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if any(rel == d or rel.startswith(d + "/") for d in EXCLUDED_DIRS):
            continue
        if p.is_file():  # follows symlinks, so an HF cache snapshot folder can be served as is
            out.append((rel, p))
    return out


def _commit_sha(files: Iterable[HubFile]) -> str:
    listing = "".join(f"{f.path}\0{f.etag}\n" for f in sorted(files, key=lambda f: f.path))
    return hashlib.sha1(b"localhub-commit\0" + listing.encode(), usedforsecurity=False).hexdigest()


def _iso(date: datetime) -> str:
    return date.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


class LocalHub:
    """A Hugging Face Hub-compatible HTTP server on 127.0.0.1 for tests. Use as a context manager or start/stop."""

    def __init__(
        self,
        *,
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        tree_page_size: int = 1000,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.lfs_threshold = lfs_threshold
        self.memory_limit = memory_limit
        self.tree_page_size = tree_page_size
        self.throttle_bytes_per_s: float | None = None
        self.latency_s: float = 0.0
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._entries: list[_Entry] = []
        self._unhandled: list[tuple[str, str]] = []
        self._bytes_sent = 0
        self._faults: list[_Fault] = []
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # -- repositories ------------------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, folder: Path, *, revision: str = "main") -> str:
        """Publish the files under `folder` as a commit of `repo_id` and point `revision` at it; return the sha.

        Call again (with other contents) to publish a newer commit on the same branch. Files are hashed now; files up
        to `memory_limit` are also read into memory now, larger ones are re-read from disk when requested.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise NotADirectoryError(folder)
        files = {
            rel: _read_file(p, lfs_threshold=self.lfs_threshold, memory_limit=self.memory_limit, rel=rel)
            for rel, p in _list_folder(folder)
        }
        sha = _commit_sha(files.values())
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo())
            if sha not in repo.commits:
                date = _EPOCH + timedelta(minutes=len(repo.commits))
                repo.commits[sha] = Commit(sha=sha, title=f"Upload {folder.name}", date=date, files=files)
            repo.refs[revision] = sha
        return sha

    def set_ref(self, repo_id: str, revision: str, sha: str) -> None:
        """Point branch/tag `revision` of `repo_id` at an existing commit (e.g. roll `main` back)."""
        with self._lock:
            repo = self._repos[repo_id]
            if sha not in repo.commits:
                raise KeyError(f"{repo_id} has no commit {sha}")
            repo.refs[revision] = sha

    def remove_repo(self, repo_id: str) -> None:
        with self._lock:
            self._repos.pop(repo_id, None)

    def commit_files(self, repo_id: str, revision: str = "main") -> dict[str, HubFile]:
        with self._lock:
            repo = self._repos[repo_id]
            return dict(repo.commits[repo.refs.get(revision, revision)].files)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> LocalHub:
        if self._server is not None:
            raise RuntimeError("LocalHub already started")
        self._stopping.clear()
        server = _Server((self._host, self._port), _Handler)
        server.hub = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="localhub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            _abort(conn)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("LocalHub is not started")
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://{self._host}:{self.port}"

    # -- counters ----------------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request, in arrival order; the path has no query string."""
        with self._lock:
            return [(e.method, e.path) for e in self._entries]

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def bytes_sent(self) -> int:
        """Body bytes of file downloads (`GET .../resolve/...`) written to sockets."""
        with self._lock:
            return self._bytes_sent

    @property
    def records(self) -> list[RequestRecord]:
        with self._lock:
            return [
                RequestRecord(e.method, e.path, e.query, e.range, e.status, e.body_bytes, e.complete)
                for e in self._entries
            ]

    @property
    def unhandled(self) -> list[tuple[str, str]]:
        """Requests no route matched (answered 404)."""
        with self._lock:
            return list(self._unhandled)

    def reset_counters(self) -> None:
        with self._lock:
            self._entries.clear()
            self._unhandled.clear()
            self._bytes_sent = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "request_count": len(self._entries),
                "bytes_sent": self._bytes_sent,
                "requests": [[e.method, e.path] for e in self._entries],
                "unhandled": [list(u) for u in self._unhandled],
            }

    # -- faults ------------------------------------------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 500, *, path_contains: str | None = None) -> None:
        """Answer the next `n` requests (whose path contains `path_contains`, if given) with `status`."""
        with self._lock:
            self._faults.append(_Fault("fail", n, path_contains, status=status))

    def cut_after(self, path_suffix: str, nbytes: int, *, times: int | None = 1) -> None:
        """Drop the connection after `nbytes` body bytes of the next `times` downloads of files ending in
        `path_suffix` (`times=None`: every one). Headers still announce the full length, as a dying peer would."""
        with self._lock:
            self._faults.append(_Fault("cut", times, path_suffix, nbytes=nbytes))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
        self.throttle_bytes_per_s = None
        self.latency_s = 0.0

    def _take_fault(self, kind: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind != kind:
                    continue
                if fault.match is not None:
                    hit = path.endswith(fault.match) if kind == "cut" else fault.match in path
                    if not hit:
                        continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    # -- request bookkeeping (called by the handler) -----------------------------------------------------------

    def _record(self, method: str, path: str, query: str, range_header: str | None) -> _Entry:
        entry = _Entry(method, path, query, range_header)
        with self._lock:
            self._entries.append(entry)
        return entry

    def _count_body(self, entry: _Entry, n: int) -> None:
        with self._lock:
            self._bytes_sent += n
            entry.body_bytes += n

    def _note_unhandled(self, method: str, path: str) -> None:
        with self._lock:
            self._unhandled.append((method, path))

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # -- lookups -----------------------------------------------------------------------------------------------

    def _split_repo(self, segments: list[str]) -> tuple[str, list[str]]:
        """Split URL segments into (repo_id, rest); repo ids have one or two segments."""
        with self._lock:
            known = set(self._repos)
        if len(segments) >= 2 and f"{segments[0]}/{segments[1]}" in known:
            return f"{segments[0]}/{segments[1]}", segments[2:]
        if segments and segments[0] in known:
            return segments[0], segments[1:]
        if len(segments) >= 2:
            return f"{segments[0]}/{segments[1]}", segments[2:]
        return (segments[0] if segments else ""), []

    def _resolve(self, repo_id: str, revision: str) -> Commit:
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                raise _HubError(404, "RepoNotFound", "Repository not found")
            sha = repo.refs.get(revision)
            if sha is None and _COMMIT_RE.match(revision) and revision in repo.commits:
                sha = revision
            if sha is None:
                raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return repo.commits[sha]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    hub: LocalHub


def _abort(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        conn.close()


class _Cut(Exception):
    """The response was deliberately cut: close the connection without finishing it."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/1"
    timeout = 60  # idle keep-alive connections end after this
    server: _Server

    # -- plumbing ----------------------------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.server.hub._track(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.hub._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("localhub %s: " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        self._entry: _Entry | None = None  # handlers live as long as a keep-alive connection
        url = urlsplit(self.path)
        raw_path = url.path
        body = self._read_body()
        if raw_path == "/__stats" and method == "GET":
            self._send_json(200, hub.stats(), method=method)
            return
        if raw_path == "/__reset" and method == "POST":
            hub.reset_counters()
            self._send_json(200, {"ok": True}, method=method)
            return

        entry = hub._record(method, raw_path, url.query, self.headers.get("Range"))
        self._entry = entry
        try:
            if hub.latency_s > 0 and hub._stopping.wait(hub.latency_s):
                raise _Cut
            fault = hub._take_fault("fail", raw_path)
            if fault is not None:
                raise _HubError(fault.status, None, f"LocalHub: injected failure ({fault.status})")
            self._route(method, raw_path, parse_qs(url.query), body)
        except _HubError as exc:
            headers = {"X-Error-Message": exc.message}
            if exc.code is not None:
                headers["X-Error-Code"] = exc.code
            if exc.commit is not None:
                headers["X-Repo-Commit"] = exc.commit
            self._send_json(exc.status, {"error": exc.message}, method=method, headers=headers)
        except (_Cut, ConnectionError, TimeoutError):
            self.close_connection = True
            _abort(self.connection)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_json(self, status: int, payload: Any, *, method: str, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        body_follows = method != "HEAD"
        self._start(status, headers, len(data), body_follows=body_follows)
        if body_follows:
            self._write(data, last=True)

    def _start(self, status: int, headers: dict[str, str], length: int, *, body_follows: bool) -> None:
        # Bookkeeping happens before the bytes leave, so a client that has its answer sees it in the counters.
        if self._entry is not None:
            self._entry.status = status
            self._entry.complete = not body_follows or length == 0
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        try:
            self.end_headers()
        except OSError:
            if self._entry is not None:
                self._entry.complete = False
            raise _Cut from None

    def _write(self, data: bytes, *, last: bool) -> None:
        if self._entry is not None and last:
            self._entry.complete = True
        try:
            self.wfile.write(data)
        except OSError:
            if self._entry is not None:
                self._entry.complete = False
            raise _Cut from None

    # -- routes ------------------------------------------------------------------------------------------------

    def _route(self, method: str, raw_path: str, params: dict[str, list[str]], body: bytes) -> None:
        hub = self.server.hub
        segments = [unquote(s) for s in raw_path.strip("/").split("/")] if raw_path.strip("/") else []
        if segments[:2] == ["api", "models"] and len(segments) > 2:
            repo_id, rest = hub._split_repo(segments[2:])
            if method == "GET" and not rest:
                return self._model_info(repo_id, "main", params)
            if method == "GET" and len(rest) == 2 and rest[0] == "revision":
                return self._model_info(repo_id, rest[1], params)
            if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                return self._tree(repo_id, rest[1], "/".join(rest[2:]), params, raw_path)
            if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
                return self._paths_info(repo_id, rest[1], parse_qs(body.decode()))
            if method == "GET" and rest == ["refs"]:
                return self._refs(repo_id)
        elif method in ("GET", "HEAD") and "resolve" in segments[1:3]:
            i = segments.index("resolve", 1)
            repo_id, rest = hub._split_repo(segments[:i])
            if not rest and len(segments) > i + 2:
                return self._resolve_file(method, repo_id, segments[i + 1], "/".join(segments[i + 2 :]))
        hub._note_unhandled(method, raw_path)
        raise _HubError(404, None, f"LocalHub does not serve {method} {raw_path}")

    def _model_info(self, repo_id: str, revision: str, params: dict[str, list[str]]) -> None:
        commit = self.server.hub._resolve(repo_id, revision)
        blobs = _truthy((params.get("blobs") or [None])[0])
        siblings = []
        for f in commit.files.values():
            sibling: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                sibling.update(size=f.size, blobId=f.blob_id)
                if f.lfs:
                    sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": commit.sha[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.partition("/")[0] if "/" in repo_id else None,
            "sha": commit.sha,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(_EPOCH),
            "private": False,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "library_name": "transformers",
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(f.size for f in commit.files.values()),
        }
        config = commit.files.get("config.json")
        if config is not None and config.data is not None:
            try:
                parsed = json.loads(config.data)
                info["config"] = {k: parsed[k] for k in ("architectures", "model_type") if k in parsed}
            except ValueError:
                pass
        self._send_json(200, info, method="GET")

    def _tree_entry(self, commit: Commit, path: str, *, expand: bool) -> dict[str, Any]:
        f = commit.files.get(path)
        if f is None:
            oid = hashlib.sha1(f"tree\0{commit.sha}\0{path}".encode(), usedforsecurity=False).hexdigest()
            entry: dict[str, Any] = {"type": "directory", "oid": oid, "size": 0, "path": path}
        else:
            entry = {"type": "file", "oid": f.blob_id, "size": f.size, "path": path}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            if expand:
                entry["securityFileStatus"] = {
                    "status": "safe",
                    "avScan": {"virusFound": False, "virusNames": None},
                    "pickleImportScan": None,
                }
        if expand:
            entry["lastCommit"] = {"id": commit.sha, "title": commit.title, "date": _iso(commit.date)}
        return entry

    def _tree(self, repo_id: str, revision: str, path: str, params: dict[str, list[str]], raw_path: str) -> None:
        hub = self.server.hub
        commit = hub._resolve(repo_id, revision)
        recursive = _truthy((params.get("recursive") or [None])[0])
        expand = _truthy((params.get("expand") or [None])[0])
        dirs = commit.directories()
        path = path.strip("/")
        if path and path not in dirs:
            raise _HubError(404, "EntryNotFound", f"{path} does not exist on {revision}", commit.sha)
        prefix = f"{path}/" if path else ""
        children = []
        for candidate in sorted(dirs | set(commit.files)):
            if not candidate.startswith(prefix):
                continue
            if recursive or "/" not in candidate[len(prefix) :]:
                children.append(candidate)
        page_size = max(1, min(hub.tree_page_size, 50) if expand else hub.tree_page_size)
        cursor = int((params.get("cursor") or ["0"])[0] or 0)
        page = children[cursor : cursor + page_size]
        headers = {}
        if cursor + page_size < len(children):
            query = urlencode(
                {"recursive": str(recursive).lower(), "expand": str(expand).lower(), "cursor": cursor + page_size}
            )
            headers["Link"] = f'<{hub.endpoint}{raw_path}?{query}>; rel="next"'
        payload = [self._tree_entry(commit, p, expand=expand) for p in page]
        self._send_json(200, payload, method="GET", headers=headers)

    def _paths_info(self, repo_id: str, revision: str, form: dict[str, list[str]]) -> None:
        commit = self.server.hub._resolve(repo_id, revision)
        expand = _truthy((form.get("expand") or [None])[0])
        dirs = commit.directories()
        wanted = [p.strip("/") for p in form.get("paths", [])]
        payload = [self._tree_entry(commit, p, expand=expand) for p in wanted if p in commit.files or p in dirs]
        self._send_json(200, payload, method="POST")

    def _refs(self, repo_id: str) -> None:
        hub = self.server.hub
        with hub._lock:
            repo = hub._repos.get(repo_id)
            refs = dict(repo.refs) if repo is not None else None
        if refs is None:
            raise _HubError(404, "RepoNotFound", "Repository not found")
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in sorted(refs.items())]
        self._send_json(200, {"branches": branches, "converts": [], "tags": [], "pullRequests": []}, method="GET")

    def _resolve_file(self, method: str, repo_id: str, revision: str, path: str) -> None:
        hub = self.server.hub
        commit = hub._resolve(repo_id, revision)
        f = commit.files.get(path)
        if f is None:
            raise _HubError(404, "EntryNotFound", f"{path} does not exist on {revision}", commit.sha)
        if f.data is None:
            st = f.source.stat()
            if (st.st_size, st.st_mtime_ns) != f.stat_key:
                raise _HubError(500, None, f"LocalHub: {f.source} changed on disk after add_repo")

        start, end, status = 0, f.size, 200  # [start, end)
        range_header = self.headers.get("Range") if method == "GET" else None
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{f.etag}"',
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}",
        }
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{f.sha256}"'
            headers["X-Linked-Size"] = str(f.size)
        if range_header:
            parsed = _parse_range(range_header, f.size)
            if parsed is None:
                del headers["Content-Type"]
                headers["Content-Range"] = f"bytes */{f.size}"
                self._send_json(416, {"error": "Requested Range Not Satisfiable"}, method=method, headers=headers)
                return
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        self._start(status, headers, end - start, body_follows=method != "HEAD")
        if method == "HEAD":
            return
        cut = hub._take_fault("cut", f"/{path}")
        limit = end if cut is None else min(end, start + cut.nbytes)
        self._send_body(f, start, limit, response_end=end)
        if cut is not None and limit < end:
            raise _Cut

    def _send_body(self, f: HubFile, start: int, end: int, *, response_end: int) -> None:
        """Write bytes [start, end) of `f`; the response is complete when `end` reaches `response_end`."""
        hub = self.server.hub
        entry = self._entry
        assert entry is not None
        source = None if f.data is not None else f.source.open("rb")
        try:
            if source is not None:
                source.seek(start)
            pos = start
            while pos < end:
                rate = hub.throttle_bytes_per_s
                size = min(_CHUNK, end - pos)
                if rate:
                    size = max(1, min(size, int(rate / 20)))
                chunk = f.data[pos : pos + size] if f.data is not None else source.read(size)  # type: ignore[union-attr]
                if not chunk:
                    raise _Cut
                hub._count_body(entry, len(chunk))
                try:
                    self._write(chunk, last=pos + len(chunk) >= response_end)
                except _Cut:
                    hub._count_body(entry, -len(chunk))
                    raise
                pos += len(chunk)
                if rate and pos < end and hub._stopping.wait(len(chunk) / rate):
                    raise _Cut
            self.wfile.flush()
        finally:
            if source is not None:
                source.close()


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Parse a single `bytes=` range into [start, end); None when unsatisfiable or unsupported."""
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # suffix range: the last N bytes
        n = int(m.group(2))
        return (max(0, size - n), size) if n > 0 and size > 0 else None
    start = int(m.group(1))
    end = int(m.group(2)) + 1 if m.group(2) else size
    if start >= size or end <= start:
        return None
    return start, min(end, size)


def main(argv: list[str] | None = None) -> int:
    """Serve folders as repos until SIGTERM/SIGINT, then print the counters as JSON on stdout."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.hubserver", description=main.__doc__)
    parser.add_argument(
        "--repo",
        action="append",
        default=[],
        metavar="ORG/NAME[@REV]=FOLDER",
        help="serve FOLDER as repo ORG/NAME at branch REV (default main); repeatable",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path, help="write the endpoint here once serving")
    parser.add_argument("--throttle-bytes-per-s", type=float, default=None)
    parser.add_argument("--latency-s", type=float, default=0.0)
    parser.add_argument("--lfs-threshold", type=int, default=DEFAULT_LFS_THRESHOLD)
    args = parser.parse_args(argv)

    hub = LocalHub(host=args.host, port=args.port, lfs_threshold=args.lfs_threshold)
    hub.throttle_bytes_per_s = args.throttle_bytes_per_s
    hub.latency_s = args.latency_s
    for spec in args.repo:
        name, sep, folder = spec.partition("=")
        if not sep:
            parser.error(f"--repo expects ORG/NAME=FOLDER, got {spec!r}")
        repo_id, _, revision = name.partition("@")
        hub.add_repo(repo_id, Path(folder), revision=revision or "main")

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    hub.start()
    try:
        if args.ready_file is not None:
            tmp = args.ready_file.with_name(f".{args.ready_file.name}.{os.getpid()}.tmp")
            tmp.write_text(hub.endpoint + "\n", encoding="utf-8")
            tmp.replace(args.ready_file)
        print(hub.endpoint, flush=True)
        while not done.wait(0.5):
            pass
    finally:
        hub.stop()
        print(json.dumps(hub.stats()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
