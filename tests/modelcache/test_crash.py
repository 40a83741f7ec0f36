"""kill -9 of a warming process, at every kind of point, never leaves a snapshot that status calls complete
(unless it really is), and the next warm completes it."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gnosis_ocr.modelcache import ModelCache
from gnosis_ocr.modelcache.prune import execute_prune, plan_prune
from tests.conftest import REPO
from tests.support.hubserver import LocalHub

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _env(cache_root: Path, hub: LocalHub) -> dict[str, str]:
    return {
        **os.environ,
        "MODEL_CACHE_PATH": str(cache_root),
        "HF_ENDPOINT": hub.endpoint,
        "GNOSIS_CACHE_DOWNLOAD_WORKERS": "1",
        "GNOSIS_CACHE_LEASE_TTL": "5",
        "PYTHONPATH": str(ROOT),
    }


def _warm_cmd(cache_root: Path, at: int, trace: Path | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "tests.support.killpoint", "--under", str(cache_root), "--at", str(at)]
    if trace is not None:
        cmd += ["--trace", str(trace)]
    return [*cmd, "--", "cache", "warm", REPO]


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def _check_recovery(cache: ModelCache, hub: LocalHub, tiny_model: Path, cache_root: Path) -> None:
    done = subprocess.run(
        _warm_cmd(cache_root, 0), env=_env(cache_root, hub), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = cache.status(REPO, full=True)
    assert report.complete, report.summary()
    assert report.snapshot_dir is not None
    execute_prune(plan_prune(cache_root))  # the killed writer's temp files: its pid is dead on this host
    assert not cache.status(REPO).leftovers
    assert _digests(report.snapshot_dir) == _digests(tiny_model)


def test_kill_at_a_dozen_points_of_a_warm(hub: LocalHub, tiny_model: Path, tmp_path: Path) -> None:
    trace = tmp_path / "trace.txt"
    first = tmp_path / "traced" / "huggingface"
    run = subprocess.run(
        _warm_cmd(first, 0, trace), env=_env(first, hub), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    events = trace.read_text().splitlines()
    manifest_at = next(int(e.split()[0]) for e in events if "os.rename" in e and "manifests" in e)
    total = len(events)
    assert total >= 12, events
    points = sorted({round(1 + i * (total - 1) / 11) for i in range(12)} | {manifest_at, manifest_at - 1})

    for at in points:
        cache_root = tmp_path / f"kill{at}" / "huggingface"
        killed = subprocess.run(
            _warm_cmd(cache_root, at), env=_env(cache_root, hub), cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert killed.returncode == -signal.SIGKILL, (at, events[at - 1], killed.stderr)
        cache = ModelCache(cache_root, endpoint=hub.endpoint)
        fast = cache.status(REPO)
        if at <= manifest_at:
            assert not fast.complete, (at, events[at - 1])
        elif fast.complete:
            assert cache.status(REPO, full=True).complete, (at, events[at - 1])
        _check_recovery(cache, hub, tiny_model, cache_root)


def test_kill_in_the_middle_of_a_shard(hub: LocalHub, tiny_model: Path, cache_root: Path) -> None:
    shard = max(tiny_model.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    size = shard.stat().st_size
    hub.throttle_bytes_per_s = max(size / 3, 20_000)
    cmd = [sys.executable, "-m", "gnosis_ocr", "cache", "warm", REPO]
    proc = subprocess.Popen(
        cmd, env=_env(cache_root, hub), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while hub.bytes_sent < size // 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert hub.bytes_sent >= size // 2, "the download never got going"
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    cache = ModelCache(cache_root, endpoint=hub.endpoint)
    report = cache.status(REPO)
    assert not report.complete
    hub.throttle_bytes_per_s = None
    _check_recovery(cache, hub, tiny_model, cache_root)
