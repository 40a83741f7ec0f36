"""The cache commands as a shell user meets them: output, --json, exit codes, messages with a next step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.support.hubserver import LocalHub

ROOT = Path(__file__).resolve().parents[2]


def cli(
    *args: str, cache_root: Path, endpoint: str = "http://127.0.0.1:9", **env: str
) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "MODEL_CACHE_PATH": str(cache_root),
        "HF_ENDPOINT": endpoint,
        "MODEL_NAME": REPO,
        "COLUMNS": "200",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "gnosis_ocr", *args], env=full_env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_help_explains(tmp_path: Path) -> None:
    top = cli("--help", cache_root=tmp_path)
    assert top.returncode == 0 and "zero network" in top.stdout
    cache = cli("cache", "--help", cache_root=tmp_path)
    for command in ("status", "warm", "verify", "repair", "prune", "push"):
        assert command in cache.stdout


def test_status_of_an_absent_model(tmp_path: Path) -> None:
    result = cli("cache", "status", "--json", cache_root=tmp_path)
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["state"] == "absent" and doc["model"] == REPO and doc["policy"] == "auto"
    human = cli("cache", "status", cache_root=tmp_path)
    assert "absent" in human.stdout and "gnosis-ocr cache warm" in human.stdout


def test_warm_status_verify_cycle(hub: LocalHub, cache_root: Path) -> None:
    warm = cli("cache", "warm", cache_root=cache_root, endpoint=hub.endpoint)
    assert warm.returncode == 0, warm.stderr
    assert "is complete: downloaded" in warm.stdout
    again = cli("cache", "warm", cache_root=cache_root, endpoint=hub.endpoint)
    assert "already complete; nothing downloaded" in again.stdout

    status = json.loads(cli("cache", "status", "--json", cache_root=cache_root).stdout)
    assert status["state"] == "complete" and status["faults"] == []
    assert status["size_bytes"] == status["expected_bytes"] > 0

    shard = sorted(Path(status["path"]).glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(data)
    assert cli("cache", "verify", cache_root=cache_root).returncode == 0  # sizes still match
    full = cli("cache", "verify", "--full", "--json", cache_root=cache_root)
    assert full.returncode == 1
    assert [f["kind"] for f in json.loads(full.stdout)["faults"]] == ["hash"]

    repair = cli("cache", "repair", cache_root=cache_root, endpoint=hub.endpoint)
    assert repair.returncode == 0, repair.stderr
    assert "fetched 1 file(s)" in repair.stdout
    assert cli("cache", "verify", "--full", cache_root=cache_root).returncode == 0


def test_offline_errors_name_the_fix(tmp_path: Path) -> None:
    result = cli("cache", "warm", cache_root=tmp_path)  # nothing listens on port 9
    assert result.returncode == 4
    assert "Could not reach the model hub" in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_model_id_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("cache", "status", "../../etc", cache_root=tmp_path)
    assert result.returncode == 2
    assert "not a valid repository id" in result.stderr


def test_prune_plans_then_deletes(hub: LocalHub, cache_root: Path) -> None:
    assert cli("cache", "warm", cache_root=cache_root, endpoint=hub.endpoint).returncode == 0
    status = json.loads(cli("cache", "status", "--json", cache_root=cache_root).stdout)
    stray = Path(status["path"]) / "config.json.gnosis-tmp-otherhost-1-abcd"
    stray.write_bytes(b"half")
    os.utime(stray, (0, 0))
    verify = cli("cache", "verify", "--json", cache_root=cache_root)
    assert verify.returncode == 0  # temp files are not part of the snapshot: listed, never a fault
    assert json.loads(verify.stdout)["leftovers"] == [f"snapshots/{status['commit']}/{stray.name}"]

    plan = cli("cache", "prune", "--json", cache_root=cache_root)
    items = json.loads(plan.stdout)["items"]
    assert [i["kind"] for i in items] == ["temp"] and stray.exists()
    done = cli("cache", "prune", "--yes", cache_root=cache_root)
    assert done.returncode == 0 and "Deleted 1 item(s)" in done.stdout
    assert not stray.exists()
    assert cli("cache", "verify", "--full", cache_root=cache_root).returncode == 0
