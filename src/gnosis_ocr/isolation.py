"""Run native code in worker processes, so that its crash is one task's error and not ours.

Some native libraries (tesseract among them) can abort the whole process on a bad input. ``IsolatedPool`` keeps a
fixed number of worker processes, each built once by a *handler factory* (a picklable callable run in the worker,
which loads its models there) and each given one task at a time. Because a worker holds exactly one task, a worker
that dies (SIGABRT, SIGSEGV, the OOM killer) or outlives its deadline points at exactly one task: that task's
outcome is ``Crashed`` or ``TimedOut``, the worker is replaced, and the other tasks go on. No innocent task is ever
lost with a dead worker, so none needs re-running; a task that could not even be handed over (the worker died while
idle) goes back to the front of the queue.

Workers are fresh interpreters (``subprocess``, not ``fork``: the parent may run threads, a web server or a
progress bar, and forking a threaded process is unsafe). Unlike multiprocessing's ``spawn``, nothing re-imports the
caller's ``__main__``, so a script without an ``if __name__ == "__main__"`` guard, a notebook or a server works the
same. A worker talks to the parent over a socket pair: pickled tasks in, pickled results out; it gets the parent's
``sys.path`` first, so the factory must live in an importable module (not in ``__main__``). Workers ignore SIGINT
(Ctrl-C reaches the whole process group; the parent decides) and exit on their own when the parent's end of the
socket closes, including when the parent dies.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, TypeAlias, TypeVar

from gnosis_ocr.errors import EngineError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

Handler: TypeAlias = Callable[[T], R]
# Called once in each worker process; must be picklable (a module-level function or a functools.partial of one).
HandlerFactory: TypeAlias = Callable[[], Handler[T, R]]


@dataclass(frozen=True)
class Done(Generic[R]):
    value: R
    seconds: float


@dataclass(frozen=True)
class Failed:
    """The handler raised a Python exception; the worker lives on."""

    message: str
    seconds: float


@dataclass(frozen=True)
class Crashed:
    """The worker process died while it held this task."""

    exitcode: int  # negative: killed by that signal (as subprocess reports it)
    seconds: float

    def describe(self) -> str:
        return describe_exit(self.exitcode)


@dataclass(frozen=True)
class TimedOut:
    """The task outlived the pool's per-task timeout; its worker was killed."""

    limit: float
    seconds: float


@dataclass(frozen=True)
class Lost:
    """The task never ran: no worker could be started to run it."""

    message: str
    seconds: float = 0.0


Outcome: TypeAlias = Done[R] | Failed | Crashed | TimedOut | Lost


def describe_exit(exitcode: int | None) -> str:
    """``signal 6, SIGABRT`` or ``exit code 1``."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
        return f"signal {-exitcode}, {name}"
    return f"exit code {exitcode}"


# Run by ``python -c`` in a worker, with the socket's descriptor as argv[1]. It takes the parent's sys.path before
# importing anything of ours, so the worker imports exactly what the parent would.
_BOOTSTRAP = (
    "import sys\n"
    "from multiprocessing.connection import Connection\n"
    "conn = Connection(int(sys.argv[1]))\n"
    "sys.path[:] = conn.recv()\n"
    "from gnosis_ocr.isolation import serve\n"
    "serve(conn)\n"
)


def serve(conn: Connection) -> None:
    """A worker's main loop: receive the factory, build the handler, answer one task at a time until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        factory: HandlerFactory[Any, Any] = conn.recv()
        handler = factory()
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if task is None:
            return
        try:
            result = handler(task)
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        else:
            conn.send(("ok", result))


@dataclass(eq=False)  # compared and hashed by identity
class _Worker:
    process: subprocess.Popen[bytes]
    conn: Connection

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass(frozen=True)
class _Busy:
    index: int
    started: float


