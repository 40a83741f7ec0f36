"""Real FUSE mounts of the emulated buckets: what a model cache on a bucket mount can rely on."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.fuse import RcloneMount, S3fsMount, fuse_available, s3fs_available
from tests.support.objectstores import FakeGcs, MotoS3

pytestmark = pytest.mark.fuse

_REASON = fuse_available()
if _REASON:
    pytest.skip(_REASON, allow_module_level=True)


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_write_through_mount_reaches_the_store(kind: str, request: pytest.FixtureRequest) -> None:
    store: MotoS3 | FakeGcs = request.getfixturevalue(kind)
    bucket = store.new_bucket()
    fs = store.fs()
    with RcloneMount(store, bucket, write_back="0s") as mnt:  # no renames here, so 0s is safe
        target = mnt.path / "hub" / "models--org--m" / "blobs" / "abc"
        target.parent.mkdir(parents=True)
        target.write_bytes(b"weights")
        os.utime(target.parent)  # harmless on a directory
        assert target.read_bytes() == b"weights"
        mnt.flush()
        assert fs.cat(f"{bucket}/hub/models--org--m/blobs/abc") == b"weights"
        # And the other way: an object put through the API shows in the mount.
        fs.pipe(f"{bucket}/hub/from-api", b"api")
        mnt.refresh()
        assert (mnt.path / "hub" / "from-api").read_bytes() == b"api"


def test_unmount_uploads_what_is_pending(s3: MotoS3) -> None:
    bucket = s3.new_bucket()
    mnt = RcloneMount(s3, bucket)  # 2 s write-back: still queued when unmount() starts
    (mnt.path / "late").write_bytes(b"late")
    mnt.unmount()
    assert not mnt.mounted
    assert s3.fs().cat(f"{bucket}/late") == b"late"


def test_read_only_mount_refuses_writes(s3: MotoS3) -> None:
    bucket = s3.new_bucket()
    s3.fs().pipe(f"{bucket}/present", b"p")
    with RcloneMount(s3, bucket, read_only=True) as mnt:
        assert (mnt.path / "present").read_bytes() == b"p"
        with pytest.raises(OSError) as caught:
            (mnt.path / "new").write_bytes(b"x")
        assert caught.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
        with pytest.raises(OSError):
            (mnt.path / "present").unlink()


def _race(path: str, barrier: Any, results: Any) -> None:
    barrier.wait(timeout=10)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        results.put("exists")
    except OSError as exc:
        results.put(f"error {exc.errno}")
    else:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        results.put("won")


def test_o_excl_create_has_one_winner_on_one_mount_and_no_symlinks(s3: MotoS3) -> None:
    """Four processes on the same mount race O_CREAT|O_EXCL: the kernel lets exactly one win.
    (Across two mounts of one bucket this does NOT hold: both win.)"""
    ctx = multiprocessing.get_context("fork")
    with RcloneMount(s3, s3.new_bucket(), write_back="0s") as mnt:
        (mnt.path / "real").write_bytes(b"r")
        with pytest.raises(OSError):  # rclone 1.60: EIO; write real files, never links
            os.symlink("real", mnt.path / "link")
        for round_ in range(3):
            barrier, results = ctx.Barrier(4), ctx.Queue()
            target = str(mnt.path / f"lease-{round_}")
            procs = [ctx.Process(target=_race, args=(target, barrier, results)) for _ in range(4)]
            for proc in procs:
                proc.start()
            for proc in procs:
                proc.join(timeout=20)
            outcomes = sorted(results.get(timeout=5) for _ in procs)
            assert outcomes == ["exists", "exists", "exists", "won"]


def test_write_then_rename_pattern_leaves_only_final_names(gcs: FakeGcs) -> None:
    """Temporary name, close, os.replace at once: every final name reaches the store, no temp does.
    (With --vfs-write-back 0s rclone 1.60 loses most of these; the default here is 2s.)"""
    bucket = gcs.new_bucket()
    fs = gcs.fs()
    with RcloneMount(gcs, bucket) as mnt:
        (mnt.path / "f0").write_bytes(b"old")
        for i in range(8):
            tmp = mnt.path / f".f{i}.tmp.{os.getpid()}"
            with tmp.open("wb") as handle:
                handle.write(bytes([i]) * (1000 + i))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, mnt.path / f"f{i}")
        assert sorted(p.name for p in mnt.path.iterdir()) == [f"f{i}" for i in range(8)]
        mnt.flush()
        names = sorted(Path(p).name for p in fs.ls(bucket, detail=False))
        assert names == [f"f{i}" for i in range(8)]
        assert fs.cat(f"{bucket}/f0") == bytes([0]) * 1000


def test_large_file_survives_concurrent_polling(s3: MotoS3) -> None:
    bucket = s3.new_bucket()
    fs = s3.fs()
    data = os.urandom(24 << 20)
    with RcloneMount(s3, bucket, write_back="0s") as mnt:
        (mnt.path / "shard.safetensors").write_bytes(data)
        assert _eventually(lambda: fs.info(f"{bucket}/shard.safetensors")["size"] == len(data), 20)
        mnt.flush()
        expected = hashlib.sha256(data).hexdigest()
        assert hashlib.sha256(fs.cat(f"{bucket}/shard.safetensors")).hexdigest() == expected
        assert hashlib.sha256((mnt.path / "shard.safetensors").read_bytes()).hexdigest() == expected


@pytest.mark.skipif(s3fs_available() is not None, reason=str(s3fs_available()))
def test_s3fs_mount_round_trip(s3: MotoS3) -> None:
    bucket = s3.new_bucket()
    fs = s3.fs()
    with S3fsMount(s3, bucket) as mnt:
        (mnt.path / "d").mkdir()
        (mnt.path / "d" / "x").write_bytes(b"s3fs")
        os.replace(mnt.path / "d" / "x", mnt.path / "d" / "y")
        assert fs.cat(f"{bucket}/d/y") == b"s3fs"  # s3fs uploads on close
        assert not fs.exists(f"{bucket}/d/x")
    with S3fsMount(s3, bucket, read_only=True) as mnt, pytest.raises(OSError):
        (mnt.path / "z").write_bytes(b"z")
