"""LocalHub against the real huggingface_hub client (in subprocesses: it reads HF_ENDPOINT at import)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.hubserver import LocalHub, git_blob_sha1
from tests.support.tinymodel import tiny_model_dir

REPO = "org/tiny-vlm"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.getbasetemp() / "tinymodel")


@pytest.fixture
def hub(tiny: Path) -> Iterator[LocalHub]:
    with LocalHub() as hub:
        hub.add_repo(REPO, tiny)
        yield hub


def run_hf(hub: LocalHub, home: Path, code: str, *, telemetry: bool = False) -> Any:
    """Run `code` with huggingface_hub pointed at `hub`; it must set `result`, which comes back as JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(home / "home"),
        HF_HUB_CACHE=str(home / "cache"),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"  # noqa: S105 (a flag: never send a token found on this machine)
    if not telemetry:
        env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    script = "import json\nresult = None\n" + textwrap.dedent(code) + "\nprint('@@' + json.dumps(result))\n"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, cwd=home)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@")]
    return json.loads(line[2:])


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_snapshot_download_round_trip(hub: LocalHub, tiny: Path, tmp_path: Path) -> None:
    result = run_hf(
        hub,
        tmp_path,
        """
        from huggingface_hub import snapshot_download, scan_cache_dir
        first = snapshot_download("org/tiny-vlm")
        import os
        second = snapshot_download("org/tiny-vlm")
        info = scan_cache_dir()
        (repo,) = info.repos
        (rev,) = repo.revisions
        result = {
            "path": first, "same": first == second,
            "warnings": [str(w) for w in info.warnings],
            "refs": sorted(rev.refs), "commit": rev.commit_hash, "nb_files": repo.nb_files,
            "blobs": sorted(os.listdir(os.path.join(str(repo.repo_path), "blobs"))),
        }
        """,
    )
    sha = hub.commit_files(REPO)  # what the hub thinks it serves
    assert _files(Path(result["path"])) == _files(tiny)
    assert result["same"]
    assert result["warnings"] == []
    assert result["refs"] == ["main"]
    assert result["nb_files"] == len(sha)
    # LFS blobs are named by sha256, small files by git blob sha1.
    assert result["blobs"] == sorted(f.sha256 if f.lfs else git_blob_sha1(_files(tiny)[n]) for n, f in sha.items())
    assert {n for n, f in sha.items() if f.lfs} == {
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    }

    commit = result["commit"]
    expected = [
        ("GET", f"/api/models/{REPO}/revision/main"),
        ("GET", f"/api/models/{REPO}/tree/{commit}"),
    ]
    per_file = sorted(
        (m, p) for m in ("HEAD", "GET") for p in (f"/{REPO}/resolve/{commit}/{name}" for name in _files(tiny))
    )
    seen = hub.requests
    assert seen[:2] == expected
    # The second snapshot_download only re-resolves `main`: the tree listing and files come from the cache.
    assert seen[-1] == ("GET", f"/api/models/{REPO}/revision/main")
    assert sorted(seen[2:-1]) == per_file
    assert hub.request_count == len(seen) == 2 + len(per_file) + 1
    assert hub.bytes_sent == sum(len(b) for b in _files(tiny).values())
    assert hub.unhandled == []


def test_model_info_tree_paths_info_and_refs(hub: LocalHub, tiny: Path, tmp_path: Path) -> None:
    hub.tree_page_size = 4  # 9 files: the tree listing takes 3 pages, linked with `Link: <...>; rel="next"`
    result = run_hf(
        hub,
        tmp_path,
        """
        from huggingface_hub import HfApi
        api = HfApi()
        info = api.model_info("org/tiny-vlm", revision="main", files_metadata=True)
        plain = api.model_info("org/tiny-vlm")
        tree = list(api.list_repo_tree("org/tiny-vlm", recursive=True, expand=True))
        paths = api.get_paths_info("org/tiny-vlm", ["config.json", "missing.txt"])
        refs = api.list_repo_refs("org/tiny-vlm")
        result = {
            "sha": info.sha, "plain_sha": plain.sha, "plain_size": plain.siblings[0].size,
            "siblings": {s.rfilename: [s.size, s.blob_id, s.lfs and s.lfs.sha256] for s in info.siblings},
            "tree": {f.path: [f.size, f.blob_id, f.lfs and f.lfs["sha256"], f.last_commit["oid"]] for f in tree},
            "paths": [p.path for p in paths],
            "branches": [[b.name, b.target_commit] for b in refs.branches],
        }
        """,
    )
    files = _files(tiny)
    sha = result["sha"]
    assert result["plain_sha"] == sha
    assert result["plain_size"] is None  # sizes only with files_metadata=True
    assert set(result["siblings"]) == set(files)
    for name, (size, blob_id, lfs_sha256) in result["siblings"].items():
        assert size == len(files[name])
        if name.endswith(".safetensors"):
            assert lfs_sha256 == hashlib.sha256(files[name]).hexdigest()
        else:
            assert lfs_sha256 is None
            assert blob_id == git_blob_sha1(files[name])
    assert {n: v[:3] for n, v in result["tree"].items()} == result["siblings"]
    assert {v[3] for v in result["tree"].values()} == {sha}
    assert result["paths"] == ["config.json"]
    assert result["branches"] == [["main", sha]]
    assert ("GET", f"/api/models/{REPO}/revision/main") in hub.requests
    pages = [r.query for r in hub.records if r.path == f"/api/models/{REPO}/tree/main"]
    assert pages == [
        "recursive=true&expand=true",
        "recursive=true&expand=true&cursor=4",
        "recursive=true&expand=true&cursor=8",
    ]


