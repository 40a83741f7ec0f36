"""The cache on real buckets: push to gs:// and s3:// emulators, then serve from a FUSE mount of that bucket
(read-only), and four cold starters on one mount download the model once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gnosis_ocr.errors import PushError
from gnosis_ocr.modelcache import ModelCache
from gnosis_ocr.modelcache.push import push_snapshot
from tests.conftest import REPO, model_size
from tests.support.fuse import RcloneMount, S3fsMount, fuse_available, s3fs_available
from tests.support.hubserver import LocalHub
from tests.support.objectstores import FakeGcs, MotoS3, child_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

needs_fuse = pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))


def _run(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _env(cache_root: Path, endpoint: str, *overlays: dict[str, str | None], **extra: str) -> dict[str, str]:
    return child_env(
        {"MODEL_CACHE_PATH": str(cache_root), "HF_ENDPOINT": endpoint, "MODEL_NAME": REPO, "PYTHONPATH": str(ROOT)},
        *overlays,
        extra,
    )


def _load_offline(cache_root: Path, endpoint: str) -> dict[str, object]:
    run = _run(
        ["-m", "tests.support.load_model", "--deny-network", "--generate"],
        _env(cache_root, endpoint, GNOSIS_CACHE_MODE="offline"),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report: dict[str, object] = json.loads(run.stdout.splitlines()[-1])
    assert report["denied"] == [] and report["hit"] is True
    return report


def test_push_refuses_an_incomplete_snapshot(cache: ModelCache, hub: LocalHub, gcs: FakeGcs) -> None:
    result = cache.warm(REPO)
    (result.snapshot_dir / "tokenizer.json").unlink()
    with pytest.raises(PushError, match="Refusing to push"):
        push_snapshot(cache.layout(REPO), cache.status(REPO), "gs://nowhere/huggingface", filesystem=gcs.fs())


def test_push_refuses_bytes_that_do_not_match_the_manifest(cache: ModelCache, hub: LocalHub, gcs: FakeGcs) -> None:
    result = cache.warm(REPO)
    shard = sorted(result.snapshot_dir.glob("*.safetensors"))[0]
    shard.write_bytes(bytes(shard.stat().st_size))  # same size, so only hashing finds it
    bucket = gcs.new_bucket()
    fs = gcs.fs()
    with pytest.raises(PushError, match="sha256 differs"):
        push_snapshot(cache.layout(REPO), cache.status(REPO), f"gs://{bucket}/huggingface", filesystem=fs)
    assert not [p for p in fs.find(bucket) if "manifests" in p or p.endswith(shard.name)]


def test_push_to_gcs_then_serve_from_a_read_only_mount(
    cache: ModelCache, hub: LocalHub, gcs: FakeGcs, tmp_path: Path
) -> None:
    cache.warm(REPO)
    bucket = gcs.new_bucket()
    push = _run(
        ["-m", "gnosis_ocr", "cache", "push", REPO, f"gs://{bucket}/huggingface", "--json", "-o", "token=anon"],
        _env(cache.root, hub.endpoint, gcs.env()),
    )
    assert push.returncode == 0, push.stderr
    doc = json.loads(push.stdout)
    assert doc["uploaded_bytes"] == cache.status(REPO).expected_size
    listing = gcs.fs().find(bucket)
    assert listing[-1].endswith("refs/main") or any(p.endswith("refs/main") for p in listing)
    # a second push uploads nothing
    again = _run(
        ["-m", "gnosis_ocr", "cache", "push", REPO, f"gs://{bucket}/huggingface", "--json", "-o", "token=anon"],
        _env(cache.root, hub.endpoint, gcs.env()),
    )
    assert json.loads(again.stdout)["uploaded_files"] == 0

    if fuse_available() is not None:
        pytest.skip(str(fuse_available()))
    hub.reset_counters()
    with RcloneMount(gcs, bucket, read_only=True) as mnt:
        mounted_root = mnt.path / "huggingface"
        status = _run(["-m", "gnosis_ocr", "cache", "verify", "--full", "--json"], _env(mounted_root, hub.endpoint))
        assert status.returncode == 0, status.stdout + status.stderr
        report = _load_offline(mounted_root, hub.endpoint)
        assert report["new_tokens"]
        with pytest.raises(OSError):
            (mounted_root / "probe").write_text("x")
        # a write the read-only mount cannot take is a clear error, not a traceback
        repair = _run(["-m", "gnosis_ocr", "cache", "repair"], _env(mounted_root, hub.endpoint))
        assert repair.returncode == 6, repair.stderr
        assert "read-only" in repair.stderr and "Traceback" not in repair.stderr
        hub.reset_counters()
    assert hub.request_count == 0


def test_push_to_s3_then_serve_from_an_s3fs_mount(cache: ModelCache, hub: LocalHub, s3: MotoS3) -> None:
    cache.warm(REPO)
    bucket = s3.new_bucket()
    push = _run(
        ["-m", "gnosis_ocr", "cache", "push", REPO, f"s3://{bucket}/huggingface", "--json"],
        _env(cache.root, hub.endpoint, s3.env()),
    )
    assert push.returncode == 0, push.stderr
    assert any(p.endswith(".gnosis/manifests/" + cache.status(REPO).commit + ".json") for p in s3.fs().find(bucket))
    if s3fs_available() is not None:
        pytest.skip(str(s3fs_available()))
    with S3fsMount(s3, bucket, read_only=True) as mnt:
        _load_offline(mnt.path / "huggingface", hub.endpoint)


@needs_fuse
def test_four_cold_starters_on_one_mount_download_once(hub: LocalHub, gcs: FakeGcs, tiny_model: Path) -> None:
    bucket = gcs.new_bucket()
    size = model_size(tiny_model)
    hub.throttle_bytes_per_s = size / 3  # long enough that all four are up while the first downloads
    with RcloneMount(gcs, bucket) as mnt:
        cache_root = mnt.path / "huggingface"
        env = _env(cache_root, hub.endpoint, GNOSIS_CACHE_LEASE_TTL="10")
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "gnosis_ocr", "cache", "warm", "--json"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err
            results.append(json.loads(out))
        hub.throttle_bytes_per_s = None
        assert hub.bytes_sent <= 1.05 * size, (hub.bytes_sent, size)
        assert sum(1 for r in results if r["downloaded_files"]) == 1, json.dumps(results, indent=1)
        assert len({r["commit"] for r in results}) == 1
        snapshots = list((cache_root / "hub" / ("models--" + REPO.replace("/", "--")) / "snapshots").iterdir())
        assert len(snapshots) == 1
        hub.reset_counters()
        for _ in range(4):
            _load_offline(cache_root, hub.endpoint)
        assert hub.request_count == 0
    # what the mount wrote is in the bucket: no temp objects, one manifest
    objects = gcs.fs().find(bucket)
    assert not [o for o in objects if ".gnosis-tmp-" in o], objects
    assert len([o for o in objects if "/manifests/" in o]) == 1
