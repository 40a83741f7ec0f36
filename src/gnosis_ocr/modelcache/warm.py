"""Fill the cache with one commit of a model: only what is missing, crash-safe, manifest last.

Order of writes, each by temp file and rename: snapshot files -> ready-manifest -> ``refs/<branch>``. A process
killed at any point leaves either temp files (ignored by readers, removed by ``prune``) or whole files that the
next warm re-hashes and keeps. Without the manifest nothing counts as complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gnosis_ocr.errors import CacheCorruptError, ConfigError, HubError
from gnosis_ocr.modelcache.fsutil import atomic_write_bytes, atomic_writer, ensure_dir
from gnosis_ocr.modelcache.hashing import CHUNK, GitBlobHasher
from gnosis_ocr.modelcache.hub import HubClient, RemoteFile, RemoteSnapshot, retryable
from gnosis_ocr.modelcache.layout import RepoLayout, is_commit
from gnosis_ocr.modelcache.lease import LeaseInfo, writer_lease
from gnosis_ocr.modelcache.manifest import Manifest, ManifestFile, new_manifest, write_manifest
from gnosis_ocr.modelcache.metrics import CacheMetrics
from gnosis_ocr.modelcache.objectlease import ObjectLease, object_lease
from gnosis_ocr.modelcache.status import inspect_snapshot, list_snapshot, read_ref

logger = logging.getLogger(__name__)


class Progress(Protocol):
    """What long operations report; the CLI draws it as a bar, the service as job events."""

    def start(self, total_bytes: int, description: str) -> None: ...

    def advance(self, nbytes: int) -> None: ...


class NullProgress:
    def start(self, total_bytes: int, description: str) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass


@dataclass(frozen=True)
class WarmResult:
    repo_id: str
    revision: str
    commit: str
    snapshot_dir: Path
    downloaded_files: int
    downloaded_bytes: int
    reused_files: int
    waited_for_writer: bool
    seconds: float

    @property
    def already_complete(self) -> bool:
        return self.downloaded_files == 0 and self.reused_files == 0 and not self.waited_for_writer


@dataclass(frozen=True)
class WarmOptions:
    workers: int = 4
    lease_ttl: float = 60.0
    lease_wait: float = 1800.0
    lease_bucket: str | None = None  # gs://bucket/prefix behind the cache root: the lease is an object there
    lease_bucket_found: bool = False  # lease_bucket came from the mount table, not GNOSIS_CACHE_BUCKET


def write_ref(layout: RepoLayout, revision: str, commit: str) -> None:
    """Point a branch or tag at ``commit`` (a no-op for commit revisions, or when already there)."""
    if is_commit(revision) or read_ref(layout, revision) == commit:
        return
    atomic_write_bytes(layout.ref_path(revision), commit.encode())


def warm_snapshot(
    layout: RepoLayout,
    remote: RemoteSnapshot,
    revision: str,
    hub: HubClient,
    *,
    options: WarmOptions,
    metrics: CacheMetrics,
    progress: Progress | None = None,
    recheck: bool = False,
) -> WarmResult:
    """Make ``remote`` complete on disk. ``recheck`` re-hashes existing files even when the manifest is there
    (``repair``); otherwise a snapshot the fast check calls complete is left alone."""
    started = time.monotonic()
    progress = progress or NullProgress()

    def complete() -> bool:
        return inspect_snapshot(layout, remote.commit).complete

    def finished(downloaded: int = 0, nbytes: int = 0, reused: int = 0, waited: bool = False) -> WarmResult:
        write_ref(layout, revision, remote.commit)
        return WarmResult(
            layout.repo_id,
            revision,
            remote.commit,
            layout.snapshot_dir(remote.commit),
            downloaded,
            nbytes,
            reused,
            waited,
            time.monotonic() - started,
        )

    if not recheck and complete():
        return finished()

    wait_started: list[float] = []

    def on_wait(holder: LeaseInfo | None) -> None:
        wait_started.append(time.monotonic())
        metrics.lease_waits.inc()
        who = f"{holder.host} pid {holder.pid}" if holder else "another process"
        logger.info("%s: %s is downloading; waiting for it", layout.repo_id, who)

    ensure_dir(layout.meta_dir)
    bucket_lease = _bucket_lease(layout, options)
    with writer_lease(
        layout.lease_path,
        ttl=options.lease_ttl,
        wait=options.lease_wait,
        done=(lambda: False) if recheck else complete,
        on_wait=on_wait,
        lease=bucket_lease,
    ) as outcome:
        if wait_started:
            metrics.lease_wait_seconds.inc(time.monotonic() - wait_started[0])
        if outcome == "done" or (not recheck and complete()):
            return finished(waited=True)

        snapshot_dir = layout.snapshot_dir(remote.commit)
        ensure_dir(snapshot_dir)
        ensure_dir(layout.blobs_dir)
        download_started = time.monotonic()
        todo_bytes = sum(f.size for f in remote.files)
        progress.start(todo_bytes, f"{layout.repo_id}@{remote.commit[:7]}")

        fetcher = _Fetcher(layout, remote, hub, metrics, progress)
        with ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="warm") as pool:
            try:
                results = list(pool.map(fetcher.fetch, remote.files))
            except BaseException:
                pool.shutdown(cancel_futures=True)  # the first failure ends the warm: start no further file
                raise
        entries = [entry for entry, _ in results]
        downloaded = [f for (_, fetched), f in zip(results, remote.files, strict=True) if fetched]

        manifest = new_manifest(layout.repo_id, remote.commit, revision, entries)
        write_manifest(layout, manifest)
        remove_unlisted(layout, manifest)
        metrics.observe("download", time.monotonic() - download_started)
        nbytes = sum(f.size for f in downloaded)
        logger.info(
            "%s@%s: downloaded %d file(s), %d bytes; reused %d",
            layout.repo_id,
            remote.commit[:7],
            len(downloaded),
            nbytes,
            len(entries) - len(downloaded),
        )
        return finished(len(downloaded), nbytes, len(entries) - len(downloaded), outcome != "acquired")


def _bucket_lease(layout: RepoLayout, options: WarmOptions) -> ObjectLease | None:
    """The object lease in the bucket behind the cache root, if one is known. A bucket the operator named must
    open (a typo is a ConfigError); one found in the mount table that cannot be opened here (gcsfs or s3fs not
    installed) falls back to the file lease: correctness never depends on the lease. Store errors later (no
    credentials, EIO) are the lease's own to handle: logged once, never fatal."""
    if not options.lease_bucket:
        return None
    try:
        return object_lease(options.lease_bucket, layout.root, layout.lease_path, options.lease_ttl)
    except ConfigError as exc:  # open_bucket: no gcsfs / s3fs here, or options it refuses
        if not options.lease_bucket_found:
            raise
        logger.warning(
            "%s: the bucket %s (from the mount table) cannot be opened for the download lease: %s Using the file "
            "lease; set GNOSIS_CACHE_BUCKET to choose.",
            layout.repo_id,
            options.lease_bucket,
            exc.message,
        )
        return None


