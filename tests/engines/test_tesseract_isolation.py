"""The worker pool that isolates native crashes: real processes, real signals, no patching.

The handlers below run in spawned worker processes and fail the way native code does (abort, segfault, hang,
hard exit) when a task asks them to, so each guarantee is shown on a process that really died.
"""

from __future__ import annotations

import functools
import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gnosis_ocr.errors import EngineError
from gnosis_ocr.isolation import Crashed, Done, Failed, IsolatedPool, Lost, TimedOut, describe_exit

REPO = Path(__file__).resolve().parents[2]


def _act(task: str) -> str:
    if task == "abort":
        os.abort()
    if task == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if task == "exit":
        os._exit(7)
    if task == "hang":
        time.sleep(3600)
    if task == "raise":
        raise RuntimeError("bad page")
    if task == "pid":
        return str(os.getpid())
    return task.upper()


def _handler() -> Callable[[str], str]:
    return _act


def _broken_factory(message: str) -> Callable[[str], str]:
    raise RuntimeError(message)


def _dying_factory() -> Callable[[str], str]:
    os.abort()


def _reaped(pid: int) -> bool:
    """Gone entirely: not running and not a zombie waiting to be reaped."""
    return not Path(f"/proc/{pid}").exists()


@pytest.fixture
def pool() -> Iterator[IsolatedPool[str, str]]:
    pool: IsolatedPool[str, str] = IsolatedPool(_handler, workers=2, timeout=30.0, name="test worker")
    pool.start()
    yield pool
    pool.close()


def test_tasks_come_back_in_order(pool: IsolatedPool[str, str]) -> None:
    outcomes = pool.run([f"t{i}" for i in range(7)])
    assert [o.value for o in outcomes if isinstance(o, Done)] == [f"T{i}" for i in range(7)]


def test_both_workers_do_the_work(pool: IsolatedPool[str, str]) -> None:
    outcomes = pool.run(["pid"] * 8)
    pids = {o.value for o in outcomes if isinstance(o, Done)}
    assert pids == {str(pid) for pid in pool.pids}
    assert len(pids) == 2


@pytest.mark.parametrize(("task", "exitcode"), [("abort", -signal.SIGABRT), ("segv", -signal.SIGSEGV), ("exit", 7)])
def test_a_native_crash_is_that_tasks_outcome_and_the_pool_recovers(
    pool: IsolatedPool[str, str], task: str, exitcode: int
) -> None:
    before = set(pool.pids)
    outcomes = pool.run(["a", "b", task, "c", "d", "e"])

    crashed = outcomes[2]
    assert isinstance(crashed, Crashed)
    assert crashed.exitcode == exitcode
    assert [o.value for o in outcomes if isinstance(o, Done)] == ["A", "B", "C", "D", "E"]
    # The dead worker was replaced and reaped; the pool is whole and keeps working.
    assert len(pool.pids) == 2
    gone = before - set(pool.pids)
    assert len(gone) == 1
    assert all(_reaped(pid) for pid in gone)
    again = pool.run(["x", "y", "z"])
    assert [o.value for o in again if isinstance(o, Done)] == ["X", "Y", "Z"]


def test_describe_exit_names_the_signal() -> None:
    assert describe_exit(-6) == "signal 6, SIGABRT"
    assert describe_exit(-11) == "signal 11, SIGSEGV"
    assert describe_exit(3) == "exit code 3"


def test_every_worker_crashing_at_once_still_answers_every_task(pool: IsolatedPool[str, str]) -> None:
    outcomes = pool.run(["abort", "segv", "abort", "ok"])
    assert [type(o) for o in outcomes] == [Crashed, Crashed, Crashed, Done]
    assert len(pool.pids) == 2


