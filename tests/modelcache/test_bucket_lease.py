"""Many instances, each with its OWN FUSE mount of one bucket (as on Cloud Run), warming at once: the download lease
is taken through the bucket's conditional writes (GNOSIS_CACHE_BUCKET), so the hub serves the model once; and a
writer killed while the others wait is taken over once its lease expires.

Without GNOSIS_CACHE_BUCKET the same setup served 4.00x the model for four mounts (the file lease's exclusive
create succeeds on every mount).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, model_size
from tests.support.fuse import RcloneMount, fuse_available
from tests.support.hubserver import LocalHub
from tests.support.objectstores import FakeGcs, child_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.fuse,
    pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available())),
]


def _env(mnt: RcloneMount, bucket: str, hub: LocalHub, gcs: FakeGcs, ttl: float) -> dict[str, str]:
    return child_env(
        gcs.env(),
        {
            "MODEL_CACHE_PATH": str(mnt.path / "huggingface"),
            "HF_ENDPOINT": hub.endpoint,
            "MODEL_NAME": REPO,
            "PYTHONPATH": str(ROOT),
            "GNOSIS_CACHE_BUCKET": f"gs://{bucket}/huggingface",
            "GNOSIS_CACHE_LEASE_TTL": str(ttl),
            "GNOSIS_CACHE_LEASE_WAIT": "120",
            "NO_GCE_CHECK": "true",  # gcsfs: no metadata-server probe; the emulator takes anonymous requests
        },
    )


def _warm(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gnosis_ocr", "cache", "warm", "--json"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _load(env: dict[str, str]) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "tests.support.load_model", "--deny-network"],
        env={**env, "GNOSIS_CACHE_MODE": "offline"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.splitlines()[-1])
    assert report["denied"] == [] and report["hit"] is True


@contextlib.contextmanager
def _mounts(gcs: FakeGcs, bucket: str, n: int):  # type: ignore[no-untyped-def]
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(RcloneMount(gcs, bucket)) for _ in range(n)]


@pytest.mark.parametrize("instances", [4, 8])
def test_instances_on_separate_mounts_download_once(
    instances: int, hub: LocalHub, gcs: FakeGcs, tiny_model: Path
) -> None:
    bucket = gcs.new_bucket("many")
    size = model_size(tiny_model)
    hub.throttle_bytes_per_s = size / 3  # all instances are up while the first downloads
    with _mounts(gcs, bucket, instances) as mounts:
        envs = [_env(m, bucket, hub, gcs, ttl=6) for m in mounts]
        procs = [_warm(env) for env in envs]
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err[-3000:]
            assert "Traceback" not in err
            results.append(json.loads(out))
        hub.throttle_bytes_per_s = None
        ratio = hub.bytes_sent / size
        print(f"\n{instances} instances on separate mounts: hub served {hub.bytes_sent} B = {ratio:.2f}x the model")
        assert hub.bytes_sent <= 1.05 * size, (ratio, json.dumps(results, indent=1))
        assert sum(1 for r in results if r["downloaded_files"]) == 1
        hub.reset_counters()
        for env in envs:
            _load(env)
        assert hub.request_count == 0


def test_a_killed_writer_is_taken_over_while_the_others_wait(hub: LocalHub, gcs: FakeGcs, tiny_model: Path) -> None:
    bucket = gcs.new_bucket("kill")
    size = model_size(tiny_model)
    hub.throttle_bytes_per_s = size / 4
    with _mounts(gcs, bucket, 3) as mounts:
        envs = [_env(m, bucket, hub, gcs, ttl=3) for m in mounts]
        first = _warm(envs[0])
        deadline = time.monotonic() + 30
        while hub.bytes_sent < size / 4:  # the first is the writer and is downloading
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.stderr else ""
            time.sleep(0.05)
        waiters = [_warm(env) for env in envs[1:]]
        time.sleep(1.0)  # they found the live lease and wait
        os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=10)
        killed_at = hub.bytes_sent
        results = []
        for proc in waiters:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err[-3000:]
            assert "Traceback" not in err
            results.append(json.loads(out))
        hub.throttle_bytes_per_s = None
        after = hub.bytes_sent - killed_at
        print(f"\nkilled writer: {killed_at} B before the kill, {after} B after = {after / size:.2f}x the model")
        assert sum(1 for r in results if r["downloaded_files"]) == 1, json.dumps(results, indent=1)
        assert after <= 1.05 * size
        for env in envs:
            _load(env)
