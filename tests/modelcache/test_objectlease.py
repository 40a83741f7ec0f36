"""The download lease as a bucket object (gs:// on fake-gcs-server, s3:// on moto), and lease errors that must
not stop a warm.

Every "instance" is its own ObjectLease with its own filesystem client, as separate Cloud Run instances would be.
What the emulators do (checked here): fake-gcs-server honours ``ifGenerationMatch`` on multipart uploads and on
DELETE; moto honours ``If-None-Match: *`` / ``If-Match`` on PutObject and ``If-Match`` on DeleteObject one request
at a time (not atomically under concurrency, see tests/jobs/test_store_conditional.py), so the concurrent race is
proven on gs:// only.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from typer.testing import CliRunner

from gnosis_ocr.cli.main import app
from gnosis_ocr.modelcache.lease import Lease, writer_lease
from gnosis_ocr.modelcache.objectlease import ObjectLease, lease_object_path, split_bucket_url
from tests.conftest import REPO
from tests.support.hubserver import LocalHub
from tests.support.objectstores import FakeGcs, MotoS3, patched_env

Instances = Callable[[int, float], list[ObjectLease]]


@pytest.fixture(params=["gs", "s3"])
def leases(request: pytest.FixtureRequest) -> Instances:
    """``leases(n, ttl)``: n leases on one object of a fresh bucket, each with its own client."""
    emulator: FakeGcs | MotoS3 = request.getfixturevalue("gcs" if request.param == "gs" else "s3")
    url = f"{request.param}://{emulator.new_bucket('lease')}/huggingface"
    kind, rest = split_bucket_url(url)
    path = f"{rest}/hub/models--o--m/.gnosis/lease.json"
    return lambda n, ttl: [ObjectLease(emulator.fs(), kind, path, ttl, settle=ttl / 2) for _ in range(n)]


def test_the_lease_object_is_the_file_the_mount_shows() -> None:
    root = Path("/cache/huggingface")
    lease = root / "hub/models--o--m/.gnosis/lease.json"
    assert lease_object_path("gs://b/huggingface/", root, lease) == "b/huggingface/hub/models--o--m/.gnosis/lease.json"
    assert split_bucket_url("s3://b") == ("s3", "b")


def test_one_holder_at_a_time_and_release_frees_it(leases: Instances) -> None:
    a, b = leases(2, 30)
    assert a.try_acquire()
    assert not b.try_acquire()
    held = b.read()
    assert held is not None and held.owner == a.owner
    a.release()
    assert b.read() is None
    assert b.try_acquire()
    b.release()


def test_an_expired_lease_is_taken_over_and_its_old_holder_learns_it(leases: Instances) -> None:
    a, b = leases(2, 0.6)
    assert a.try_acquire()
    a._stop.set()  # a hangs: it stops renewing
    assert a._heartbeat is not None
    a._heartbeat.join()
    assert not b.try_acquire()
    time.sleep(0.8)
    assert b.try_acquire()
    assert not a.renew()  # the version it wrote is gone
    a.release()  # gives up nothing of b's
    current = b.read()
    assert current is not None and current.owner == b.owner
    b.release()


def test_the_heartbeat_keeps_a_live_writer_s_lease(leases: Instances) -> None:
    a, b = leases(2, 2.0)  # beats every 0.67 s: room for a slow emulator on a loaded machine
    assert a.try_acquire()
    time.sleep(5.0)  # more than two TTLs
    assert not b.try_acquire()
    a.release()


def test_a_finished_writer_leaves_a_short_lease_instead_of_none(leases: Instances) -> None:
    a, b = leases(2, 2.0)
    assert a.try_acquire()
    a.release(finished=True)  # settle = 1 s: mounts elsewhere get time to show the last files
    assert not b.try_acquire()
    time.sleep(1.2)
    assert b.try_acquire()
    b.release()


def test_of_many_racing_instances_exactly_one_wins(gcs: FakeGcs) -> None:
    url = f"gs://{gcs.new_bucket('lease')}/root"
    kind, rest = split_bucket_url(url)
    racers = [ObjectLease(gcs.fs(), kind, f"{rest}/lease.json", 30) for _ in range(8)]
    barrier = threading.Barrier(len(racers))
    wins: list[bool] = []

    def race(lease: ObjectLease) -> None:
        barrier.wait()
        wins.append(lease.try_acquire())

    threads = [threading.Thread(target=race, args=(lease,)) for lease in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(wins) == [False] * 7 + [True]
    for lease in racers:
        lease.release()


def test_a_store_that_fails_means_no_lease_not_a_crash(gcs: FakeGcs, caplog: pytest.LogCaptureFixture) -> None:
    lease = ObjectLease(gcs.fs(), "gcs", "no-such-bucket-here/lease.json", 30)
    with (
        caplog.at_level(logging.WARNING),
        writer_lease(Path("/unused"), ttl=30, wait=5, done=lambda: False, lease=lease) as outcome,
    ):
        assert outcome == "unleased"
    assert len([r for r in caplog.records if "could not take cache lease" in r.getMessage()]) == 1


# -- item 2: EIO from a mount while reading, breaking or deleting the file lease ---------------------------------


def _eio_on(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
    """``real``, except that it raises EIO for any path ending in ``name`` (a mount whose object changed)."""

    def fake(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(os.fspath(path)).endswith(name) if isinstance(path, (str, os.PathLike)) else False:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real(path, *args, **kwargs)

    return fake


def test_a_lease_that_cannot_be_read_or_removed_is_not_held(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "lease.json"
    path.write_text(json.dumps({"owner": "x", "host": "elsewhere", "pid": 1, "acquired_at": 0, "expires_at": 1}))
    lease = Lease(path, ttl=30)
    with (
        caplog.at_level(logging.WARNING),
        mock.patch("io.open", _eio_on("lease.json", io.open)),
        mock.patch("os.rename", _eio_on("lease.json", os.rename)),
    ):
        assert lease.read() is None
        assert lease.read() is None
        assert not lease.try_acquire()  # it is there but unreadable: not held, so write without it
        assert not lease.usable
    reads = [r for r in caplog.records if "could not read cache lease" in r.getMessage()]
    assert len(reads) == 1  # logged once, however often it fails


def test_warm_goes_on_when_the_lease_answers_eio(cache_root: Path, hub: LocalHub) -> None:
    """Reading, renewing and deleting the lease all fail with EIO: `cache warm` still warms, exit 0, no traceback."""
    runner = CliRunner()
    env = {"MODEL_CACHE_PATH": str(cache_root), "HF_ENDPOINT": hub.endpoint, "MODEL_NAME": REPO}
    with (
        mock.patch("io.open", _eio_on("lease.json", io.open)),
        mock.patch("os.unlink", _eio_on("lease.json", os.unlink)),
        mock.patch("os.rename", _eio_on("lease.json", os.rename)),
    ):
        result = runner.invoke(app, ["cache", "warm", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert json.loads(result.stdout)["downloaded_files"] > 0
    again = runner.invoke(app, ["cache", "verify", "--json"], env=env)
    assert again.exit_code == 0, again.output


def test_warm_writes_without_the_lease_when_it_cannot_be_created(cache_root: Path, hub: LocalHub) -> None:
    runner = CliRunner()
    env = {"MODEL_CACHE_PATH": str(cache_root), "HF_ENDPOINT": hub.endpoint, "MODEL_NAME": REPO}
    with mock.patch("os.open", _eio_on("lease.json", os.open)):
        result = runner.invoke(app, ["cache", "warm", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["downloaded_files"] > 0


def test_warm_on_a_bucket_lease_that_is_unreachable_still_warms(cache_root: Path, hub: LocalHub, gcs: FakeGcs) -> None:
    runner = CliRunner()
    env = {
        "MODEL_CACHE_PATH": str(cache_root),
        "HF_ENDPOINT": hub.endpoint,
        "MODEL_NAME": REPO,
        "GNOSIS_CACHE_BUCKET": "gs://no-such-bucket-here/huggingface",
    }
    with patched_env({**gcs.env(), "NO_GCE_CHECK": "true"}):
        result = runner.invoke(app, ["cache", "warm", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