def test_a_hang_is_killed_at_the_timeout_and_the_others_finish() -> None:
    pool: IsolatedPool[str, str] = IsolatedPool(_handler, workers=2, timeout=1.5, name="test worker")
    try:
        pool.start()
        started = time.monotonic()
        outcomes = pool.run(["a", "hang", "b", "c"])
        elapsed = time.monotonic() - started
        assert isinstance(outcomes[1], TimedOut)
        assert outcomes[1].limit == 1.5
        assert [o.value for o in outcomes if isinstance(o, Done)] == ["A", "B", "C"]
        assert elapsed < 10
        assert len(pool.pids) == 2
        assert [o.value for o in pool.run(["d"]) if isinstance(o, Done)] == ["D"]
    finally:
        pool.close()


def test_a_python_exception_fails_the_task_and_keeps_the_worker(pool: IsolatedPool[str, str]) -> None:
    before = set(pool.pids)
    outcomes = pool.run(["raise", "ok"])
    assert isinstance(outcomes[0], Failed)
    assert outcomes[0].message == "RuntimeError: bad page"
    assert set(pool.pids) == before


def test_a_worker_that_died_while_idle_is_replaced_and_its_next_task_still_runs(
    pool: IsolatedPool[str, str],
) -> None:
    victim = pool.pids[0]
    os.kill(victim, signal.SIGKILL)
    time.sleep(0.2)
    outcomes = pool.run(["a", "b", "c"])
    assert [o.value for o in outcomes if isinstance(o, Done)] == ["A", "B", "C"]
    assert victim not in pool.pids
    assert _reaped(victim)


def test_close_reaps_every_worker_and_is_idempotent() -> None:
    pool: IsolatedPool[str, str] = IsolatedPool(_handler, workers=2, timeout=30.0)
    pool.start()
    pids = pool.pids
    assert all(not _reaped(pid) for pid in pids)
    pool.close()
    pool.close()
    assert all(_reaped(pid) for pid in pids)
    with pytest.raises(EngineError, match="closed"):
        pool.run(["a"])


def test_a_factory_that_raises_fails_start_with_its_message() -> None:
    pool: IsolatedPool[str, str] = IsolatedPool(
        functools.partial(_broken_factory, "no model here"), workers=2, timeout=30.0, name="test worker"
    )
    with pytest.raises(EngineError, match="Could not start a test worker process: RuntimeError: no model here"):
        pool.start()
    assert pool.pids == []
    pool.close()


def test_a_worker_that_dies_during_start_up_is_reported() -> None:
    pool: IsolatedPool[str, str] = IsolatedPool(_dying_factory, workers=1, timeout=30.0, name="test worker")
    with pytest.raises(EngineError, match=r"exited during start-up \(signal 6, SIGABRT\)"):
        pool.start()
    # A run that cannot start any worker answers every task as lost instead of raising.
    outcomes = pool.run(["a", "b"])
    assert all(isinstance(o, Lost) for o in outcomes)
    assert "signal 6" in outcomes[0].message  # type: ignore[union-attr]
    pool.close()


def test_run_starts_workers_lazily() -> None:
    pool: IsolatedPool[str, str] = IsolatedPool(_handler, workers=1, timeout=30.0)
    try:
        assert pool.pids == []
        assert [o.value for o in pool.run(["a"]) if isinstance(o, Done)] == ["A"]
        assert len(pool.pids) == 1
    finally:
        pool.close()


def test_a_pool_dropped_without_close_still_stops_its_workers() -> None:
    pool: IsolatedPool[str, str] = IsolatedPool(_handler, workers=2, timeout=30.0)
    pool.start()
    pids = pool.pids
    del pool
    gc.collect()
    assert all(_reaped(pid) for pid in pids)


def test_works_from_a_script_without_a_main_guard(tmp_path: Path) -> None:
    # multiprocessing's spawn would re-run this script in each worker and fail; our workers never import __main__.
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from gnosis_ocr.isolation import IsolatedPool\n"
        "from tests.engines.test_tesseract_isolation import _handler\n"
        "pool = IsolatedPool(_handler, workers=2, timeout=30.0)\n"
        "print([o.value for o in pool.run(['a', 'b', 'c'])])\n"
        "pool.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['A', 'B', 'C']"
