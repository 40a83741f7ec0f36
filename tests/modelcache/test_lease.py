"""The single-writer lease: exclusive while alive, breakable once stale, bounded waits."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from gnosis_ocr.modelcache.lease import Lease, writer_lease


def test_second_holder_is_refused_until_release(tmp_path: Path) -> None:
    a, b = Lease(tmp_path / "lease.json", ttl=30), Lease(tmp_path / "lease.json", ttl=30)
    assert a.try_acquire()
    assert not b.try_acquire()
    a.release()
    assert not (tmp_path / "lease.json").exists()
    assert b.try_acquire()
    b.release()


def test_expired_lease_is_broken(tmp_path: Path) -> None:
    path = tmp_path / "lease.json"
    path.write_text(json.dumps({"owner": "x", "host": "elsewhere", "pid": 1, "acquired_at": 0, "expires_at": 1}))
    lease = Lease(path, ttl=30)
    assert lease.try_acquire()
    assert lease.read() is not None and lease.read().owner == lease.owner  # type: ignore[union-attr]
    lease.release()


def test_lease_of_a_dead_process_on_this_host_is_broken_at_once(tmp_path: Path) -> None:
    path = tmp_path / "lease.json"
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)
    import socket

    path.write_text(
        json.dumps(
            {
                "owner": "x",
                "host": socket.gethostname(),
                "pid": dead_pid,
                "acquired_at": time.time(),
                "expires_at": time.time() + 3600,
            }
        )
    )
    lease = Lease(path, ttl=30)
    assert lease.try_acquire()
    lease.release()


def test_half_written_lease_counts_as_held_until_a_ttl_passes(tmp_path: Path) -> None:
    path = tmp_path / "lease.json"
    path.write_bytes(b"")  # a writer between O_EXCL create and its write
    lease = Lease(path, ttl=30)
    assert not lease.try_acquire()
    os.utime(path, (time.time() - 60, time.time() - 60))  # ... or one that died there a while ago
    assert lease.try_acquire()
    lease.release()


def test_heartbeat_renews_expiry(tmp_path: Path) -> None:
    lease = Lease(tmp_path / "lease.json", ttl=0.3)
    assert lease.try_acquire()
    first = lease.read()
    time.sleep(0.5)
    later = lease.read()
    assert first is not None and later is not None
    assert later.expires_at > first.expires_at
    assert not Lease(tmp_path / "lease.json", ttl=0.3).try_acquire()  # renewed, so not stale
    lease.release()


def test_waiter_sees_the_writer_finish(tmp_path: Path) -> None:
    holder = Lease(tmp_path / "lease.json", ttl=30)
    assert holder.try_acquire()
    finished = threading.Event()
    threading.Timer(0.3, finished.set).start()
    waits: list[object] = []
    started = time.monotonic()
    with writer_lease(
        tmp_path / "lease.json", ttl=30, wait=10, done=finished.is_set, poll=0.05, on_wait=waits.append
    ) as outcome:
        assert outcome == "done"
    assert 0.25 < time.monotonic() - started < 5
    assert len(waits) == 1
    holder.release()


def test_wait_is_bounded(tmp_path: Path) -> None:
    holder = Lease(tmp_path / "lease.json", ttl=30)
    assert holder.try_acquire()
    started = time.monotonic()
    with writer_lease(tmp_path / "lease.json", ttl=30, wait=0.3, done=lambda: False, poll=0.05) as outcome:
        assert outcome == "timeout"
    assert time.monotonic() - started < 3
    holder.release()


def _race(path: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    lease = Lease(Path(path), ttl=30)
    barrier.wait()
    got = lease.try_acquire()
    results.put(got)
    time.sleep(0.5)  # hold it while the others try
    lease.release()


def test_one_of_four_racing_processes_wins(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "lease.json"), barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    wins = [results.get(timeout=5) for _ in range(4)]
    assert sorted(wins) == [False, False, False, True]
