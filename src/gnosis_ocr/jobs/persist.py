"""Saving jobs to storage without ever holding the state lock while writing.

``JobWriter`` writes a held job's latest copy: ``mark`` asks for a write within ``interval`` seconds (page results,
coalesced: a slow bucket sees one write per interval, not one per page), ``save`` writes now (state changes that
must be durable before anyone sees them: a job taken, finished). Each write takes its copy and writes it under that
job's own write lock, never the state lock, so ``/healthz`` and status reads never wait on storage. Versions only
move forward in storage: a copy older than the one written last is skipped. A deleted job is never written again.

A failed write is logged, counted and retried with backoff; the job in memory goes on (it is the truth while the
instance lives) and storage catches up when it can.

Ownership: every write of a job this instance owns is conditional on the version it last read or wrote (the
object store's generation or ETag precondition, ``JobStore.save(expect=...)``). When another instance has taken
the job over, the write is refused, nothing is retried, and ``on_lost`` tells the runner to let the job go.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gnosis_ocr.errors import JobOwnershipLostError
from gnosis_ocr.jobs.record import JobRecord
from gnosis_ocr.jobs.state import JobTable
from gnosis_ocr.jobs.store import ABSENT, JobStore

logger = logging.getLogger(__name__)

RETRY_MAX = 30.0


class JobWriter:
    def __init__(
        self,
        store: JobStore,
        table: JobTable,
        *,
        interval: float = 0.5,
        on_error: Callable[[Exception], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.table = table
        self.interval = interval
        self._on_error = on_error
        self._on_lost = on_lost
        self._tokens: dict[str, str] = {}  # job id -> the stored version this instance last read or wrote
        self._cond = threading.Condition()
        self._due: dict[str, float] = {}  # job id -> monotonic time its write is due
        self._written: dict[str, int] = {}  # job id -> version last written
        self._locks: dict[str, threading.Lock] = {}
        self._failures = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gnosis-job-writer", daemon=True)
        self._thread.start()

    def _lock(self, job_id: str) -> threading.Lock:
        with self._cond:
            return self._locks.setdefault(job_id, threading.Lock())

    # -- asking for writes -------------------------------------------------------------------------------

    def mark(self, job_id: str) -> None:
        """Write this job's latest state within ``interval`` seconds."""
        with self._cond:
            if job_id not in self._due:
                self._due[job_id] = time.monotonic() + self.interval
                self._cond.notify()

    def adopt(self, job_id: str, token: str | None) -> None:
        """The stored version this instance read (``load_versioned``) and now writes on top of; None: a new job,
        whose first write must create it."""
        with self._cond:
            self._tokens[job_id] = token if token is not None else ABSENT

    def save(self, record: JobRecord, version: int) -> None:
        """Write ``record`` (a copy nobody else changes) as ``version`` now. Raises what storage raises, and
        JobOwnershipLostError when another instance has the job now."""
        with self._lock(record.id):
            if self.table.deleted(record.id) or version <= self._written.get(record.id, -1):
                return
            expect = self._tokens.get(record.id) if self.store.conditional else None
            token = self.store.save(record, expect=expect)
            if expect is not None and token is not None:
                self._tokens[record.id] = token
            self._written[record.id] = version

    def delete(self, job_id: str) -> None:
        """Remove a buried job from storage (after any write in progress), and forget it."""
        with self._lock(job_id):
            self.store.delete(job_id)
        with self._cond:
            self._due.pop(job_id, None)
            self._written.pop(job_id, None)
            self._tokens.pop(job_id, None)
            self._locks.pop(job_id, None)

    def forget(self, job_id: str) -> None:
        """A job no longer held here (finished and evicted, or handed on): drop its bookkeeping."""
        with self._cond:
            if job_id not in self._due:
                self._written.pop(job_id, None)
                self._tokens.pop(job_id, None)
                self._locks.pop(job_id, None)

    # -- the writer --------------------------------------------------------------------------------------

    def _write_latest(self, job_id: str) -> None:
        held = self.table.held(job_id)
        if held is None:
            return
        version, copy = held
        self.save(copy, version)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (not self._due or min(self._due.values()) > time.monotonic()):
                    timeout = min(self._due.values()) - time.monotonic() if self._due else None
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                now = time.monotonic()
                ready = [job_id for job_id, due in self._due.items() if due <= now]
                for job_id in ready:
                    del self._due[job_id]
            for job_id in ready:
                self._try(job_id)

    def _try(self, job_id: str) -> bool:
        try:
            self._write_latest(job_id)
        except JobOwnershipLostError as exc:
            logger.warning("job %s: %s", job_id, exc.message)
            self.forget(job_id)
            if self._on_lost is not None:
                self._on_lost(job_id)
            return False
        except Exception as exc:
            self._failures += 1
            delay = min(RETRY_MAX, self.interval * 2**self._failures)
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.warning("job %s: saving to storage failed (%s); retrying in %.1f s", job_id, exc, delay)
            if self._on_error is not None:
                self._on_error(exc)
            with self._cond:
                self._due.setdefault(job_id, time.monotonic() + delay)
            return False
        self._failures = 0
        self.last_error = None
        return True

    def flush(self, timeout: float) -> int:
        """Write every pending job now (each tried once more until ``timeout``); the number left unwritten."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                pending = list(self._due)
                self._due.clear()
            for job_id in pending:
                self._try(job_id)
            with self._cond:
                left = len(self._due)
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def close(self, timeout: float = 5.0) -> int:
        """Stop the writer thread, then flush what is pending; the number of jobs left unwritten."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        left = self.flush(timeout)
        if left:
            logger.error("%d job(s) could not be saved before the shutdown: %s", left, self.last_error)
        return left
