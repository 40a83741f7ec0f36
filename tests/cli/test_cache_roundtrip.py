"""A check's verdict names its own repair: for every state `cache status` (or `verify --full`) can report, make the
state, read the command the report names, run exactly that command, and see the cache complete and tidy again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gnosis_ocr.modelcache import ModelCache
from gnosis_ocr.modelcache.status import host_tag
from tests.cli.test_cache_cli import ROOT, cli
from tests.conftest import REPO
from tests.support.hubserver import LocalHub

Breaker = Callable[[Path, Path], None]  # (snapshot folder, repository folder)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _missing(snap: Path, repo: Path) -> None:
    (snap / "tokenizer.json").unlink()


def _truncated(snap: Path, repo: Path) -> None:
    shard = sorted(snap.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:100])


def _flipped(snap: Path, repo: Path) -> None:
    shard = sorted(snap.glob("*.safetensors"))[-1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(data)


def _symlink(snap: Path, repo: Path) -> None:
    target = snap / "config.json"
    moved = repo.parent / "config.json.elsewhere"
    shutil.copyfile(target, moved)
    target.unlink()
    target.symlink_to(moved)


def _stray(snap: Path, repo: Path) -> None:
    (snap / "model-00001-of-00002.safetensors.incomplete").write_bytes(b"half a shard")


def _bad_manifest(snap: Path, repo: Path) -> None:
    next((repo / ".gnosis" / "manifests").glob("*.json")).write_text("{not json")


def _no_manifest(snap: Path, repo: Path) -> None:
    next((repo / ".gnosis" / "manifests").glob("*.json")).unlink()


def _dead_writer_temp(snap: Path, repo: Path) -> None:
    (snap / f"tokenizer.json.gnosis-tmp-{host_tag()}-{_dead_pid()}-abcd").write_bytes(b"partial")


def _old_temp_elsewhere(snap: Path, repo: Path) -> None:
    tmp = repo / ".gnosis" / "manifests" / f"{snap.name}.json.gnosis-tmp-otherhost-7-abcd"
    tmp.write_bytes(b"{")
    os.utime(tmp, (time.time() - 120, time.time() - 120))  # older than the lease TTL (60 s)


def _stale_lease(snap: Path, repo: Path) -> None:
    doc = {"owner": "x", "host": "otherhost", "pid": 7, "acquired_at": 0, "expires_at": 1}
    (repo / ".gnosis" / "lease.json").write_text(json.dumps(doc))


STATES: dict[str, tuple[Breaker, str, list[str]]] = {
    # name: (make the state, the command the report must name, what the report's --json shows)
    "missing file": (_missing, "repair", ["missing"]),
    "size mismatch": (_truncated, "repair", ["size"]),
    "hash mismatch (full verify)": (_flipped, "repair", ["hash"]),
    "symlink instead of a file": (_symlink, "repair", ["not_regular"]),
    "unexpected file": (_stray, "repair", ["unexpected"]),
    "untrusted manifest": (_bad_manifest, "repair", ["manifest"]),
    "no ready-manifest": (_no_manifest, "repair", ["manifest"]),
    "temp file of a dead writer on this host": (_dead_writer_temp, "prune", ["leftover"]),
    "old temp file of a writer elsewhere": (_old_temp_elsewhere, "prune", ["leftover"]),
    "stale lease": (_stale_lease, "prune", ["lease"]),
}


def _report(cache_root: Path, *, full: bool) -> dict[str, object]:
    args = ("cache", "verify", "--full", "--json") if full else ("cache", "status", "--json")
    doc: dict[str, object] = json.loads(cli(*args, cache_root=cache_root).stdout)
    return doc


def _shows(doc: dict[str, object]) -> list[str]:
    kinds = sorted({str(f["kind"]) for f in doc["faults"]})  # type: ignore[attr-defined]
    if doc["leftovers"]:
        kinds.append("leftover")
    if doc["stale_lease"]:
        kinds.append("lease")
    return kinds


@pytest.mark.parametrize("state", list(STATES))
def test_the_named_command_repairs_the_reported_state(
    state: str, hub: LocalHub, cache: ModelCache, cache_root: Path
) -> None:
    breaker, command, shows = STATES[state]
    result = cache.warm(REPO)
    breaker(result.snapshot_dir, result.snapshot_dir.parent.parent)
    full = state.endswith("(full verify)")

    before = _report(cache_root, full=full)
    assert _shows(before) == shows, before
    fix = before["fix"]
    assert isinstance(fix, str) and fix.split()[:3] == ["gnosis-ocr", "cache", command], before
    human = (
        cli("cache", "verify", "--full", cache_root=cache_root)
        if full
        else cli("cache", "status", cache_root=cache_root)
    )
    assert f"run `{fix}`" in human.stdout

    done = cli(*fix.split()[1:], cache_root=cache_root, endpoint=hub.endpoint)
    assert done.returncode == 0, done.stdout + done.stderr

    after = _report(cache_root, full=True)
    assert after["state"] == "complete" and after["fix"] is None, after
    assert after["faults"] == [] and after["leftovers"] == [] and after["stale_lease"] is None
    assert cli("cache", "status", cache_root=cache_root).returncode == 0


def test_absent_names_warm(hub: LocalHub, cache_root: Path) -> None:
    before = _report(cache_root, full=False)
    assert before["state"] == "absent" and before["fix"] == f"gnosis-ocr cache warm {REPO}"
    assert cli(*str(before["fix"]).split()[1:], cache_root=cache_root, endpoint=hub.endpoint).returncode == 0
    assert _report(cache_root, full=True)["state"] == "complete"


def test_an_unexpected_file_is_pruned_without_the_hub_and_warm_agrees_with_status(
    hub: LocalHub, cache: ModelCache, cache_root: Path
) -> None:
    result = cache.warm(REPO)
    _stray(result.snapshot_dir, result.snapshot_dir.parent.parent)
    status = cli("cache", "status", cache_root=cache_root)
    assert status.returncode == 1
    assert "model-00001-of-00002.safetensors.incomplete: unexpected file" in status.stdout
    assert "prune --yes" in status.stdout
    plan = json.loads(cli("cache", "prune", "--json", cache_root=cache_root).stdout)["items"]
    assert [(i["kind"], Path(i["path"]).name) for i in plan] == [
        ("unexpected", "model-00001-of-00002.safetensors.incomplete")
    ]
    assert cli("cache", "prune", "--yes", cache_root=cache_root).returncode == 0  # no hub: endpoint is port 9
    assert cli("cache", "status", cache_root=cache_root).returncode == 0

    # warm (which the engine's auto mode runs) leaves the snapshot as status wants it, so resolve succeeds
    _stray(result.snapshot_dir, result.snapshot_dir.parent.parent)
    assert cli("cache", "warm", cache_root=cache_root, endpoint=hub.endpoint).returncode == 0
    assert cli("cache", "status", cache_root=cache_root).returncode == 0
    _stray(result.snapshot_dir, result.snapshot_dir.parent.parent)
    assert cache.resolve(REPO).path == result.snapshot_dir


def test_a_young_temp_file_of_a_writer_elsewhere_is_kept(hub: LocalHub, cache: ModelCache, cache_root: Path) -> None:
    result = cache.warm(REPO)
    young = result.snapshot_dir / "tokenizer.json.gnosis-tmp-otherhost-7-abcd"
    young.write_bytes(b"being written")
    assert cli("cache", "prune", "--yes", cache_root=cache_root).returncode == 0
    assert young.exists()
    assert cli("cache", "prune", "--yes", "--grace", "0", cache_root=cache_root).returncode == 0
    assert not young.exists()


def test_after_a_kill_leftovers_show_at_once_verify_passes_after_rewarm_and_prune_clears_them(
    hub: LocalHub, tiny_model: Path, cache_root: Path
) -> None:
    shard = max(tiny_model.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    size = shard.stat().st_size
    hub.throttle_bytes_per_s = max(size / 3, 20_000)
    env = {**os.environ, "MODEL_CACHE_PATH": str(cache_root), "HF_ENDPOINT": hub.endpoint, "MODEL_NAME": REPO}
    env["GNOSIS_CACHE_DOWNLOAD_WORKERS"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gnosis_ocr", "cache", "warm", REPO],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while hub.bytes_sent < size // 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert hub.bytes_sent >= size // 2, "the download never got going"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    hub.throttle_bytes_per_s = None

    right_after = _report(cache_root, full=False)
    assert right_after["state"] != "complete"
    assert any(f"-{proc.pid}-" in str(p) for p in right_after["leftovers"]), right_after  # type: ignore[attr-defined]

    assert cli("cache", "warm", cache_root=cache_root, endpoint=hub.endpoint).returncode == 0
    verify = cli("cache", "verify", "--full", "--json", cache_root=cache_root)
    assert verify.returncode == 0, verify.stdout  # the dead writer's temp files are not part of the snapshot
    doc = json.loads(verify.stdout)
    assert doc["leftovers"] and doc["fix"] == "gnosis-ocr cache prune --yes"
    assert cli("cache", "prune", "--yes", cache_root=cache_root).returncode == 0  # dead on this host: at once
    assert _report(cache_root, full=True)["leftovers"] == []
