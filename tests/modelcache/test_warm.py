"""warm through a real hub-compatible HTTP server: complete, idempotent, only what is missing, resumable."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pytest

from gnosis_ocr.errors import HubError, ModelNotCachedError, RepoNotFoundError, RevisionNotFoundError
from gnosis_ocr.modelcache import ModelCache
from gnosis_ocr.modelcache.manifest import read_manifest
from tests.conftest import REPO, model_size
from tests.support.hubserver import LocalHub


def _files(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_warm_yields_a_complete_byte_identical_snapshot(cache: ModelCache, hub: LocalHub, tiny_model: Path) -> None:
    result = cache.warm(REPO)
    assert result.downloaded_files == len(_files(tiny_model))
    assert result.downloaded_bytes == model_size(tiny_model)
    assert _files(result.snapshot_dir) == _files(tiny_model)
    report = cache.status(REPO, full=True)
    assert report.complete and report.commit == result.commit
    assert not any(p.is_symlink() for p in result.snapshot_dir.rglob("*"))
    manifest = read_manifest(cache.layout(REPO), result.commit)
    assert manifest is not None and {f.path: f.sha256 for f in manifest.files} == _files(tiny_model)
    assert (cache.layout(REPO).refs_dir / "main").read_text() == result.commit


def test_warm_is_idempotent_with_zero_requests(cache: ModelCache, hub: LocalHub) -> None:
    cache.warm(REPO)
    hub.reset_counters()
    again = cache.warm(REPO)
    assert again.already_complete
    assert hub.request_count == 0


def test_warm_downloads_only_what_is_missing(cache: ModelCache, hub: LocalHub, tiny_model: Path) -> None:
    first = cache.warm(REPO)
    layout = cache.layout(REPO)
    (first.snapshot_dir / "tokenizer.json").unlink()
    hub.reset_counters()
    second = cache.warm(REPO)
    assert second.downloaded_files == 1
    assert second.downloaded_bytes == (tiny_model / "tokenizer.json").stat().st_size
    assert cache.status(REPO, full=True).complete
    assert read_manifest(layout, first.commit) is not None


def test_scan_cache_dir_reads_our_layout_without_warnings(cache: ModelCache, hub: LocalHub) -> None:
    from huggingface_hub import scan_cache_dir

    result = cache.warm(REPO)
    info = scan_cache_dir(cache.root / "hub")
    assert info.warnings == []
    (repo,) = info.repos
    assert repo.repo_id == REPO
    (revision,) = repo.revisions
    assert revision.commit_hash == result.commit
    assert revision.refs == frozenset({"main"})
    assert revision.nb_files == len(list(result.snapshot_dir.rglob("*.*")))


def test_a_dropped_connection_resumes_with_a_range_request(cache: ModelCache, hub: LocalHub) -> None:
    shard = next(name for name in hub.commit_files(REPO) if name.endswith(".safetensors"))
    hub.cut_after(shard, 1000)
    result = cache.warm(REPO)
    assert cache.status(REPO, full=True).complete
    ranged = [r for r in hub.records if r.path.endswith(shard) and r.range]
    assert ranged and ranged[0].range == "bytes=1000-"
    assert result.downloaded_files > 0


def test_server_errors_are_retried(cache: ModelCache, hub: LocalHub) -> None:
    hub.fail_next(2, status=503, path_contains="/resolve/")
    cache.warm(REPO)
    assert cache.status(REPO, full=True).complete


def test_unknown_repo_and_revision(cache: ModelCache, hub: LocalHub) -> None:
    with pytest.raises(RepoNotFoundError, match="has no model"):
        cache.warm("gnosis-test/nope")
    with pytest.raises(RevisionNotFoundError, match="no revision 'v9'"):
        cache.warm(REPO, "v9")


def test_unreachable_hub_is_a_clear_error(cache_root: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    cache = ModelCache(cache_root, endpoint=f"http://127.0.0.1:{port}")
    with pytest.raises(HubError, match="Could not reach the model hub") as info:
        cache.warm(REPO)
    assert "A cache that is already complete needs no network" in str(info.value)


def test_offline_resolve_of_a_missing_model_names_files_and_fix(cache: ModelCache, hub: LocalHub) -> None:
    cache.warm(REPO)
    layout = cache.layout(REPO)
    commit = cache.status(REPO).commit
    assert commit is not None
    (layout.snapshot_dir(commit) / "tokenizer.json").unlink()
    hub.reset_counters()
    with pytest.raises(ModelNotCachedError) as info:
        cache.resolve(REPO, mode="offline")
    message = str(info.value)
    assert "tokenizer.json" in message and "gnosis-ocr cache warm" in message and "GNOSIS_CACHE_MODE=offline" in message
    assert hub.request_count == 0


def test_auto_resolve_warms_a_miss_then_hits(cache: ModelCache, hub: LocalHub) -> None:
    first = cache.resolve(REPO, mode="auto")
    assert not first.hit
    hub.reset_counters()
    second = cache.resolve(REPO, mode="auto")
    assert second.hit and second.commit == first.commit
    assert hub.request_count == 0


def test_refresh_switches_the_branch_to_a_newer_commit(
    cache: ModelCache, hub: LocalHub, tiny_model: Path, tmp_path: Path
) -> None:
    old = cache.resolve(REPO, mode="auto")
    newer = tmp_path / "newer"
    newer.mkdir()
    for p in tiny_model.iterdir():
        (newer / p.name).write_bytes(p.read_bytes())
    (newer / "README.md").write_text("revision two\n")
    new_commit = hub.add_repo(REPO, newer)
    assert cache.resolve(REPO, mode="auto").commit == old.commit  # auto never looks for newer
    refreshed = cache.resolve(REPO, mode="refresh")
    assert refreshed.commit == new_commit != old.commit
    assert (refreshed.path / "README.md").read_text() == "revision two\n"
    assert cache.status(REPO, old.commit).complete  # the old snapshot stays for instances still using it


def test_refresh_with_the_hub_down_serves_the_cached_commit(cache: ModelCache, hub: LocalHub) -> None:
    old = cache.resolve(REPO, mode="auto")
    hub.stop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cache.resolve(REPO, mode="refresh").commit == old.commit


def test_pinned_commit(cache: ModelCache, hub: LocalHub) -> None:
    commit = cache.warm(REPO).commit
    hub.reset_counters()
    resolved = cache.resolve(REPO, commit, mode="offline")
    assert resolved.commit == commit and hub.request_count == 0


def test_repair_refetches_only_bad_files(cache: ModelCache, hub: LocalHub) -> None:
    result = cache.warm(REPO)
    shard = sorted(result.snapshot_dir.glob("*.safetensors"))[0]
    shard.write_bytes(bytes(shard.stat().st_size))  # zeroed, same size
    assert cache.status(REPO).complete and not cache.status(REPO, full=True).complete
    repaired = cache.repair(REPO)
    assert repaired.downloaded_files == 1
    assert cache.status(REPO, full=True).complete


def test_hf_cli_lists_our_cache(cache: ModelCache, hub: LocalHub) -> None:
    import os
    import subprocess
    import sys

    cache.warm(REPO)
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(cache.root / "hub"),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_COLOR": "1",
    }
    hf = Path(sys.executable).with_name("hf")
    run = subprocess.run([str(hf), "cache", "ls"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert REPO in run.stdout and "main" in run.stdout
    assert "warning" not in (run.stdout + run.stderr).lower()
