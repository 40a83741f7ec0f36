"""The bucket behind the cache root, read from the mount table where that is unambiguous (GNOSIS_CACHE_BUCKET unset):
real /proc/self/mountinfo lines, and one real rclone mount of an emulated bucket.

The rclone lines below were read from /proc/self/mountinfo on this machine with rclone 1.60 mounts of a
fake-gcs-server bucket (a named remote and an on-the-fly ``:gcs:`` remote). gcsfuse is not packaged here: its
lines follow what gcsfuse registers with the kernel (fstype ``fuse.gcsfuse``, the bucket name as the source)."""

from __future__ import annotations

import logging
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gnosis_ocr.errors import ConfigError
from gnosis_ocr.modelcache import ModelCache, WarmOptions
from gnosis_ocr.modelcache.mounts import bucket_behind, cache_bucket, parse_mountinfo
from tests.conftest import REPO
from tests.support.fuse import _child_env, _stop_process, _unmount, fuse_available
from tests.support.hubserver import LocalHub
from tests.support.objectstores import FakeGcs

RCLONE_NAMED = "45 27 0:40 / /tmp/gnosis-rclone-ia56vdk9/mnt rw,nosuid,nodev,relatime - fuse.rclone store:models-b/pre/fix rw,user_id=0,group_id=0"  # noqa: E501
RCLONE_INLINE = "45 27 0:40 / /tmp/tmpjngx1r8w rw,nosuid,nodev,relatime - fuse.rclone :gcs{nAzfv}:models-b/pre rw,user_id=0,group_id=0"  # noqa: E501
GCSFUSE = (
    "61 40 0:52 / /cache rw,nosuid,nodev,relatime shared:30 - fuse.gcsfuse my-models rw,user_id=1000,group_id=1000"
)
GCSFUSE_ALL = "61 40 0:52 / /cache rw,relatime - fuse.gcsfuse gcsfuse rw,user_id=0,group_id=0"
S3FS = "70 40 0:60 / /cache rw,nosuid,nodev,relatime - fuse.s3fs s3fs rw,user_id=0,group_id=0"
ROOT_FS = "26 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw"
BIND_OF_SUBFOLDER = "62 40 0:52 /team/a /models rw,relatime - fuse.gcsfuse my-models rw,user_id=0,group_id=0"
SPACED = r"63 40 0:53 / /mnt/my\040cache rw,relatime - fuse.gcsfuse my-models rw,user_id=0,group_id=0"


def _table(*lines: str) -> str:
    return "\n".join([ROOT_FS, *lines]) + "\n"


def test_mountinfo_lines_parse_into_root_mountpoint_type_and_source() -> None:
    [root, named, spaced] = parse_mountinfo(_table(RCLONE_NAMED, SPACED) + "garbage line\n")
    assert (root.mountpoint, root.fstype, root.source) == ("/", "ext4", "/dev/sda1")
    assert (named.root, named.mountpoint, named.fstype, named.source) == (
        "/",
        "/tmp/gnosis-rclone-ia56vdk9/mnt",
        "fuse.rclone",
        "store:models-b/pre/fix",
    )
    assert spaced.mountpoint == "/mnt/my cache"


@pytest.mark.parametrize(
    ("line", "path", "url"),
    [
        (GCSFUSE, "/cache/huggingface", "gs://my-models/huggingface"),
        (GCSFUSE, "/cache", "gs://my-models"),
        (BIND_OF_SUBFOLDER, "/models/huggingface", "gs://my-models/team/a/huggingface"),
        (SPACED, "/mnt/my cache/hf", "gs://my-models/hf"),
        (RCLONE_INLINE, "/tmp/tmpjngx1r8w/huggingface", "gs://models-b/pre/huggingface"),
        (RCLONE_INLINE.replace(":gcs{nAzfv}:", ":s3:"), "/tmp/tmpjngx1r8w/hf", "s3://models-b/pre/hf"),
    ],
)
def test_an_unambiguous_mount_names_the_bucket_and_the_folder_in_it(line: str, path: str, url: str) -> None:
    assert bucket_behind(Path(path), _table(line)).url == url


