"""`gnosis-ocr ocr --engine vlm` over a cache with one bad or missing small file: the cause first, the fix next,
the cache fault's exit code, and no transformers traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gnosis_ocr.modelcache import ModelCache
from tests.conftest import REPO
from tests.documents import make
from tests.support.hubserver import LocalHub

ROOT = Path(__file__).resolve().parents[2]
EXIT_NOT_CACHED, EXIT_CORRUPT = 3, 5


@pytest.fixture
def snapshot(cache: ModelCache) -> Path:
    return cache.warm(REPO).snapshot_dir


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    path = tmp_path / "scan.png"
    path.write_bytes(make.image_bytes(make.marked_image((140, 100)), "PNG"))
    return path


def _ocr(scan: Path, cache: ModelCache, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MODEL_CACHE_PATH": str(cache.root),
        "HF_ENDPOINT": cache.endpoint,
        "GNOSIS_DEVICE": "cpu",
        "GNOSIS_VLM_MAX_NEW_TOKENS": "2",
        "COLUMNS": "300",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "gnosis_ocr", "ocr", str(scan), "--engine", "vlm", "--model", REPO],
        env=full,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _same_size_edit(path: Path, old: bytes, new: bytes) -> None:
    assert len(old) == len(new)
    raw = path.read_bytes()
    assert old in raw
    path.write_bytes(raw.replace(old, new, 1))


def test_a_same_size_change_to_config_json_is_refused_at_load(snapshot: Path, scan: Path, cache: ModelCache) -> None:
    _same_size_edit(snapshot / "config.json", b'"rope_theta": 1000000.0', b'"rope_theta": 9000000.0')
    run = _ocr(scan, cache)
    assert run.returncode == EXIT_CORRUPT, run.stderr
    assert "config.json does not match its sha256 in the ready-manifest" in run.stderr
    assert "gnosis-ocr cache repair" in run.stderr and "Traceback" not in run.stderr


def test_one_changed_letter_in_tokenizer_json_is_refused_without_a_traceback(
    snapshot: Path, scan: Path, cache: ModelCache
) -> None:
    _same_size_edit(snapshot / "tokenizer.json", b'"type": "BPE"', b'"type": "BPF"')
    run = _ocr(scan, cache, GNOSIS_CACHE_MODE="offline")
    assert run.returncode == EXIT_CORRUPT, run.stderr
    assert "tokenizer.json does not match its sha256" in run.stderr and "gnosis-ocr cache repair" in run.stderr
    assert "Traceback" not in run.stderr and "transformers" not in run.stderr


@pytest.mark.parametrize("mode", ["auto", "offline", "refresh"])
def test_a_missing_file_is_named_first_in_every_mode_when_the_hub_is_down(
    snapshot: Path, scan: Path, cache: ModelCache, hub: LocalHub, mode: str
) -> None:
    (snapshot / "tokenizer.json").unlink()
    hub.stop()
    run = _ocr(scan, cache, GNOSIS_CACHE_MODE=mode)
    assert run.returncode == EXIT_NOT_CACHED, run.stderr
    error = next(line for line in run.stderr.splitlines() if line.startswith("error:"))
    assert f"Model '{REPO}' (rev main" in error and "tokenizer.json is missing" in error, run.stderr
    assert error.index("tokenizer.json is missing") < error.find("hub") or "hub" not in error
    if mode != "offline":
        assert "fetching it from the hub failed" in error and "Could not reach the model hub" in error
        assert "gnosis-ocr cache repair" in run.stderr
    assert "needs no network" not in run.stderr and "Traceback" not in run.stderr