def test_errors_map_to_typed_exceptions(hub: LocalHub, tmp_path: Path) -> None:
    result = run_hf(
        hub,
        tmp_path,
        """
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
        cases = {
            "missing_file": lambda: hf_hub_download("org/tiny-vlm", "nope.json"),
            "missing_repo": lambda: hf_hub_download("org/nope", "config.json"),
            "missing_revision": lambda: hf_hub_download("org/tiny-vlm", "config.json", revision="v9"),
            "info_missing_repo": lambda: HfApi().model_info("org/nope"),
            "info_missing_revision": lambda: HfApi().model_info("org/tiny-vlm", revision="v9"),
        }
        kinds = (EntryNotFoundError, RevisionNotFoundError, RepositoryNotFoundError)
        result = {}
        for name, call in cases.items():
            try:
                call()
                result[name] = None
            except kinds as exc:
                result[name] = [k.__name__ for k in kinds if isinstance(exc, k)][0]
        """,
    )
    assert result == {
        "missing_file": "EntryNotFoundError",
        "missing_repo": "RepositoryNotFoundError",
        "missing_revision": "RevisionNotFoundError",
        "info_missing_repo": "RepositoryNotFoundError",
        "info_missing_revision": "RevisionNotFoundError",
    }
    # huggingface_hub remembers the missing file under .no_exist/<commit>/ thanks to X-Repo-Commit on the 404.
    assert list((tmp_path / "cache").glob("models--org--tiny-vlm/.no_exist/*/nope.json"))


def test_newer_commit_on_main(hub: LocalHub, tiny: Path, tmp_path: Path) -> None:
    old_sha = hub.add_repo(REPO, tiny)  # same content, same sha
    changed = tmp_path / "v2"
    changed.mkdir()
    for name, data in _files(tiny).items():
        (changed / name).write_bytes(data)
    (changed / "README.md").write_text("second commit\n")
    new_sha = hub.add_repo(REPO, changed)
    assert new_sha != old_sha
    assert hub.add_repo(REPO, changed) == new_sha
    result = run_hf(
        hub,
        tmp_path,
        f"""
        from huggingface_hub import snapshot_download, hf_hub_download
        new = snapshot_download("org/tiny-vlm", allow_patterns=["README.md", "config.json"])
        old = hf_hub_download("org/tiny-vlm", "config.json", revision="{old_sha}")
        result = [new, old]
        """,
    )
    new, old = result
    assert new.endswith(new_sha)
    assert (Path(new) / "README.md").read_text() == "second commit\n"
    assert f"/snapshots/{old_sha}/" in old
    hub.set_ref(REPO, "main", old_sha)
    assert hub.commit_files(REPO).keys() == _files(tiny).keys()


def test_injected_500_and_cut_connection_are_retried(hub: LocalHub, tiny: Path, tmp_path: Path) -> None:
    shard = "model-00002-of-00002.safetensors"
    hub.fail_next(1, 500, path_contains="config.json")
    hub.cut_after(shard, 1000)
    result = run_hf(
        hub,
        tmp_path,
        f"""
        from huggingface_hub import constants, hf_hub_download
        # http_get only resumes from what it has consumed, in DOWNLOAD_CHUNK_SIZE (10 MiB) steps: a cut inside the
        # first chunk restarts from 0. Smaller chunks make this small file exercise the Range resume path.
        constants.DOWNLOAD_CHUNK_SIZE = 500
        result = [hf_hub_download("org/tiny-vlm", "config.json"), hf_hub_download("org/tiny-vlm", "{shard}")]
        """,
    )
    assert Path(result[0]).read_bytes() == (tiny / "config.json").read_bytes()
    assert Path(result[1]).read_bytes() == (tiny / shard).read_bytes()
    seen = [
        (r.method, r.status, r.range, r.body_bytes, r.complete) for r in hub.records if r.path != "/api/agent-harnesses"
    ]
    size = (tiny / shard).stat().st_size
    assert seen == [
        ("HEAD", 500, None, 0, True),  # first HEAD fails, huggingface_hub retries it with backoff
        ("HEAD", 200, None, 0, True),
        ("GET", 200, None, (tiny / "config.json").stat().st_size, True),
        ("HEAD", 200, None, 0, True),
        ("GET", 200, None, 1000, False),  # cut after 1000 bytes
        ("GET", 206, "bytes=1000-", size - 1000, True),  # resumed
    ]
    assert hub.bytes_sent == (tiny / "config.json").stat().st_size + size


