"""The object-store emulators: buckets, fsspec round trips, isolation from real cloud configuration."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import fsspec

from tests.support.objectstores import FakeGcs, MotoS3, child_env, patched_env


def test_gcs_bucket_and_round_trip(gcs: FakeGcs) -> None:
    bucket = gcs.new_bucket()
    fs = gcs.fs()
    started = time.monotonic()
    fs.pipe(f"{bucket}/hub/a.bin", b"abc")
    with fs.open(f"{bucket}/hub/a.bin", "rb") as handle:
        assert handle.read() == b"abc"
    # Guards the GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT pitfall: with it on, each open waits 60 s.
    assert time.monotonic() - started < 5
    assert fs.ls(f"{bucket}/hub", detail=False) == [f"{bucket}/hub/a.bin"]
    assert fs.info(f"{bucket}/hub/a.bin")["size"] == 3


def test_gcs_through_fsspec_registry(gcs: FakeGcs) -> None:
    import gcsfs.core

    bucket = gcs.new_bucket()
    with fsspec.open(f"gs://{bucket}/x.txt", "wb", **gcs.storage_options()) as handle:
        handle.write(b"via fsspec.open")
    fs = fsspec.filesystem("gs", **gcs.storage_options())
    assert type(fs) is gcsfs.core.GCSFileSystem
    assert fs.cat(f"{bucket}/x.txt") == b"via fsspec.open"


def test_gcs_env_serves_a_child_process(gcs: FakeGcs) -> None:
    bucket = gcs.new_bucket()
    gcs.fs().pipe(f"{bucket}/k", b"child")
    code = f"import gcsfs; print(gcsfs.GCSFileSystem(token='anon').cat('{bucket}/k').decode())"
    result = subprocess.run(
        [sys.executable, "-c", code], env=child_env(gcs.env()), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "child"


def test_s3_bucket_and_round_trip(s3: MotoS3) -> None:
    bucket = s3.new_bucket()
    fs = s3.fs()
    fs.pipe(f"{bucket}/hub/a.bin", b"abc")
    assert fs.cat(f"{bucket}/hub/a.bin") == b"abc"
    assert fs.ls(f"{bucket}/hub", detail=False) == [f"{bucket}/hub/a.bin"]
    with fsspec.open(f"s3://{bucket}/y.txt", "wb", **s3.storage_options()) as handle:
        handle.write(b"via fsspec.open")
    assert fsspec.filesystem("s3", **s3.storage_options()).cat(f"{bucket}/y.txt") == b"via fsspec.open"


def test_s3_ignores_real_aws_configuration(s3: MotoS3, tmp_path: os.PathLike[str]) -> None:
    hostile = {
        "AWS_PROFILE": "no-such-profile",
        "AWS_CONFIG_FILE": os.fspath(tmp_path) + "/missing",
        "AWS_CA_BUNDLE": os.fspath(tmp_path) + "/missing.pem",
        "AWS_ACCESS_KEY_ID": "REAL-LOOKING",
        "AWS_ENDPOINT_URL": "http://192.0.2.1:9",
    }
    bucket = s3.new_bucket()
    with patched_env(hostile):
        s3.fs().pipe(f"{bucket}/k", b"isolated")
        with patched_env(s3.env()):
            opts = s3.storage_options()
            assert fsspec.filesystem("s3", skip_instance_cache=True, **opts).cat(f"{bucket}/k") == b"isolated"
    assert os.environ.get("AWS_PROFILE") != "no-such-profile"


def test_s3_large_object_etag_is_its_md5(s3: MotoS3) -> None:
    """Sanity for objects over moto's 16 MB hashing chunk (the ETag race itself is exercised through
    rclone in test_fuse.test_large_file_survives_concurrent_polling)."""
    bucket = s3.new_bucket()
    data = os.urandom(20 << 20)
    fs = s3.fs()
    fs.pipe(f"{bucket}/big", data)
    assert fs.info(f"{bucket}/big")["ETag"].strip('"') == hashlib.md5(data).hexdigest()  # noqa: S324


def test_servers_stop_cleanly() -> None:
    for server in (FakeGcs(), MotoS3()):
        assert server.running
        server.stop()
        assert not server.running
        server.stop()  # idempotent