@pytest.mark.parametrize(
    ("line", "path", "why"),
    [
        (RCLONE_NAMED, "/tmp/gnosis-rclone-ia56vdk9/mnt/hf", "only rclone's config says which store"),
        (GCSFUSE_ALL, "/cache/hf", "names no single bucket"),
        (S3FS, "/cache/hf", "does not say which bucket"),
        (GCSFUSE, "/home/user/.cache/hf", "not on a FUSE mount"),
    ],
)
def test_an_ambiguous_mount_names_no_bucket_and_says_why(line: str, path: str, why: str) -> None:
    found = bucket_behind(Path(path), _table(line))
    assert found.url is None and why in found.why


def test_the_setting_always_wins_and_a_derived_bucket_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(_table(GCSFUSE))
    caplog.set_level(logging.DEBUG, logger="gnosis_ocr.modelcache.mounts")
    assert cache_bucket("gs://chosen/by-me", Path("/cache/huggingface"), table) == "gs://chosen/by-me"
    assert caplog.records == []  # the mount table was not even read
    assert cache_bucket(None, Path("/cache/huggingface"), table) == "gs://my-models/huggingface"
    [info] = [r for r in caplog.records if r.levelno == logging.INFO]
    assert (
        "gs://my-models/huggingface" in info.getMessage() and "gcsfuse mount of bucket my-models" in info.getMessage()
    )
    caplog.clear()
    table.write_text(_table(RCLONE_NAMED))
    assert cache_bucket(None, Path("/tmp/gnosis-rclone-ia56vdk9/mnt/hf"), table) is None
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert cache_bucket(None, Path("/cache"), tmp_path / "no-such-file") is None


@pytest.fixture
def inline_rclone_mount() -> Iterator[Path]:
    """A real rclone mount of ``gs://models-b/pre`` on fake-gcs-server through an on-the-fly ``:gcs:`` remote."""
    problem = fuse_available()
    if problem:
        pytest.skip(problem)
    with FakeGcs() as gcs:
        gcs.create_bucket("models-b")
        remote = gcs.rclone_remote()
        mountpoint = Path(tempfile.mkdtemp(prefix="gnosis-inline-"))
        argv = ["rclone", "mount", ":gcs:models-b/pre", str(mountpoint), "--gcs-anonymous"]
        argv += ["--gcs-endpoint", remote["endpoint"], "--gcs-project-number", remote["project_number"]]
        argv += ["--gcs-bucket-policy-only", "--config", "/dev/null"]
        proc = subprocess.Popen(argv, env=_child_env({"HOME": str(mountpoint.parent)}), stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 20
            while str(mountpoint) not in Path("/proc/self/mountinfo").read_text():
                assert proc.poll() is None and time.monotonic() < deadline, "rclone did not mount"
                time.sleep(0.1)
            yield mountpoint
        finally:
            _unmount(mountpoint, 10)
            _stop_process(proc, 10)
            mountpoint.rmdir()


def test_a_real_rclone_mount_of_a_bucket_names_it(inline_rclone_mount: Path) -> None:
    root = inline_rclone_mount / "huggingface"
    assert cache_bucket(None, root) == "gs://models-b/pre/huggingface"


def _no_gcsfs(protocol: str, **options: object) -> object:
    raise ImportError("Install gcsfs to access Google Storage")  # what fsspec says without it


def test_a_found_bucket_that_cannot_be_opened_falls_back_to_the_file_lease(
    cache: ModelCache, hub: LocalHub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import fsspec

    monkeypatch.setattr(fsspec, "filesystem", _no_gcsfs)  # the lowest seam: fsspec cannot load the store client
    cache.warm_options = WarmOptions(workers=2, lease_ttl=5, lease_bucket="gs://my-models/hf", lease_bucket_found=True)
    caplog.set_level(logging.WARNING, logger="gnosis_ocr.modelcache.warm")
    assert cache.warm(REPO).downloaded_files > 0
    assert cache.status(REPO).complete
    [warning] = [r.getMessage() for r in caplog.records]
    assert "gs://my-models/hf (from the mount table) cannot be opened" in warning and "file lease" in warning


def test_a_named_bucket_that_cannot_be_opened_is_an_error(
    cache: ModelCache, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fsspec

    monkeypatch.setattr(fsspec, "filesystem", _no_gcsfs)
    cache.warm_options = WarmOptions(workers=2, lease_ttl=5, lease_bucket="gs://my-models/hf")
    with pytest.raises(ConfigError, match="GNOSIS_CACHE_BUCKET='gs://my-models/hf' cannot be opened"):
        cache.warm(REPO)