def test_range_head_and_counters_over_raw_http(hub: LocalHub, tiny: Path) -> None:
    data = (tiny / "tokenizer.json").read_bytes()
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)

    def call(method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()

    url = f"/{REPO}/resolve/main/tokenizer.json"
    status, headers, body = call("GET", url, {"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Range"]) == (206, data[10:20], f"bytes 10-19/{len(data)}")
    status, _, body = call("GET", url, {"Range": "bytes=-5"})
    assert (status, body) == (206, data[-5:])
    status, headers, _ = call("GET", url, {"Range": f"bytes={len(data)}-"})
    assert (status, headers["Content-Range"]) == (416, f"bytes */{len(data)}")
    status, headers, body = call("HEAD", url)
    assert (status, body, int(headers["Content-Length"])) == (200, b"", len(data))
    assert headers["ETag"] == f'"{git_blob_sha1(data)}"'
    assert headers["Accept-Ranges"] == "bytes"
    assert "X-Linked-Etag" not in headers

    shard = (tiny / "model-00001-of-00002.safetensors").read_bytes()
    status, headers, _ = call("HEAD", f"/{REPO}/resolve/main/model-00001-of-00002.safetensors")
    assert headers["X-Linked-Etag"] == headers["ETag"] == f'"{hashlib.sha256(shard).hexdigest()}"'
    assert int(headers["X-Linked-Size"]) == len(shard)
    assert headers["X-Repo-Commit"] == hub.add_repo(REPO, tiny)

    status, headers, _ = call("GET", "/api/agent-harnesses")
    assert status == 404
    status, headers, _ = call("GET", f"/{REPO}/resolve/main/nope.bin")
    assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound")
    assert headers["X-Repo-Commit"]

    assert hub.request_count == 7
    assert hub.bytes_sent == 10 + 5
    assert hub.unhandled == [("GET", "/api/agent-harnesses")]
    status, _, body = call("GET", "/__stats")
    stats = json.loads(body)
    assert stats["request_count"] == 7
    assert stats["bytes_sent"] == 15
    assert hub.request_count == 7  # /__stats is not counted
    hub.reset_counters()
    assert (hub.request_count, hub.bytes_sent, hub.requests, hub.unhandled) == (0, 0, [], [])
    conn.close()


def test_throttle_slows_downloads(hub: LocalHub, tiny: Path) -> None:
    hub.throttle_bytes_per_s = 200_000
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
    start = time.monotonic()
    conn.request("GET", f"/{REPO}/resolve/main/tokenizer.json")
    body = conn.getresponse().read()
    elapsed = time.monotonic() - start
    conn.close()
    assert body == (tiny / "tokenizer.json").read_bytes()
    assert elapsed >= 0.8 * len(body) / 200_000


def test_agent_harnesses_is_requested_once_per_process_unless_telemetry_is_off(hub: LocalHub, tmp_path: Path) -> None:
    code = """
    from huggingface_hub import hf_hub_download
    hf_hub_download("org/tiny-vlm", "config.json")
    hf_hub_download("org/tiny-vlm", "config.json", local_files_only=True)
    """
    run_hf(hub, tmp_path, code, telemetry=True)
    assert hub.requests.count(("GET", "/api/agent-harnesses")) == 1
    hub.reset_counters()
    run_hf(hub, tmp_path, code, telemetry=False)
    assert ("GET", "/api/agent-harnesses") not in hub.requests


def test_stop_closes_the_port(tiny: Path) -> None:
    hub = LocalHub().start()
    hub.add_repo(REPO, tiny)
    port = hub.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", f"/api/models/{REPO}")
    assert conn.getresponse().status == 200  # leaves a keep-alive connection open
    hub.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    hub.stop()  # idempotent


def test_runs_as_its_own_process(tiny: Path, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.hubserver",
            "--repo",
            f"{REPO}={tiny}",
            "--repo",
            f"org/other@v1={tiny}",
            "--port",
            "0",
            "--ready-file",
            str(ready),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "hub process did not become ready"
            time.sleep(0.05)
        endpoint = ready.read_text().strip()
        host, port = endpoint.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("HEAD", "/org/other/resolve/v1/config.json")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        conn.request("GET", "/__stats")
        assert json.loads(conn.getresponse().read())["request_count"] == 1
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == endpoint
    assert json.loads(lines[-1])["requests"] == [["HEAD", "/org/other/resolve/v1/config.json"]]
