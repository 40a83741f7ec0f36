"""Fast and full checks against hand-made snapshots: each way a cache can lie is caught."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from gnosis_ocr.errors import ConfigError
from gnosis_ocr.modelcache.layout import repo_layout, safe_relpath
from gnosis_ocr.modelcache.manifest import ManifestFile, new_manifest, write_manifest
from gnosis_ocr.modelcache.status import inspect_snapshot
from gnosis_ocr.modelcache.warm import write_ref

REPO = "org/tiny"
COMMIT = "a" * 40
FILES = {
    "config.json": b'{"model_type": "x"}',
    "tokenizer.json": b'{"version": "1.0"}' * 10,
    "model-00001-of-00002.safetensors": os.urandom(4096),
    "model-00002-of-00002.safetensors": os.urandom(2048),
    "sub/dir/extra.txt": b"hello",
}


def make_snapshot(root: Path, files: dict[str, bytes] = FILES, *, manifest: bool = True, ref: bool = True):
    layout = repo_layout(root, REPO)
    snap = layout.snapshot_dir(COMMIT)
    for rel, data in files.items():
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).write_bytes(data)
    if manifest:
        entries = [ManifestFile(p, len(d), hashlib.sha256(d).hexdigest()) for p, d in files.items()]
        write_manifest(layout, new_manifest(REPO, COMMIT, "main", entries))
    if ref:
        write_ref(layout, "main", COMMIT)
    return layout


def test_complete_snapshot_is_complete_fast_and_full(tmp_path: Path) -> None:
    layout = make_snapshot(tmp_path)
    fast = inspect_snapshot(layout, "main")
    full = inspect_snapshot(layout, "main", full=True)
    assert fast.state == full.state == "complete"
    assert fast.commit == COMMIT
    assert fast.size_on_disk == sum(len(d) for d in FILES.values()) == fast.expected_size
    assert full.check == "full"


def test_absent(tmp_path: Path) -> None:
    report = inspect_snapshot(repo_layout(tmp_path, REPO), "main")
    assert report.state == "absent"
    assert "not in the cache" in report.summary()


def test_folder_and_ref_without_manifest_is_incomplete(tmp_path: Path) -> None:
    layout = make_snapshot(tmp_path, manifest=False)
    report = inspect_snapshot(layout, "main")
    assert report.state == "incomplete"
    assert report.faults[0].kind == "manifest"


def test_snapshot_folder_without_ref_or_manifest_is_incomplete(tmp_path: Path) -> None:
    layout = make_snapshot(tmp_path, manifest=False, ref=False)
    assert inspect_snapshot(layout, "main").state == "incomplete"


def test_missing_ref_falls_back_to_manifest_for_that_branch(tmp_path: Path) -> None:
    layout = make_snapshot(tmp_path, ref=False)
    report = inspect_snapshot(layout, "main")
    assert report.state == "complete"
    assert report.commit == COMMIT


def test_truncated_file_is_found_by_the_fast_check(tmp_path: Path) -> None:
    layout = make_snapshot(tmp_path)
    shard = layout.file_path(COMMIT, "model-00001-of-00002.safetensors")
    shard.write_bytes(shard.read_bytes()[:1000])
    report = inspect_snapshot(layout, "main")
    assert report.state == "incomplete"
    assert [(f.path, f.kind) for f in report.faults] == [("model-00001-of-00002.safetensors", "size")]
    assert "1000 bytes, expected 4096" in str(report.faults[0])


def test_zeroed_same_size_shard_passes_fast_and_fails_full(tmp_path: Path) -> None:
    layout = make_snapshot(tmp_path)
    shard = layout.file_path(COMMIT, "model-00002-of-00002.safetensors")
    shard.write_bytes(bytes(2048))
    assert inspect_snapshot(layout, "main").state == "complete"
    full = inspect_snapshot(layout, "main", full=True)
    assert full.state == "incomplete"
    assert [(f.path, f.kind) for f in full.faults] == [("model-00002-of-00002.safetensors", "hash")]


def test_missing_tokenizer_is_found(tmp_path: Path) -> None:
    layout = make_snapshot(tmp_path)
    layout.file_path(COMMIT, "tokenizer.json").unlink()
    report = inspect_snapshot(layout, "main")
    assert [(f.path, f.kind) for f in report.faults] == [("tokenizer.json", "missing")]


def test_missing_manifest_after_complete_download(tmp_path: Path) -> None:
    layout = make_snapshot(tmp_path)
    layout.manifest_path(COMMIT).unlink()
    assert inspect_snapshot(layout, "main").state == "incomplete"


def test_garbage_manifest_is_not_trusted(tmp_path: Path) -> None:
    layout = make_snapshot(tmp_path)
    layout.manifest_path(COMMIT).write_bytes(b'{"format": "gnosis-ocr/manifest/v1", "files": [')
    report = inspect_snapshot(layout, "main")
    assert report.state == "incomplete"
    assert "cannot be trusted" in report.faults[0].detail


def test_manifest_of_another_commit_is_not_trusted(tmp_path: Path) -> None:
    layout = make_snapshot(tmp_path)
    other = "b" * 40
    layout.manifest_path(other).write_bytes(layout.manifest_path(COMMIT).read_bytes())
    assert inspect_snapshot(layout, other).state == "incomplete"


def test_stray_temp_files_are_reported_but_not_loaded_as_data(tmp_path: Path) -> None:
    layout = make_snapshot(tmp_path)
    stray = layout.snapshot_dir(COMMIT) / "model-00001-of-00002.safetensors.gnosis-tmp-host-123-abcd"
    stray.write_bytes(b"partial")
    report = inspect_snapshot(layout, "main")
    assert report.state == "complete"
    assert report.leftovers == (f"snapshots/{COMMIT}/model-00001-of-00002.safetensors.gnosis-tmp-host-123-abcd",)
    assert report.fix == "gnosis-ocr cache prune --yes"


def test_leftovers_outside_the_snapshot_folder_are_listed_before_any_commit_is_on_record(tmp_path: Path) -> None:
    layout = repo_layout(tmp_path, REPO)
    layout.manifests_dir.mkdir(parents=True)
    tmp = layout.manifests_dir / f"{COMMIT}.json.gnosis-tmp-host-123-abcd"
    tmp.write_bytes(b"{")
    report = inspect_snapshot(layout, "main")
    assert report.state == "absent" and report.leftovers == (f".gnosis/manifests/{tmp.name}",)


def test_unexpected_file_and_symlink_are_faults(tmp_path: Path) -> None:
    layout = make_snapshot(tmp_path)
    snap = layout.snapshot_dir(COMMIT)
    (snap / "pytorch_model.bin").write_bytes(b"pickle")
    target = snap / "config.json"
    moved = tmp_path / "config.json"
    target.rename(moved)
    target.symlink_to(moved)
    kinds = {(f.path, f.kind) for f in inspect_snapshot(layout, "main").faults}
    assert kinds == {("pytorch_model.bin", "unexpected"), ("config.json", "not_regular")}


def test_pinned_commit_needs_no_ref(tmp_path: Path) -> None:
    layout = make_snapshot(tmp_path, ref=False)
    assert inspect_snapshot(layout, COMMIT).state == "complete"


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../b", "", "a\\b", "x.gnosis-tmp-1"])
def test_paths_that_leave_the_snapshot_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        safe_relpath(bad)


@pytest.mark.parametrize("bad", ["../etc", "a/b/c", "org/--x", "", "org/na me"])
def test_bad_repo_ids_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="not a valid repository id"):
        repo_layout(tmp_path, bad)


def test_status_writes_nothing(tmp_path: Path) -> None:
    layout = make_snapshot(tmp_path)
    before = sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    inspect_snapshot(layout, "main", full=True)
    inspect_snapshot(repo_layout(tmp_path, "other/model"), "main")
    assert sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


def test_an_unknown_branch_beside_a_complete_snapshot_is_absent(tmp_path: Path) -> None:
    layout = make_snapshot(tmp_path)
    assert inspect_snapshot(layout, "v2").state == "absent"
