"""The promise: warm once through the hub, then every start loads model and processor with zero network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.hubserver import LocalHub

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _env(cache_root: Path, endpoint: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "MODEL_CACHE_PATH": str(cache_root),
        "HF_ENDPOINT": endpoint,
        "MODEL_NAME": REPO,
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_warm_then_start_offline_with_zero_requests(hub: LocalHub, cache_root: Path) -> None:
    warm = _run(["-m", "gnosis_ocr", "cache", "warm", "--json"], _env(cache_root, hub.endpoint))
    assert warm.returncode == 0, warm.stderr
    assert json.loads(warm.stdout)["downloaded_files"] > 0
    assert hub.request_count > 0

    # second start, hub still up: not one request reaches it, and our own metric agrees
    hub.reset_counters()
    start = _run(["-m", "tests.support.load_model", "--generate"], _env(cache_root, hub.endpoint))
    assert start.returncode == 0, start.stderr
    report = json.loads(start.stdout.splitlines()[-1])
    assert report["hit"] is True
    assert report["new_tokens"] > 0
    assert report["tokenizer"].startswith("Qwen2Tokenizer")
    assert hub.request_count == 0, hub.requests
    assert report["guard_attempts"] == 0 and report["metric_network_attempts"] == 0

    # hub gone and every socket refused: the load still works, in auto and in offline mode
    endpoint = hub.endpoint
    hub.stop()
    for mode in ("auto", "offline"):
        env = _env(cache_root, endpoint, GNOSIS_CACHE_MODE=mode)
        start = _run(["-m", "tests.support.load_model", "--deny-network", "--generate"], env)
        assert start.returncode == 0, start.stderr
        report = json.loads(start.stdout.splitlines()[-1])
        assert report["denied"] == [], report
        assert report["new_tokens"] > 0


def test_read_only_cache_serves(hub: LocalHub, cache_root: Path) -> None:
    warm = _run(["-m", "gnosis_ocr", "cache", "warm"], _env(cache_root, hub.endpoint))
    assert warm.returncode == 0, warm.stderr
    modes = {p: p.stat().st_mode for p in [cache_root, *cache_root.rglob("*")]}
    try:
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        # root ignores permission bits, so also prove nothing was written: compare every mtime and name
        before = sorted((str(p), p.stat().st_mtime_ns) for p in cache_root.rglob("*"))
        start = _run(
            ["-m", "tests.support.load_model", "--deny-network"],
            _env(cache_root, hub.endpoint, GNOSIS_CACHE_MODE="offline"),
        )
        assert start.returncode == 0, start.stderr
        assert sorted((str(p), p.stat().st_mtime_ns) for p in cache_root.rglob("*")) == before
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
