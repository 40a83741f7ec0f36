"""The service's job runner: a queue and ONE worker thread, so one device never runs two jobs at once.

No FastAPI here. The API submits a JobRecord whose inputs are already in the store, reads snapshots of jobs,
cancels and deletes them, and watches a job for changes (an ``asyncio.Event`` set from the worker thread).

Durability: the record is written to the store at every state change and, while pages complete, at most every
``save_interval`` seconds; page images are written as pages render. A job that a restart interrupted is taken
over on start-up (local storage: every unfinished job; shared storage: those whose owner's heartbeat is older
than ``GNOSIS_JOB_STALE_SECONDS``, checked again periodically) and resumes from its first unfinished page. A job
interrupted ``MAX_ATTEMPTS`` times (a page that kills the process, say) ends as failed with that reason. On
shutdown the running job stops at its next page and goes back to ``queued`` for whoever starts next.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from gnosis_ocr.documents.model import DocumentLimits, Page
from gnosis_ocr.engines.base import Engine
from gnosis_ocr.errors import (
    DocumentError,
    GnosisError,
    JobFinishedError,
    JobNotFoundError,
    QueueFullError,
)
from gnosis_ocr.jobs.metrics import JobMetrics
from gnosis_ocr.jobs.pipeline import OcrOptions, ocr_document
from gnosis_ocr.jobs.record import DocumentEntry, EngineUsed, ErrorInfo, JobRecord, PageEntry, utcnow
from gnosis_ocr.jobs.results import PageResult
from gnosis_ocr.jobs.store import JobStore

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
FINISHED_KEPT = 256  # finished jobs kept in memory (the store has them all)


class EngineProvider(Protocol):
    def get(self, name: str) -> Engine:
        """A loaded engine for ``name`` (``auto``: the server's default); blocks while it loads."""
        ...


class _Stop(BaseException):
    """Raised inside the pipeline to stop a job at the next page (cancel, delete or shutdown)."""


@dataclass(frozen=True)
class RunnerOptions:
    limits: DocumentLimits
    ttl_seconds: float = 24 * 3600.0
    stale_seconds: float = 60.0
    max_queued: int = 100
    save_interval: float = 0.5


def _error(exc: GnosisError) -> ErrorInfo:
    return ErrorInfo(type=type(exc).__name__, message=exc.message, hint=exc.hint)


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        engines: EngineProvider,
        options: RunnerOptions,
        *,
        metrics: JobMetrics | None = None,
        instance: str | None = None,
    ) -> None:
        self.store = store
        self.engines = engines
        self.options = options
        self.metrics = metrics or JobMetrics()
        self.instance = instance or f"{int(time.time()):x}-{secrets.token_hex(4)}"
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[str] = deque()
        self._live: dict[str, JobRecord] = {}  # jobs this instance owns (queued or running)
        self._finished: OrderedDict[str, JobRecord] = OrderedDict()
        self._running: str | None = None
        self._stop_job: dict[str, str] = {}  # job id -> "cancel" | "delete"
        self._watchers: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._versions: dict[str, int] = {}  # bumped by every change of a job held in memory
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._images = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gnosis-page-images")

    def __repr__(self) -> str:
        return f"JobRunner({self.store!r}, instance={self.instance!r})"

    # -- life --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Take over unfinished jobs, then start the worker and the housekeeping threads."""
        self.store.heartbeat(self.instance)
        self.recover()
        for name, target in (("gnosis-job-worker", self._work), ("gnosis-job-housekeeping", self._housekeeping)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self, timeout: float = 5.0) -> None:
        """Stop: the running job stops at its next page and is saved as queued; queued jobs stay queued."""
        self._stopping.set()
        with self._wake:
            if self._running is not None:
                self._stop_job.setdefault(self._running, "shutdown")
            self._wake.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._images.shutdown(wait=True)
        with contextlib.suppress(Exception):
            self.store.forget_instance(self.instance)

    # -- reading -----------------------------------------------------------------------------------------

    def snapshot(self, job_id: str) -> JobRecord:
        """A copy of the job as it stands (this instance's memory first, then the store)."""
        held = self.held(job_id)
        if held is not None:
            return held[1]
        stored = self.store.load(job_id)
        if stored is None:
            raise JobNotFoundError(
                f"No job {job_id[:40]!r}: it never existed, was deleted, or passed its retention time.",
                hint="Upload the documents again with POST /api/v1/jobs.",
            )
        return stored

    def version(self, job_id: str) -> int | None:
        """The job's change counter while this instance holds it in memory (None otherwise): equal versions,
        equal content, so readers can share one copy and one serialisation per version."""
        with self._lock:
            if self._stop_job.get(job_id) == "delete" or (job_id not in self._live and job_id not in self._finished):
                return None
            return self._versions.get(job_id, 0)

    def held(self, job_id: str) -> tuple[int, JobRecord] | None:
        """(version, a copy) of a job held in memory, None for others. The copy shares the page entries' values
        (strings, numbers), not the entries: the worker replaces nothing inside them while readers hold them."""
        with self._lock:
            if self._stop_job.get(job_id) == "delete":
                return None
            record = self._live.get(job_id) or self._finished.get(job_id)
            if record is None:
                return None
            copy = record.model_copy(
                update={
                    "documents": [d.model_copy() for d in record.documents],
                    "pages": [p.model_copy() for p in record.pages],
                    "engine": record.engine.model_copy() if record.engine else None,
                }
            )
            return self._versions.get(job_id, 0), copy

    def owns(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._live

    # -- watching ----------------------------------------------------------------------------------------

    def watch(self, job_id: str) -> asyncio.Event:
        """An event set (on the caller's loop) whenever the job changes; call ``unwatch`` when done."""
        event = asyncio.Event()
        with self._lock:
            self._watchers.setdefault(job_id, set()).add((asyncio.get_running_loop(), event))
        return event

    def unwatch(self, job_id: str, event: asyncio.Event) -> None:
        with self._lock:
            watchers = self._watchers.get(job_id)
            if watchers is None:
                return
            for item in [w for w in watchers if w[1] is event]:
                watchers.discard(item)
            if not watchers:
                del self._watchers[job_id]

    def _notify(self, job_id: str) -> None:
        """Every change to a job held in memory ends here: its version moves on and its watchers wake."""
        with self._lock:
            if job_id in self._live or job_id in self._finished:
                self._versions[job_id] = self._versions.get(job_id, 0) + 1
            else:
                self._versions.pop(job_id, None)
            watchers = list(self._watchers.get(job_id, ()))
        for loop, event in watchers:
            with contextlib.suppress(RuntimeError):  # the loop closed
                loop.call_soon_threadsafe(event.set)

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
        with self._lock:
            self.check_capacity()
            record.owner = self.instance
            self.store.save(record)
            self._live[record.id] = record
            self._queue.append(record.id)
            self.metrics.submitted.inc()
            self.metrics.queued.set(len(self._queue))
            self._wake.notify_all()
            return record.model_copy(deep=True)

    def cancel(self, job_id: str) -> JobRecord:
        with self._lock:
            record = self._live.get(job_id)
            if record is None:
                stored = self.snapshot(job_id)  # 404 when unknown
                if stored.finished:
                    raise JobFinishedError(f"Job {job_id} has already finished ({stored.status}).")
                raise JobFinishedError(
                    f"Job {job_id} runs on another instance ({stored.owner}); cancel it there.",
                    hint="Retry: requests reach the instances in turn.",
                )
            if record.id == self._running:
                self._stop_job.setdefault(job_id, "cancel")
                return record.model_copy(deep=True)
            self._queue.remove(job_id)
            self.metrics.queued.set(len(self._queue))
            self._finish(record, "cancelled", ErrorInfo(type="Cancelled", message="Cancelled before it started."))
            return record.model_copy(deep=True)

    def delete(self, job_id: str) -> None:
        with self._lock:
            record = self._live.get(job_id)
            if record is not None and record.id == self._running:
                self._stop_job[job_id] = "delete"  # the worker deletes it once it has stopped
                return
            if record is not None:
                self._queue.remove(job_id)
                self.metrics.queued.set(len(self._queue))
                del self._live[job_id]
            elif job_id not in self._finished:
                self.snapshot(job_id)  # 404 when unknown
            self._finished.pop(job_id, None)
        self.store.delete(job_id)
        self._notify(job_id)

    # -- recovery and housekeeping ------------------------------------------------------------------------

    def recover(self) -> int:
        """Take over unfinished jobs this instance may run; the number taken."""
        taken = 0
        for job_id in self.store.job_ids():
            with self._lock:
                if job_id in self._live:
                    continue
            record = self.store.load(job_id)
            if record is None or record.finished or not self._may_take(record):
                continue
            taken += self._take(record)
        return taken

    def _may_take(self, record: JobRecord) -> bool:
        if self.store.local or record.owner in (None, self.instance):
            return True
        seen = self.store.instance_seen(record.owner)
        return seen is None or time.time() - seen > self.options.stale_seconds

    def _take(self, record: JobRecord) -> int:
        previous = record.owner
        with self._lock:
            if record.attempts >= MAX_ATTEMPTS:
                self._live[record.id] = record
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
            record.owner = self.instance
            record.status = "queued"
            for doc in record.documents:
                if doc.status == "processing":
                    doc.status = "queued"
            self.store.save(record)
            self._live[record.id] = record
            self._queue.append(record.id)
            self.metrics.queued.set(len(self._queue))
            self.metrics.resumed.inc()
            self._wake.notify_all()
        self._notify(record.id)
        done = record.progress().pages_done
        logger.info(
            "job %s: taken over from %s; resumes with %d of %d pages done",
            record.id,
            previous or "nobody",
            done,
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

    def sweep(self, now: datetime | None = None) -> int:
        """Delete jobs finished more than the retention time ago; the number deleted."""
        cutoff = (now or utcnow()) - timedelta(seconds=self.options.ttl_seconds)
        deleted = 0
        for job_id in self.store.job_ids():
            with self._lock:
                if job_id in self._live:
                    continue
            record = self.store.load(job_id)
            if record is None or not record.finished or record.finished_at is None or record.finished_at > cutoff:
                continue
            with self._lock:
                self._finished.pop(job_id, None)
            self.store.delete(job_id)
            deleted += 1
        if deleted:
            logger.info("deleted %d job(s) finished more than %.0f s ago", deleted, self.options.ttl_seconds)
        return deleted

    # -- the worker --------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopping.is_set():
                    self._wake.wait()
                if self._stopping.is_set():
                    return
                job_id = self._queue.popleft()
                self.metrics.queued.set(len(self._queue))
                record = self._live.get(job_id)
                if record is None:
                    continue
                self._running = job_id
            self.metrics.running.set(1)
            try:
                self._process(record)
            except Exception:
                logger.exception("job %s: unexpected failure", job_id)
                with self._lock:
                    if not record.finished:
                        self._finish(
                            record,
                            "failed",
                            ErrorInfo(type="InternalError", message="The server failed while processing the job."),
                        )
            finally:
                self.metrics.running.set(0)
                with self._lock:
                    self._running = None
                    stop = self._stop_job.pop(job_id, None)
                if stop == "delete":
                    self.delete(job_id)

    def _process(self, record: JobRecord) -> None:
        job_id = record.id
        with self._lock:
            record.status = "processing"
            record.started_at = record.started_at or utcnow()
            record.attempts += 1
            record.error = None
            self.store.save(record)
        self._notify(job_id)
        started = time.monotonic()
        try:
            engine = self.engines.get(record.options.engine)
        except GnosisError as exc:
            with self._lock:
                self._finish(record, "failed", _error(exc))
            return
        info = engine.info
        with self._lock:
            record.engine = EngineUsed(
                requested=record.options.engine,
                name=info.name,
                model=info.model,
                revision=info.revision,
                device=info.device,
            )
        self._notify(job_id)
        saver = _Saver(self, record)
        try:
            for doc in record.documents:
                if doc.status in ("done", "failed", "cancelled"):
                    continue
                self._document(record, doc, engine, saver)
        except _Stop:
            with self._lock:
                reason = self._stop_job.get(job_id, "shutdown")
                if reason == "shutdown":
                    self._requeue_on_shutdown(record)
                else:
                    self._finish(
                        record, "cancelled", ErrorInfo(type="Cancelled", message="Cancelled while processing.")
                    )
            return
        with self._lock:
            docs_failed = [d for d in record.documents if d.status == "failed"]
            if docs_failed and len(docs_failed) == len(record.documents):
                first = docs_failed[0].error
                self._finish(
                    record, "failed", first or ErrorInfo(type="DocumentError", message="Every document failed.")
                )
            else:
                self._finish(record, "done", None)
        self.metrics.job_seconds.observe(time.monotonic() - started)

    def _document(self, record: JobRecord, doc: DocumentEntry, engine: Engine, saver: _Saver) -> None:
        entries = {p.page: p for p in record.document_pages(doc.index)}
        pending = [n for n, p in entries.items() if p.status == "pending"]
        if not pending:
            with self._lock:
                doc.status = "done"
            return
        with self._lock:
            doc.status = "processing"
        saver.save(force=True)
        images: list[Future[None]] = []

        def rendered(page: Page) -> None:
            self._check_stop(record.id)
            entry = entries.get(page.number)
            if entry is not None:
                images.append(self._images.submit(self._store_image, record, entry, page))

        progress = _PageProgress(self, record, entries, saver, engine.info.name)
        options = OcrOptions(
            pages=",".join(str(n) for n in pending), text_layer=record.options.text_layer, limits=self.options.limits
        )
        try:
            with self.store.input_file(record.id, doc.index) as path:
                ocr_document(path, engine, name=doc.name, options=options, progress=progress, on_render=rendered)
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
        finally:
            for future in images:
                with contextlib.suppress(Exception):
                    future.result()
        with self._lock:
            if doc.status == "processing":
                doc.status = "failed" if all(p.status == "failed" for p in entries.values()) else "done"
                if doc.status == "failed":
                    doc.error = ErrorInfo(type="PagesFailed", message="Every page of this document failed.")
        saver.save(force=True)

    def _store_image(self, record: JobRecord, entry: PageEntry, page: Page) -> None:
        buffer = io.BytesIO()
        page.image.save(buffer, format="PNG", compress_level=1)
        try:
            self.store.put_image(record.id, entry.n, buffer.getvalue())
        except Exception as exc:  # a missing image must not fail the page
            logger.warning("job %s page %d: image not stored: %s", record.id, entry.n, exc)
            return
        with self._lock:
            entry.image = True
        self._notify(record.id)

    def _fail_document(self, record: JobRecord, doc: DocumentEntry, error: ErrorInfo) -> None:
        with self._lock:
            doc.status = "failed"
            doc.error = error
            for page in record.document_pages(doc.index):
                if page.status == "pending":
                    page.status = "failed"
                    page.error = error.message
        logger.info("job %s: document %d failed: %s", record.id, doc.index, error.message)

    def _check_stop(self, job_id: str) -> None:
        if self._stopping.is_set():
            raise _Stop
        with self._lock:
            if job_id in self._stop_job:
                raise _Stop

    def _requeue_on_shutdown(self, record: JobRecord) -> None:
        record.status = "queued"
        for doc in record.documents:
            if doc.status == "processing":
                doc.status = "queued"
        self.store.save(record)
        logger.info(
            "job %s: stopped by shutdown with %d pages done; it resumes on the next start",
            record.id,
            record.progress().pages_done,
        )
        self._notify(record.id)

    def _finish(self, record: JobRecord, status: str, error: ErrorInfo | None) -> None:
        """Under the lock: mark finished, save, move to the finished list, count, notify."""
        record.status = status  # type: ignore[assignment]
        record.error = error
        record.finished_at = utcnow()
        for doc in record.documents:
            if doc.status in ("queued", "processing"):
                doc.status = "cancelled" if status == "cancelled" else doc.status
        self.store.save(record)
        self._live.pop(record.id, None)
        self._finished[record.id] = record
        while len(self._finished) > FINISHED_KEPT:
            evicted, _ = self._finished.popitem(last=False)
            self._versions.pop(evicted, None)
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
        self._notify(record.id)


class _Saver:
    """Writes the record at most every ``save_interval`` seconds while pages complete (always when forced)."""

    def __init__(self, runner: JobRunner, record: JobRecord) -> None:
        self._runner = runner
        self._record = record
        self._last = 0.0

    def save(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._runner.options.save_interval:
            return
        self._last = now
        with self._runner._lock:
            self._runner.store.save(self._record)
        self._runner._notify(self._record.id)


class _PageProgress:
    def __init__(
        self, runner: JobRunner, record: JobRecord, entries: dict[int, PageEntry], saver: _Saver, engine: str
    ) -> None:
        self._runner = runner
        self._record = record
        self._entries = entries
        self._saver = saver
        self._engine = engine

    def document_started(self, name: str, pages: int) -> None:
        self._runner._check_stop(self._record.id)

    def page_done(self, name: str, page: PageResult) -> None:
        entry = self._entries.get(page.number)
        if entry is None:
            return
        with self._runner._lock:
            entry.status = "done" if page.ok else "failed"
            entry.markdown = page.markdown
            entry.source = page.source
            entry.seconds = round(page.seconds, 3)
            entry.error = page.error
            entry.width, entry.height = page.width, page.height
        metrics = self._runner.metrics
        metrics.pages.labels(status=entry.status, source=page.source).inc()
        if page.source == "ocr":
            metrics.page_seconds.labels(engine=self._engine).observe(page.seconds)
        self._saver.save()
        self._runner._notify(self._record.id)
        self._runner._check_stop(self._record.id)
