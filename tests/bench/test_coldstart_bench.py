"""The cold-start benchmark's smoke run on the tiny model: every row of the table measured, in fresh processes,
and what it built removed. The 7.5 GB run is the benchmark's own (bench/coldstart_bench.py), never the suite's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench.coldstart_bench import LOAD_METHODS, RAW, START_METHODS, read_methods

from tests.support.fuse import fuse_available

ROOT = Path(__file__).resolve().parents[2]


def _smoke(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / "coldstart.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "bench.coldstart_bench", "--smoke", "--work", str(tmp_path / "work")]
    proc = subprocess.run(
        [*argv, "--json", str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.slow
def test_local_smoke_measures_every_row_and_removes_what_it_built(tmp_path: Path) -> None:
    doc, stdout = _smoke(tmp_path, "--where", "local")
    rows = {(r["section"], r["name"]): r for r in doc["rows"]}
    for method in read_methods():
        row = rows[("read, local disk", method)]
        assert row["median"] > 0 and row["unit"] == "GB/s", row
        assert (row["ratio"] is None) == (method == RAW)
        assert rows[("peak RSS, local disk", method)]["median"] > 0
    for method in LOAD_METHODS:
        assert rows[("load, local disk", method)]["median"] > 0
        assert rows[("load, local disk", method)]["note"] == "float32"  # the tiny checkpoint's own dtype
    for method in START_METHODS:
        assert rows[("start, local disk", method)]["median"] > 0, method
    raw = rows[("start, local disk", "raw read (s)")]["median"]
    assert rows[("start, local disk", "raw read + 5 s (goal)")]["median"] == pytest.approx(raw + 5)
    assert rows[("peak RSS, local disk", "weights (model size)")]["median"] > 0
    assert doc["facts"]["page cache drop"].startswith(("works", "NO"))
    assert "1-min load avg" in " ".join(doc["facts"])
    assert "gnosis-ocr serve to /readyz" in stdout
    assert not any((tmp_path / "work" / "cache" / "hub").glob("models--*"))  # removed without --keep


@pytest.mark.slow
def test_mount_smoke_reads_through_rclone(tmp_path: Path) -> None:
    if problem := fuse_available():
        pytest.skip(problem)
    doc, _ = _smoke(tmp_path, "--where", "mount", "--only", "read")
    assert "mount" not in doc["facts"], doc["facts"].get("mount")  # not skipped
    rows = {(r["section"], r["name"]): r for r in doc["rows"]}
    for method in read_methods():
        assert rows[("read, rclone mount of fake-gcs", method)]["median"] > 0, method
    assert not (tmp_path / "work" / "gcs-data").exists()
