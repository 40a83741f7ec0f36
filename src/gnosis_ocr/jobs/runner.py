"""The service's job runner: a queue, several jobs read at once, their pages sharing the engine fairly.

No FastAPI here. The API submits a JobRecord whose inputs are already in the store, reads copies of jobs, cancels
and deletes them, and watches a job for changes. The parts:

- ``state.JobTable``: the jobs in memory, their versions and watchers, under one short lock;
- ``persist.JobWriter``: saves jobs outside that lock (page results coalesced, state changes at once);
- this module: admission (up to ``max_running`` jobs at once, in submission order), one reading thread per running
  job (``reading.read_pages``: it renders one page ahead and keeps pages in flight), and one ``FairSlots`` per
  engine, so pages of every running job share the device and a 1-page job is never starved by a 500-page one;
- recovery and housekeeping: heartbeats, take-over of unfinished jobs, retention.

Durability: a job's state changes are saved before they are shown; page results at most every ``save_interval``
seconds while pages complete; page images as pages render. A job that a restart interrupted is taken over on
start-up (local storage: every unfinished job; shared storage: those whose owner's heartbeat is older than
``GNOSIS_JOB_STALE_SECONDS``, checked again periodically) and resumes from the pages stored. A job interrupted
``MAX_ATTEMPTS`` times (a page that kills the process, say) ends as failed with that reason. On shutdown the
pages in flight get ``shutdown_grace`` seconds to finish; the rest stay pending and the job goes back to
``queued`` for whoever starts next (never failed).

Reading a page again (``retry_page``): a finished job's page is marked ``rerun`` and the job goes back to the
queue, through the same admission, reading loop and engine slots; a job with such marks reads only those pages
(``JobRecord.rereading``), each new reading taking the place of the old one, which moves to the page's
``history``. The marks are in job.json, so a restart resumes the re-reading like any unfinished job; the job ends
as it would have (done, or failed when every document failed), never cancelled by a cancelled re-reading.

Callbacks: a job with a ``callback_url`` ends with its ``callback`` pending in the same write that finishes it;
``webhooks.WebhookSender`` delivers it from the background and the outcome is saved in the job. A pending callback
of a finished job that nobody holds (the instance stopped first) is sent again on take-over: at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from gnosis_ocr.documents.model import DocumentLimits, Page, PageError
from gnosis_ocr.documents.render import open_document
from gnosis_ocr.engines.base import Engine, StreamingEngine
from gnosis_ocr.engines.feeder import streaming
from gnosis_ocr.errors import (
    DocumentError,
    GnosisError,
    JobBusyError,
    JobFinishedError,
    JobNotFoundError,
    JobOwnershipLostError,
    JobRecordUnreadableError,
    QueueFullError,
)
from gnosis_ocr.jobs.metrics import JobMetrics
from gnosis_ocr.jobs.persist import JobWriter
from gnosis_ocr.jobs.reading import ReadPolicy, Stop, StopReason, read_pages
from gnosis_ocr.jobs.record import (
    CallbackStatus,
    DocumentEntry,
    EngineUsed,
    ErrorInfo,
    JobRecord,
    JobStatus,
    PageEntry,
    utcnow,
)
from gnosis_ocr.jobs.results import PageResult
from gnosis_ocr.jobs.sink import JobSink
from gnosis_ocr.jobs.slots import FairSlots
from gnosis_ocr.jobs.state import JobTable
from gnosis_ocr.jobs.store import JobStore
from gnosis_ocr.jobs.webhooks import WebhookOptions, WebhookSender, callback_body

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
STAGING_KEPT = 3600.0  # seconds a failed upload's staging or job folder stays before a sweep removes it
FALLBACK_ENGINE = "tesseract"
READINGS_KEPT = 10  # readings of one page at most (the current one and its history); more retries are refused

Summary = Callable[[JobRecord], dict[str, object]]


class EngineProvider(Protocol):
    def get(self, name: str) -> Engine | StreamingEngine:
        """A loaded engine for ``name`` (``auto``: the server's default); blocks while it loads."""
        ...


@dataclass(frozen=True)
class RunnerOptions:
    limits: DocumentLimits
    ttl_seconds: float = 24 * 3600.0
    stale_seconds: float = 60.0
    max_queued: int = 100
    save_interval: float = 0.5
    max_running: int = 8  # jobs read at the same time
    max_inflight: int | None = None  # pages in one engine at once (None: the engine's capacity)
    loop_guard: bool = True
    loop_retries: int = 2
    shutdown_grace: float = 8.0  # seconds pages in flight get to finish on shutdown (Cloud Run allows 10)
    webhooks: WebhookOptions | None = None  # None: no GNOSIS_WEBHOOK_SECRET, so no callbacks are sent


def _error(exc: GnosisError) -> ErrorInfo:
    return ErrorInfo(type=type(exc).__name__, message=exc.message, hint=exc.hint)


@dataclass
class _Lane:
    """One engine as the runner uses it: its streaming form and its fair shares."""

    engine: Engine | StreamingEngine
    stream: StreamingEngine
    slots: FairSlots


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        engines: EngineProvider,
        options: RunnerOptions,
        *,
        metrics: JobMetrics | None = None,
        instance: str | None = None,
        summary: Summary | None = None,
    ) -> None:
        self.store = store
        self.engines = engines
        self.options = options
        self.metrics = metrics or JobMetrics()
        self.instance = instance or f"{int(time.time()):x}-{secrets.token_hex(4)}"
        self.table = JobTable()
        self.writer = JobWriter(store, self.table, interval=options.save_interval, on_lost=self._lost)
        self._lock = self.table.lock
        self._wake = threading.Condition(self._lock)
        self._queue: deque[str] = deque()
        self._running: dict[str, Stop] = {}
        self._readers: dict[str, threading.Thread] = {}
        self._lanes: dict[int, _Lane] = {}
        self._lanes_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._orphans: dict[str, float] = {}  # job folders without job.json -> when first seen (monotonic)
        self._unreadable: set[str] = set()  # jobs whose job.json this version cannot read, logged once each
        self._summary = summary or _summary
        self.webhooks = (
            WebhookSender(options.webhooks, self.metrics.registry, self._callback_result) if options.webhooks else None
        )

    def __repr__(self) -> str:
        return f"JobRunner({self.store!r}, instance={self.instance!r})"

    # -- life --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Take over unfinished jobs, then start the writer, the admission and the housekeeping threads."""
        self.store.heartbeat(self.instance)
        self.writer.start()
        if self.webhooks is not None:
            self.webhooks.start()
        self.recover()
        self.sweep(starting=True)
        for name, target in (("gnosis-job-admission", self._admit), ("gnosis-job-housekeeping", self._housekeeping)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    @property
    def alive(self) -> bool:
        """The admission thread runs (jobs queued now will start)."""
        return bool(self._threads) and self._threads[0].is_alive() and not self._stopping.is_set()

    @property
    def storage_error(self) -> str | None:
        """Why saving jobs fails right now (the writer retries), None while storage takes writes."""
        return self.writer.last_error

    def close(self, timeout: float | None = None) -> None:
        """Stop: running jobs finish their pages in flight within the grace, then go back to ``queued`` with the
        rest pending; queued jobs stay queued. Engines are the caller's to close afterwards."""
        grace = self.options.shutdown_grace if timeout is None else min(timeout, self.options.shutdown_grace)
        self._stopping.set()
        with self._wake:
            stops = list(self._running.values())
            readers = list(self._readers.values())
            self._wake.notify_all()
        for stop in stops:
            stop.trigger("shutdown")
        deadline = time.monotonic() + grace + 2.0
        for thread in readers + self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lanes_lock:
            lanes, self._lanes = list(self._lanes.values()), {}
        for lane in lanes:
            if lane.stream is not lane.engine:
                lane.stream.close()  # our feeder only; the engine is its provider's
        if self.webhooks is not None:  # what it has not sent stays pending in the jobs, for the next start
            self.webhooks.close(max(0.5, min(2.0, deadline - time.monotonic())))
        self.writer.close(max(1.0, deadline - time.monotonic()))
        with contextlib.suppress(Exception):
            self.store.forget_instance(self.instance)

    # -- reading -----------------------------------------------------------------------------------------

    def snapshot(self, job_id: str) -> JobRecord:
        """A copy of the job as it stands (this instance's memory first, then the store)."""
        held = self.held(job_id)
        if held is not None:
            return held[1]
        stored = None if self.table.deleted(job_id) else self.store.load(job_id)
        if stored is None:
            raise JobNotFoundError(
                f"No job {job_id[:40]!r}: it never existed, was deleted, or passed its retention time.",
                hint="Upload the documents again with POST /api/v1/jobs.",
            )
        return stored

    def version(self, job_id: str) -> int | None:
        """The job's change counter while this instance holds it in memory (None otherwise): equal versions,
        equal content, so readers can share one copy and one serialisation per version."""
        if self._stale_here(job_id):
            return None
        return self.table.version(job_id)

    def held(self, job_id: str) -> tuple[int, JobRecord] | None:
        """(version, a copy) of a job held in memory, None for others."""
        if self._stale_here(job_id):
            return None
        return self.table.held(job_id)

    def _stale_here(self, job_id: str) -> bool:
        """A finished job on shared storage: another instance may have changed it since (a page read again, its
        callback noted), so readers get the stored record, not this instance's memory of it."""
        if self.store.local:
            return False
        with self._lock:
            return job_id in self.table.finished and job_id not in self.table.live

    def owns(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self.table.live and not self.table.deleted(job_id)

    def watch(self, job_id: str) -> asyncio.Event:
        """An event set (on the caller's loop) whenever the job changes; call ``unwatch`` when done."""
        return self.table.watch(job_id)

    def unwatch(self, job_id: str, event: asyncio.Event) -> None:
        self.table.unwatch(job_id, event)

    # -- commands ----------------------------------------------------------------------------------------

    def check_capacity(self) -> None:
        """QueueFullError when as many jobs wait as GNOSIS_MAX_QUEUED_JOBS allows."""
        with self._lock:
            waiting = len(self._queue)
        if waiting >= self.options.max_queued:
            raise QueueFullError(
                f"{waiting} jobs are waiting, the most this server queues (GNOSIS_MAX_QUEUED_JOBS).",
                hint="Retry in a minute, or run more instances with shared storage.",
            )

    def submit(self, record: JobRecord) -> JobRecord:
        """Queue a new job whose inputs are in the store. QueueFullError when too many wait."""
        self.check_capacity()
        record.owner = self.instance
        self.writer.adopt(record.id, None)  # its first write creates it
        self.writer.save(record.model_copy(deep=True), 1)
        with self.table.changing(record.id):
            self.table.live[record.id] = record
            self._queue.append(record.id)
            self.metrics.submitted.inc()
            self.metrics.queued.set(len(self._queue))
            self._wake.notify_all()
            copy = record.model_copy(deep=True)
        return copy

    def cancel(self, job_id: str) -> JobRecord:
        with self._lock:
            record = self.table.record(job_id)
            stop = self._running.get(job_id)
            queued = job_id in self._queue
            if queued:
                self._queue.remove(job_id)
                self.metrics.queued.set(len(self._queue))
        if record is None:
            stored = self.snapshot(job_id)  # 404 when unknown
            if stored.finished:
                raise JobFinishedError(f"Job {job_id} has already finished ({stored.status}).")
            raise JobFinishedError(
                f"Job {job_id} runs on another instance ({stored.owner}); cancel it there.",
                hint="Retry: requests reach the instances in turn.",
            )
        if record.finished:
            raise JobFinishedError(f"Job {job_id} has already finished ({record.status}).")
        if stop is not None:
            stop.trigger("cancel")
        elif queued and record.rereading:
            self._conclude(record)  # the pages keep their readings; the job ends as it was
        elif queued:
            self._finish(record, "cancelled", ErrorInfo(type="Cancelled", message="Cancelled before it started."))
        return self.snapshot(job_id)

    def retry_page(self, job_id: str, n: int, engine: str = "auto") -> JobRecord:
        """Read page ``n`` of a finished job again, with ``engine`` (auto: the job's own). The page keeps its
        reading until the new one takes its place. JobNotFoundError for an unknown job or page; JobBusyError while
        the job runs, the page is not read yet, is being read again, or has been read READINGS_KEPT times."""
        with self._lock:
            record = self.table.record(job_id)
            queued = job_id in self._queue
        if record is not None and not record.finished:
            marked = record.page(n)
            if marked is not None and marked.rerun is not None:
                _check_retry(record, marked)  # says: being read again
            if not (queued and record.rereading):  # more pages may join a re-reading until it starts
                state = "waiting to start" if queued else "being read"
                raise JobBusyError(
                    f"Job {job_id} is {state}; only the pages of a finished job are read again.",
                    hint=f"Retry page {n} once the job has finished (its event stream ends with `end`).",
                )
        elif record is None or not self.store.local:
            record = self._load_finished(job_id, n)  # shared storage: another instance may have changed it
        page = record.page(n)
        if page is None:
            raise JobNotFoundError(
                f"Job {job_id} has no page {n}: it has {len(record.pages)}.", hint="Pages are numbered from 1."
            )
        _check_retry(record, page)

        def mark(r: JobRecord) -> None:
            entry = r.pages[n - 1]
            entry.rerun = engine
            for doc in r.documents:
                if doc.index == entry.document:
                    doc.status = "queued"
            if r.finished:
                r.status = "queued"
                r.finished_at = None
                r.attempts = 0  # MAX_ATTEMPTS counts the interruptions of this reading
                r.owner = self.instance

        try:
            self._commit(record, mark)
        except JobOwnershipLostError as exc:
            with self._lock:
                if self.table.finished.get(job_id) is record:
                    self.table.finished.pop(job_id)
            self.writer.forget(job_id)
            raise JobBusyError(
                f"Job {job_id} changed on another instance while page {n} was being marked.", hint="Send it again."
            ) from exc
        with self._wake:
            if self.table.finished.get(job_id) is record:
                self.table.finished.pop(job_id)
                self.table.live[job_id] = record
            if job_id not in self._queue and job_id not in self._running:
                self._queue.append(job_id)
                self.metrics.queued.set(len(self._queue))
            self._wake.notify_all()
        logger.info("job %s: page %d is to be read again with %s", job_id, n, engine)
        return self.snapshot(job_id)

    def _load_finished(self, job_id: str, n: int) -> JobRecord:
        """A finished job from the store, held here from now on (its stored version adopted for the next write)."""
        if self.table.deleted(job_id):
            self.snapshot(job_id)  # 404
        token = None
        if self.store.conditional:
            loaded = self.store.load_versioned(job_id)
            record, token = loaded if loaded is not None else (None, None)
        else:
            record = self.store.load(job_id)
        if record is None:
            raise JobNotFoundError(
                f"No job {job_id[:40]!r}: it never existed, was deleted, or passed its retention time.",
                hint="Upload the documents again with POST /api/v1/jobs.",
            )
        if not record.finished:
            raise JobBusyError(
                f"Job {job_id} is being read on another instance ({record.owner}); only the pages of a finished "
                "job are read again.",
                hint=f"Retry page {n} once the job has finished.",
            )
        with self._lock:
            held = self.table.record(job_id)
            if held is not None and not held.finished:
                raise JobBusyError(f"Job {job_id} is being read again.", hint=f"Retry page {n} once it has finished.")
            if token is not None:
                self.writer.adopt(job_id, token)
            evicted = self.table.finish(record)  # replaces a copy held from before
        for other in evicted:
            self.writer.forget(other)
        return record

    def delete(self, job_id: str) -> None:
        """Gone for readers at once; a running job's pages are aborted and its files removed once it stops."""
        with self._lock:
            held = self.table.record(job_id) is not None
            stop = self._running.get(job_id)
            if job_id in self._queue:
                self._queue.remove(job_id)
                self.metrics.queued.set(len(self._queue))
        if not held:
            with contextlib.suppress(JobRecordUnreadableError):  # a record no version here reads can still go
                self.snapshot(job_id)  # 404 when unknown
        self.table.bury(job_id)
        if stop is not None:
            stop.trigger("delete")  # its reading thread removes the files once it has stopped
        else:
            self.writer.delete(job_id)

    # -- recovery and housekeeping ------------------------------------------------------------------------

    def recover(self) -> int:
        """Take over unfinished jobs this instance may run; the number taken."""
        taken = 0
        for job_id in self.store.job_ids():
            with self._lock:
                if self.table.record(job_id) is not None or self.table.deleted(job_id):
                    continue
            try:
                if self.store.conditional:
                    loaded = self.store.load_versioned(job_id)
                    record, token = loaded if loaded is not None else (None, None)
                else:
                    record, token = self.store.load(job_id), None
            except JobRecordUnreadableError as exc:
                self._skip_unreadable(exc)
                continue
            if record is None or not self._may_take(record):
                continue
            if not record.finished:
                taken += self._take(record, token)
            elif record.callback is not None and record.callback.state == "pending" and record.callback_url:
                self._resend(record, token)
        return taken

    def _resend(self, record: JobRecord, token: str | None) -> None:
        """A finished job whose callback was not delivered before its instance stopped: take it (conditionally, so
        one instance sends it) and send it again, as the same delivery."""
        if token is not None:
            self.writer.adopt(record.id, token)
        with self._lock:
            evicted = self.table.finish(record)
        for job_id in evicted:
            self.writer.forget(job_id)

        def take(r: JobRecord) -> None:
            r.owner = self.instance

        try:
            self._commit(record, take)
        except JobOwnershipLostError:
            with self._lock:
                self.table.finished.pop(record.id, None)
            self.writer.forget(record.id)
            return
        logger.info("job %s: its callback was not delivered before the last stop; sending it again", record.id)
        self._notify(record)

    def _skip_unreadable(self, exc: JobRecordUnreadableError) -> None:
        """A job whose record this version cannot read is left as it is (its writer may be a newer instance),
        named in the log once; the sweep removes it after the retention time."""
        if exc.job_id not in self._unreadable:
            self._unreadable.add(exc.job_id)
            logger.warning("%s %s", exc.message, exc.hint)

    def _may_take(self, record: JobRecord) -> bool:
        if self.store.local or record.owner in (None, self.instance):
            return True
        seen = self.store.instance_seen(record.owner)
        return seen is None or time.time() - seen > self.options.stale_seconds

    def _take(self, record: JobRecord, token: str | None) -> int:
        """Take a stored job over, conditional on the version read: of several instances taking the same job at
        once, the store lets exactly one write it; the others leave it."""
        previous = record.owner
        if token is not None:
            self.writer.adopt(record.id, token)
        try:
            return self._take_over(record, previous)
        except JobOwnershipLostError:
            with self._lock:
                self.table.live.pop(record.id, None)
            self.writer.forget(record.id)
            logger.info("job %s: another instance took it over first; leaving it", record.id)
            return 0

    def _take_over(self, record: JobRecord, previous: str | None) -> int:
        if record.attempts >= MAX_ATTEMPTS:
            with self._lock:
                self.table.live[record.id] = record
            self._finish(
                record,
                "failed",
                ErrorInfo(
                    type="JobInterrupted",
                    message=f"The job was interrupted {record.attempts} times while processing; "
                    "a page may be crashing the server.",
                    hint="Retry with a page selection that leaves out the page it stopped at.",
                ),
            )
            return 0

        def take(r: JobRecord) -> None:
            r.owner = self.instance
            r.status = "queued"
            for doc in r.documents:
                if doc.status == "processing":
                    doc.status = "queued"

        with self._lock:
            self.table.live[record.id] = record
        self._commit(record, take)
        with self._wake:
            self._queue.append(record.id)
            self.metrics.queued.set(len(self._queue))
            self.metrics.resumed.inc()
            self._wake.notify_all()
        logger.info(
            "job %s: taken over from %s; resumes with %d of %d pages done",
            record.id,
            previous or "nobody",
            record.progress().pages_done,
            len(record.pages),
        )
        return 1

    def _housekeeping(self) -> None:
        beat = min(10.0, self.options.stale_seconds / 3)
        next_sweep = 0.0
        next_takeover = time.monotonic() + self.options.stale_seconds / 2
        while not self._stopping.wait(beat):
            try:
                self.store.heartbeat(self.instance)
                now = time.monotonic()
                if not self.store.local and now >= next_takeover:
                    next_takeover = now + self.options.stale_seconds / 2
                    self.recover()
                if now >= next_sweep:
                    next_sweep = now + min(600.0, self.options.ttl_seconds / 4)
                    self.sweep()
            except Exception:  # housekeeping must never die; the next round retries
                logger.exception("job housekeeping failed; retrying in %.0f s", beat)

    def sweep(self, now: datetime | None = None, *, starting: bool = False) -> int:
        """Delete jobs finished more than the retention time ago, and what failed uploads left: staging folders
        and job folders that never got a job.json (seen without one for ``STAGING_KEPT`` seconds; at once on
        start-up with local storage, where no other process uploads). The number of jobs deleted."""
        cutoff = (now or utcnow()) - timedelta(seconds=self.options.ttl_seconds)
        local_start = starting and self.store.local
        staged = self.store.clean_staging(0.0 if local_start else STAGING_KEPT)
        if staged:
            logger.info("removed %d staging folder(s) of uploads that never finished", staged)
        deleted = 0
        orphans: dict[str, float] = {}
        for job_id in self.store.job_ids():
            with self._lock:
                if job_id in self.table.live:
                    continue
            try:
                record = self.store.load(job_id)
            except JobRecordUnreadableError as exc:
                age = self.store.record_age(job_id)
                if age is not None and age > self.options.ttl_seconds:
                    self.writer.delete(job_id)
                    self._unreadable.discard(job_id)
                    deleted += 1
                    logger.warning("job %s: unreadable job.json older than the retention time; removed", job_id)
                else:
                    self._skip_unreadable(exc)
                continue
            if record is None:
                seen = self._orphans.get(job_id, time.monotonic())
                if local_start or time.monotonic() - seen >= STAGING_KEPT:  # an upload that failed before its job
                    self.writer.delete(job_id)
                    logger.info("job folder %s had no job.json (an upload that failed); removed", job_id)
                else:
                    orphans[job_id] = seen
                continue
            if not record.finished or record.finished_at is None or record.finished_at > cutoff:
                continue
            with self._lock:
                self.table.finished.pop(job_id, None)
            self.writer.delete(job_id)
            deleted += 1
        self._orphans = orphans
        if deleted:
            logger.info("deleted %d job(s) finished more than %.0f s ago", deleted, self.options.ttl_seconds)
        return deleted

    # -- state changes -----------------------------------------------------------------------------------

    def _commit(self, record: JobRecord, change: Callable[[JobRecord], None], *, retire: bool = False) -> None:
        """Apply ``change`` durably: saved (as the version it will have) before anyone can see it. ``retire``: the
        job is finished, and moves to the finished list in the same step."""
        with self._lock:
            copy = record.model_copy(deep=True)
            version = (self.table.version(record.id) or 0) + 1
        change(copy)
        try:
            self.writer.save(copy, version)
        except JobOwnershipLostError:
            raise  # another instance has it: nothing of this change may be shown or written
        except Exception as exc:  # storage is failing: the job goes on in memory, the writer retries
            logger.warning("job %s: saving failed (%s); will retry", record.id, exc)
            self.writer.mark(record.id)
        evicted: list[str] = []
        with self.table.changing(record.id):
            change(record)
            if retire and not self.table.deleted(record.id):
                evicted = self.table.finish(record)
        for job_id in evicted:  # no longer held here: nothing of theirs is written again
            self.writer.forget(job_id)

    def _finish(self, record: JobRecord, status: JobStatus, error: ErrorInfo | None) -> None:
        finished_at = utcnow()

        def finish(r: JobRecord) -> None:
            r.status = status
            r.error = error
            r.finished_at = finished_at
            for doc in r.documents:
                if doc.status in ("queued", "processing"):
                    doc.status = "cancelled" if status == "cancelled" else doc.status
            for page in r.pages:
                page.rerun = None  # a re-reading that did not happen: the page keeps its reading
            if r.callback_url is not None:
                number = r.callback.delivery + 1 if r.callback is not None else 1
                r.callback = CallbackStatus(state="pending", delivery=number, at=finished_at)

        self._commit(record, finish, retire=True)
        self.metrics.jobs.labels(status=status).inc()
        progress = record.progress()
        logger.info(
            "job %s: %s (%d pages, %d failed)%s",
            record.id,
            status,
            progress.pages_total,
            progress.pages_failed,
            f": {error.message}" if error else "",
        )
        self._notify(record)

    # -- callbacks ---------------------------------------------------------------------------------------

    def _notify(self, record: JobRecord) -> None:
        """Hand the job's pending callback to the sender (never blocks)."""
        with self._lock:
            copy = record.model_copy(deep=True)
        callback, url = copy.callback, copy.callback_url
        if callback is None or url is None or callback.state != "pending":
            return
        if self.webhooks is None:
            why = "GNOSIS_WEBHOOK_SECRET is not set on this server any more, so callbacks are not sent"
            self._callback_result(
                copy.id, CallbackStatus(state="failed", delivery=callback.delivery, error=why, at=utcnow())
            )
            return
        body = callback_body(callback.delivery, copy.id, self._summary(copy))
        self.webhooks.send(copy.id, url, callback.delivery, body)

    def _callback_result(self, job_id: str, status: CallbackStatus) -> None:
        """A delivery ended: saved in the job, if this instance still holds it and the job has not ended since."""
        with self._lock:
            record = self.table.record(job_id)
            current = record.callback if record is not None else None
        if record is None or current is None or current.delivery != status.delivery or current.state != "pending":
            logger.info(
                "job %s: callback %d %s (not noted: the job is not held here)", job_id, status.delivery, status.state
            )
            return

        def note(r: JobRecord) -> None:
            r.callback = status

        try:
            self._commit(record, note)
        except JobOwnershipLostError:
            logger.info("job %s: another instance has it now; its callback outcome is not noted here", job_id)

    def _lost(self, job_id: str) -> None:
        """Another instance owns the job now: stop reading it and let it go from memory, writing nothing more."""
        with self._lock:
            record = self.table.live.pop(job_id, None)
            stop = self._running.get(job_id)
            if job_id in self._queue:
                self._queue.remove(job_id)
                self.metrics.queued.set(len(self._queue))
        if stop is not None:
            stop.trigger("lost")
        self.table.changed(job_id)
        if record is not None:
            logger.warning("job %s: another instance has taken it over; this one stops working on it", job_id)

    # -- admission and reading ---------------------------------------------------------------------------

    def _admit(self) -> None:
        while True:
            with self._wake:
                while not self._stopping.is_set() and (
                    not self._queue or len(self._running) >= self.options.max_running
                ):
                    self._wake.wait()
                if self._stopping.is_set():
                    return
                job_id = self._queue.popleft()
                self.metrics.queued.set(len(self._queue))
                record = self.table.record(job_id)
                if record is None:
                    continue
                stop = Stop()
                self._running[job_id] = stop
                thread = threading.Thread(
                    target=self._run_job, args=(record, stop), name=f"gnosis-job-{job_id[:8]}", daemon=True
                )
                self._readers[job_id] = thread
                self.metrics.running.set(len(self._running))
            thread.start()

    def _run_job(self, record: JobRecord, stop: Stop) -> None:
        job_id = record.id
        try:
            self._process(record, stop)
        except JobOwnershipLostError:
            self._lost(job_id)
        except Exception:
            logger.exception("job %s: unexpected failure", job_id)
            if not record.finished and stop.reason is None:
                self._finish(
                    record,
                    "failed",
                    ErrorInfo(type="InternalError", message="The server failed while processing the job."),
                )
        finally:
            with self._wake:
                self._running.pop(job_id, None)
                self._readers.pop(job_id, None)
                self.metrics.running.set(len(self._running))
                self._wake.notify_all()
            if stop.reason == "delete":
                self.writer.delete(job_id)

    def _lane(self, engine: Engine | StreamingEngine) -> _Lane:
        with self._lanes_lock:
            lane = self._lanes.get(id(engine))
            if lane is None:
                stream = streaming(engine, owned=False)
                capacity = self.options.max_inflight or stream.capacity
                lane = self._lanes[id(engine)] = _Lane(engine, stream, FairSlots(max(1, capacity)))
            return lane

    def _fallback(self) -> StreamingEngine | None:
        return self._lane(self.engines.get(FALLBACK_ENGINE)).stream

    def _process(self, record: JobRecord, stop: Stop) -> None:
        job_id = record.id
        started_at = record.started_at or utcnow()
        rereading = record.rereading

        def start(r: JobRecord) -> None:
            r.status = "processing"
            r.started_at = started_at
            r.attempts += 1
            r.error = None

        self._commit(record, start)
        started = time.monotonic()
        lane: _Lane | None = None
        if not rereading:  # a re-reading takes each page's engine as its pages come (a failure fails those pages)
            try:
                lane = self._lane(self.engines.get(record.options.engine))
            except GnosisError as exc:
                self._finish(record, "failed", _error(exc))
                return
            info = lane.stream.info
            with self.table.changing(job_id):
                record.engine = EngineUsed(
                    requested=record.options.engine,
                    name=info.name,
                    backend=info.backend,
                    model=info.model,
                    revision=info.revision,
                    profile=info.profile,
                    device=info.device,
                )
        try:
            for _ in range(3):  # re-reading: pages marked while this run had passed their document get a pass more
                for doc in record.documents:
                    if stop.reason is not None:
                        break
                    if doc.status not in ("done", "failed", "cancelled"):
                        self._document(record, doc, lane, stop)
                if stop.reason is not None or not rereading or not self._marked_left(record):
                    break
        except GnosisError as exc:  # the engine cannot run after all (e.g. its model went missing)
            if stop.reason is None:
                self._finish(record, "failed", _error(exc))
                return
        self._settle(record, stop.reason, started, rereading=rereading)

    def _marked_left(self, record: JobRecord) -> bool:
        """Pages still marked for re-reading whose document this run has passed: their documents go again."""
        with self.table.changing(record.id):
            left = {p.document for p in record.pages if p.rerun is not None}
            for doc in record.documents:
                if doc.index in left and doc.status in ("done", "failed"):
                    doc.status = "queued"
        return bool(left)

    def _conclude(self, record: JobRecord) -> None:
        """End the job by its documents: failed when every one failed, else done."""
        with self.table.changing(record.id):
            for doc in record.documents:
                if doc.status in ("queued", "processing"):
                    pages = record.document_pages(doc.index)
                    doc.status = "failed" if pages and all(p.status == "failed" for p in pages) else "done"
        docs_failed = [d for d in record.documents if d.status == "failed"]
        if docs_failed and len(docs_failed) == len(record.documents):
            first = docs_failed[0].error
            self._finish(record, "failed", first or ErrorInfo(type="DocumentError", message="Every document failed."))
        else:
            self._finish(record, "done", None)

    def _settle(self, record: JobRecord, reason: StopReason | None, started: float, *, rereading: bool = False) -> None:
        if reason in ("delete", "lost"):
            return
        if reason == "shutdown":
            self._commit(record, _requeued)
            logger.info(
                "job %s: stopped by shutdown with %d pages done; it resumes on the next start",
                record.id,
                record.progress().pages_done,
            )
            return
        if reason == "cancel" and not rereading:
            self._finish(record, "cancelled", ErrorInfo(type="Cancelled", message="Cancelled while processing."))
            return
        self._conclude(record)  # a cancelled re-reading ends the job as it was: its pages keep their readings
        if not rereading:
            self.metrics.job_seconds.observe(time.monotonic() - started)

    def _document(self, record: JobRecord, doc: DocumentEntry, lane: _Lane | None, stop: Stop) -> None:
        entries = {p.page: p for p in record.document_pages(doc.index)}
        rereading = lane is None
        with self._lock:
            if rereading:  # the marked pages, by the engine each asked for
                groups = _by_engine((p for p in entries.values() if p.rerun is not None), record.options.engine)
            else:
                pending = [n for n, p in entries.items() if p.status == "pending"]
                groups = {record.options.engine: pending} if pending else {}
        if not groups:
            with self.table.changing(record.id):
                doc.status = "done"
            return
        with self.table.changing(record.id):
            doc.status = "processing"
        self.writer.mark(record.id)
        policy = ReadPolicy(
            text_layer="never" if rereading else record.options.text_layer,  # read again: by the engine, always
            loop_guard=self.options.loop_guard,
            retries=self.options.loop_retries,
            grace=self.options.shutdown_grace,
        )
        try:
            with (
                self.store.input_file(record.id, doc.index) as path,
                open_document(path, limits=self.options.limits, name=doc.name) as document,
            ):
                for name, numbers in groups.items():
                    if stop.reason is not None:
                        break
                    self._read(record, entries, document.pages(numbers), name=name, lane=lane, policy=policy, stop=stop)
        except FileNotFoundError:
            self._fail_document(
                record,
                doc,
                ErrorInfo(
                    type="InputLostError",
                    message=f"The uploaded file {doc.name} is gone from the job storage "
                    "(local storage on an instance that was replaced loses it).",
                    hint="Upload it again; set GNOSIS_STORAGE to a bucket so jobs survive instance restarts.",
                ),
            )
        except DocumentError as exc:
            self._fail_document(record, doc, _error(exc))
        if stop.reason is not None:
            return
        with self.table.changing(record.id):
            if doc.status == "processing":
                doc.status = "failed" if all(p.status == "failed" for p in entries.values()) else "done"
                if doc.status == "failed":
                    doc.error = ErrorInfo(type="PagesFailed", message="Every page of this document failed.")
        self.writer.mark(record.id)

    def _read(
        self,
        record: JobRecord,
        entries: dict[int, PageEntry],
        pages: Iterator[Page | PageError],
        *,
        name: str,
        lane: _Lane | None,
        policy: ReadPolicy,
        stop: Stop,
    ) -> None:
        """Read pages with ``lane``, or (re-reading) with the engine ``name``; a re-reading's engine that cannot
        run fails its pages, saying why, instead of the job."""
        try:
            used = lane or self._lane(self.engines.get(name))
            read_pages(
                pages,
                used.stream,
                sink=JobSink(self, record, entries, used.stream.info.name),
                slots=used.slots,
                owner=f"job {record.id}",
                policy=policy,
                stop=stop,
                fallback=self._fallback,
            )
        except GnosisError as exc:
            if lane is not None or isinstance(exc, DocumentError):
                raise
            sink = JobSink(self, record, entries, name)
            for entry in entries.values():
                if entry.rerun is not None and _by_engine([entry], record.options.engine).get(name):
                    sink.done(PageResult(entry.page, "", 0.0, error=f"engine {name} could not run: {exc.message}"))

    def _fail_document(self, record: JobRecord, doc: DocumentEntry, error: ErrorInfo) -> None:
        if record.rereading:  # the marked pages get this failure as their new reading; the document stays as it was
            sink = JobSink(self, record, {p.page: p for p in record.document_pages(doc.index)}, "")
            for page in record.document_pages(doc.index):
                if page.rerun is not None:
                    sink.done(PageResult(page.page, "", 0.0, error=error.message))
            logger.info("job %s: document %d could not be read again: %s", record.id, doc.index, error.message)
            return
        with self.table.changing(record.id):
            doc.status = "failed"
            doc.error = error
            for page in record.document_pages(doc.index):
                if page.status == "pending":
                    page.status = "failed"
                    page.error = error.message
        logger.info("job %s: document %d failed: %s", record.id, doc.index, error.message)


def _check_retry(record: JobRecord, page: PageEntry) -> None:
    where = f"Page {page.n} of job {record.id}"
    if record.status == "cancelled":
        raise JobBusyError(
            f"Job {record.id} was cancelled: its pages are not read again.",
            hint="Upload the document again to read it whole.",
        )
    if page.rerun is not None:
        raise JobBusyError(f"{where} is being read again already.", hint="Its next `page` event has the new reading.")
    if page.status == "pending":
        raise JobBusyError(f"{where} has not been read yet.", hint="Only finished pages are read again.")
    if len(page.history) + 1 >= READINGS_KEPT:
        raise JobBusyError(
            f"{where} has been read {len(page.history) + 1} times, the most a page keeps.",
            hint="Upload that page again as a new job to read it once more.",
        )


def _by_engine(pages: Iterable[PageEntry], default: str) -> dict[str, list[int]]:
    """Page numbers (inside their document) grouped by the engine each re-reading asked for."""
    groups: dict[str, list[int]] = {}
    for page in pages:
        name = default if page.rerun in (None, "auto") else str(page.rerun)
        groups.setdefault(name, []).append(page.page)
    return groups


def _summary(record: JobRecord) -> dict[str, object]:
    """A callback's job summary when the runner is used without the API (the API sends its own job view)."""
    return {
        "id": record.id,
        "status": record.status,
        "error": record.error.model_dump() if record.error else None,
        "created_at": record.created_at.isoformat(),
        "started_at": record.started_at.isoformat() if record.started_at else None,
        "finished_at": record.finished_at.isoformat() if record.finished_at else None,
        "progress": record.progress().model_dump(),
    }


def _requeued(record: JobRecord) -> None:
    record.status = "queued"
    for doc in record.documents:
        if doc.status == "processing":
            doc.status = "queued"