def remove_unlisted(layout: RepoLayout, manifest: Manifest) -> list[str]:
    """Delete files in the snapshot folder that ``manifest`` does not list (temp files aside: their writers may
    be alive; ``prune`` judges them). No writer creates such files, so they are debris (a ``*.incomplete`` of
    another tool, a file copied in by hand); the fast check calls the snapshot incomplete while they are there,
    because the tokenizer, processor and config loaders open files by name in the folder."""
    snapshot_dir = layout.snapshot_dir(manifest.commit)
    removed = list_snapshot(snapshot_dir).unlisted(manifest)
    for rel in removed:
        with contextlib.suppress(FileNotFoundError):
            (snapshot_dir / rel).unlink()
        logger.info("%s@%s: removed unexpected file %s", layout.repo_id, manifest.commit[:7], rel)
    return removed


class _Fetcher:
    """Downloads single files into place, each hashed on the way and checked against the hub's hashes."""

    def __init__(
        self,
        layout: RepoLayout,
        remote: RemoteSnapshot,
        hub: HubClient,
        metrics: CacheMetrics,
        progress: Progress,
    ) -> None:
        self.layout = layout
        self.remote = remote
        self.hub = hub
        self.metrics = metrics
        self.progress = progress

    def fetch(self, rf: RemoteFile) -> tuple[ManifestFile, bool]:
        """The manifest entry for ``rf`` and whether it had to be downloaded."""
        dest = self.layout.file_path(self.remote.commit, rf.path)
        reused = self._reuse(dest, rf)
        if reused is not None:
            self.progress.advance(rf.size)
            return ManifestFile(rf.path, rf.size, reused), False
        ensure_dir(dest.parent)
        sha = self._download(dest, rf)
        self.metrics.files_downloaded.inc()
        return ManifestFile(rf.path, rf.size, sha), True

    def _reuse(self, dest: Path, rf: RemoteFile) -> str | None:
        """sha256 of a file already in place when it is exactly the hub's file, else None."""
        try:
            st = dest.lstat()
        except FileNotFoundError:
            return None
        if not dest.is_file() or dest.is_symlink() or st.st_size != rf.size:
            return None
        sha, blob = _hash_file(dest, rf.size, git_blob=rf.sha256 is None)
        return sha if _matches(rf, sha, blob) else None

    def _download(self, dest: Path, rf: RemoteFile) -> str:
        """Stream ``rf`` into ``dest`` through the one atomic writer (temp file, fsync, rename; the temp file is
        removed on any failure). A failure another attempt may cure (``retryable``) resumes with a range request
        where the bytes stopped; any other error, a bug of ours included, ends the download at once."""
        what = f"{self.remote.repo_id}/{rf.path}"
        with atomic_writer(dest) as fh:
            sha = hashlib.sha256()
            # LFS files are checked by sha256; the git blob sha1 is only needed for small files
            blob = GitBlobHasher(rf.size) if rf.sha256 is None else None
            written = 0
            last_error: HubError | None = None
            for _attempt in self.hub.with_retries(what):
                try:
                    with self.hub.open_stream(self.remote.repo_id, self.remote.commit, rf.path, written) as chunks:
                        for chunk in chunks:
                            fh.write(chunk)
                            sha.update(chunk)
                            if blob is not None:
                                blob.update(chunk)
                            written += len(chunk)
                            self.metrics.bytes_downloaded.inc(len(chunk))
                            self.progress.advance(len(chunk))
                    last_error = None
                    break
                except HubError as exc:
                    if not retryable(exc):
                        raise
                    last_error = exc
            if last_error is not None:
                raise last_error
            if written != rf.size or not _matches(rf, sha.hexdigest(), blob.hexdigest() if blob else None):
                raise CacheCorruptError(
                    f"Downloaded {what} does not match the hub's listing ({written} bytes, expected "
                    f"{rf.size}; hash mismatch or short read). Nothing was kept.",
                    hint="Retry `gnosis-ocr cache warm`; if it repeats, the hub or a proxy is serving "
                    "different bytes than it lists.",
                )
        return sha.hexdigest()


def _hash_file(path: Path, size: int, *, git_blob: bool) -> tuple[str, str | None]:
    sha = hashlib.sha256()
    blob = GitBlobHasher(size) if git_blob else None
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            sha.update(view[:n])
            if blob is not None:
                blob.update(view[:n])
    return sha.hexdigest(), blob.hexdigest() if blob else None


def _matches(rf: RemoteFile, sha256: str, blob_sha1: str | None) -> bool:
    if rf.sha256 is not None:
        return rf.sha256 == sha256
    if rf.blob_id is not None:
        return rf.blob_id == blob_sha1
    return True  # the hub gave no hash: size was checked, the manifest records what we got