class IsolatedPool(Generic[T, R]):
    """A fixed number of worker processes, one task each at a time, with crash and timeout isolation.

    ``start`` raises ``EngineError`` when a worker cannot be started (its factory raised, or it died first).
    ``run`` never raises for one task: each outcome says what happened. ``close`` stops every worker; idempotent.
    One ``run`` at a time: concurrent callers wait their turn.
    """

    def __init__(
        self,
        factory: HandlerFactory[T, R],
        *,
        workers: int,
        timeout: float,
        name: str = "worker",
        start_timeout: float = 120.0,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self._factory = factory
        self._size = workers
        self._timeout = timeout
        self._name = name
        self._start_timeout = start_timeout
        self._workers: list[_Worker] = []
        # Stops the workers if the pool is dropped without close(), or at interpreter exit.
        self._finalizer = weakref.finalize(self, _stop, self._workers)
        self._lock = threading.Lock()
        self._started = False
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (for logs and tests)."""
        return [w.pid for w in self._workers]

    def start(self) -> None:
        """Start every worker and wait until each has built its handler. Idempotent."""
        with self._lock:
            self._check_open()
            if self._started:
                return
            try:
                self._top_up()
            except BaseException:
                for worker in list(self._workers):
                    self._discard(worker, grace=0.0)
                raise
            self._started = True

    def run(self, tasks: Sequence[T]) -> list[Outcome[R]]:
        """One outcome per task, in order. Starts missing workers first (after a crash, or without ``start``)."""
        with self._lock:
            self._check_open()
            outcomes: list[Outcome[R] | None] = [None] * len(tasks)
            busy: dict[_Worker, _Busy] = {}
            try:
                self._run(tasks, outcomes, busy)
            except BaseException:
                # Interrupted (KeyboardInterrupt, a bug): the busy workers hold tasks nobody will collect.
                for worker in list(busy):
                    self._discard(worker, grace=0.0)
                raise
        return [o if o is not None else Lost("not run") for o in outcomes]

    def close(self) -> None:
        """Ask every worker to stop, kill those that do not within a moment, and reap them all. Idempotent."""
        with self._lock:
            self._closed = True
            self._finalizer()

    # -- below, the caller holds the lock ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError(f"The {self._name} pool is closed.", hint="Create a new engine to run more pages.")

    def _run(self, tasks: Sequence[T], outcomes: list[Outcome[R] | None], busy: dict[_Worker, _Busy]) -> None:
        pending = deque(range(len(tasks)))
        start_error = self._try_top_up() if pending else None
        idle_deaths = 0
        while pending or busy:
            for worker in [w for w in self._workers if w not in busy]:
                if not pending:
                    break
                index = pending.popleft()
                try:
                    if worker.process.poll() is not None:
                        raise BrokenPipeError
                    worker.conn.send(tasks[index])
                except OSError:
                    # Died while idle: the task was never handed over, so it goes back to the queue.
                    pending.appendleft(index)
                    exitcode = self._discard(worker, grace=0.0)
                    logger.warning("%s pid %d died while idle (%s)", self._name, worker.pid, describe_exit(exitcode))
                    idle_deaths += 1
                    if idle_deaths <= 2 * self._size:  # beyond that, fresh workers die unprompted: stop trying
                        start_error = self._try_top_up() or start_error
                    else:
                        start_error = f"workers keep dying while idle ({describe_exit(exitcode)})"
                    continue
                busy[worker] = _Busy(index, time.monotonic())
            if not busy:
                message = f"no {self._name} process could be started ({start_error or 'unknown reason'})"
                while pending:
                    outcomes[pending.popleft()] = Lost(message)
                break
            start_error = self._collect(outcomes, busy) or start_error

    def _collect(self, outcomes: list[Outcome[R] | None], busy: dict[_Worker, _Busy]) -> str | None:
        """Wait for the next worker event (a result, a death, a deadline) and record it."""
        nearest = min(job.started for job in busy.values()) + self._timeout
        ready = wait([w.conn for w in busy], timeout=max(0.0, nearest - time.monotonic()))
        start_error: str | None = None
        now = time.monotonic()
        for worker, job in list(busy.items()):
            seconds = now - job.started
            outcome: Outcome[R] | None = None
            if worker.conn in ready:
                try:
                    kind, value = worker.conn.recv()
                except (EOFError, OSError):
                    exitcode = self._discard(worker, grace=5.0)
                    logger.warning(
                        "%s pid %d died on task %d (%s)", self._name, worker.pid, job.index, describe_exit(exitcode)
                    )
                    outcome = Crashed(exitcode, seconds)
                    start_error = self._try_top_up() or start_error
                else:
                    outcome = Done(value, seconds) if kind == "ok" else Failed(str(value), seconds)
            elif seconds >= self._timeout:
                logger.warning(
                    "%s pid %d exceeded %.0f s on task %d; killing it", self._name, worker.pid, self._timeout, job.index
                )
                self._discard(worker, grace=0.0)
                outcome = TimedOut(self._timeout, seconds)
                start_error = self._try_top_up() or start_error
            if outcome is not None:
                outcomes[job.index] = outcome
                del busy[worker]
        return start_error

    def _try_top_up(self) -> str | None:
        try:
            self._top_up()
        except EngineError as exc:
            logger.error("%s", exc)
            return exc.message
        return None

    def _top_up(self) -> None:
        """Start workers until there are ``size`` of them, all at once; wait for each to be ready."""
        starting: list[_Worker] = []
        while len(self._workers) + len(starting) < self._size:
            starting.append(self._launch())
        failures: list[str] = []
        deadline = time.monotonic() + self._start_timeout
        for worker in starting:
            problem = self._await_ready(worker, deadline)
            if problem is None:
                self._workers.append(worker)
                logger.debug("%s pid %d ready", self._name, worker.pid)
            else:
                failures.append(problem)
                self._discard(worker, grace=0.0)
        if failures:
            raise EngineError(f"Could not start a {self._name} process: {failures[0]}")

    def _launch(self) -> _Worker:
        """Start one worker process and hand it the parent's sys.path and the factory (it builds in the background)."""
        ours, theirs = socket.socketpair()
        with ours, theirs:
            process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
            conn = Connection(ours.detach())
        worker = _Worker(process, conn)
        try:
            conn.send(list(sys.path))
            conn.send(self._factory)
        except OSError:
            pass  # died at once: _await_ready reports how
        logger.debug("%s pid %d started", self._name, worker.pid)
        return worker

    def _await_ready(self, worker: _Worker, deadline: float) -> str | None:
        if not wait([worker.conn], timeout=max(0.0, deadline - time.monotonic())):
            return f"it did not become ready within {self._start_timeout:.0f} s"
        try:
            kind, value = worker.conn.recv()
        except (EOFError, OSError):
            try:
                exitcode = worker.process.wait(5.0)
            except subprocess.TimeoutExpired:
                return "it closed its connection during start-up"
            return f"it exited during start-up ({describe_exit(exitcode)})"
        return None if kind == "ready" else str(value)

    def _discard(self, worker: _Worker, *, grace: float) -> int:
        if worker in self._workers:
            self._workers.remove(worker)
        return _reap(worker, grace)


def _stop(workers: list[_Worker]) -> None:
    """Ask every worker to stop, give them a moment, kill the rest, reap them all; empties ``workers``."""
    stopping = list(workers)
    workers.clear()
    for worker in stopping:
        with contextlib.suppress(OSError):  # already gone
            worker.conn.send(None)
    deadline = time.monotonic() + 2.0
    for worker in stopping:
        _reap(worker, max(0.0, deadline - time.monotonic()))


def _reap(worker: _Worker, grace: float) -> int:
    """Give a worker ``grace`` seconds to exit, then kill it; reap it and answer its exit code."""
    try:
        worker.process.wait(grace)
    except subprocess.TimeoutExpired:
        worker.process.kill()
        worker.process.wait()
    worker.conn.close()
    return worker.process.returncode
