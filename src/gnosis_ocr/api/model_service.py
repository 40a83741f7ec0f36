"""The served model's life in the service: resolved at start-up in the background, warmed and verified on request.

No FastAPI here. Routes read ``readiness()`` and call ``start_warm``, ``verify`` and ``status``; the jobs runner
takes ``resolved`` (the proven-complete snapshot) to load its engine.

Start-up follows GNOSIS_CACHE_MODE through ``ModelCache.resolve``: a complete snapshot is a hit and the process
goes offline for the hub; ``auto`` warms a missing one, with progress; ``offline`` leaves the service not ready,
with the message that names the fix. One background operation (the start-up resolve, a warm or a repair) runs at
a time, and never together with a full verify. Readiness is "resolved, and no check since has found a fault in
the resolved snapshot".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from gnosis_ocr.api.errors import ConflictError, UnavailableError
from gnosis_ocr.errors import CacheReadOnlyError, GnosisError
from gnosis_ocr.modelcache import ModelCache, ResolvedModel, SnapshotReport
from gnosis_ocr.modelcache.mounts import writable
from gnosis_ocr.settings import CacheMode

logger = logging.getLogger(__name__)

WarmKind = Literal["startup", "warm", "repair"]


class Stopping(BaseException):
    """Raised inside a running warm or verify once the service stops.

    A BaseException on purpose: the download path retries on ``HubError`` and wraps ``Exception``; neither may
    mistake a shutdown for a network failure and start backing off.
    """


@dataclass(frozen=True)
class WarmState:
    """The current or last background operation."""

    running: bool = False
    kind: WarmKind | None = None
    revision: str | None = None
    bytes_done: int = 0
    bytes_total: int = 0
    error: str | None = None
    started_at: float | None = None  # epoch seconds
    finished_at: float | None = None


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str
    resolved: ResolvedModel | None
    report: SnapshotReport | None  # last known state of the configured revision; None before the first check
    warm: WarmState


class _Progress:
    """Bytes done of the running operation, advanced from the download or hashing threads."""

    def __init__(self, stopping: threading.Event) -> None:
        self._stopping = stopping
        self._lock = threading.Lock()
        self._done = 0
        self._total = 0

    def start(self, total_bytes: int, description: str) -> None:
        with self._lock:
            self._total = total_bytes
            self._done = 0

    def advance(self, nbytes: int) -> None:
        if self._stopping.is_set():
            raise Stopping
        with self._lock:
            self._done += nbytes

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self._done, self._total


class ModelService:
    def __init__(self, cache: ModelCache, *, model: str, revision: str, mode: CacheMode) -> None:
        self.cache = cache
        self.model = model
        self.revision = revision
        self.mode = mode
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress: _Progress | None = None
        self._warm = WarmState()
        self._verifying = False
        self._resolved: ResolvedModel | None = None
        self._report: SnapshotReport | None = None
        self._broken: SnapshotReport | None = None  # a check found faults in the resolved snapshot
        self.started = False  # start() was called: the default engine needs the model

    def __repr__(self) -> str:
        return f"ModelService({self.model!r}@{self.revision!r}, mode={self.mode!r})"

    # -- reading -----------------------------------------------------------------------------------------

    @property
    def resolved(self) -> ResolvedModel | None:
        with self._lock:
            return self._resolved

    def warm_state(self) -> WarmState:
        with self._lock:
            state, progress = self._warm, self._progress
        if state.running and progress is not None:
            done, total = progress.counts()
            state = replace(state, bytes_done=done, bytes_total=total)
        return state

    def readiness(self) -> Readiness:
        warm = self.warm_state()
        with self._lock:
            resolved, report, broken = self._resolved, self._report, self._broken
        name = f"{self.model}@{self.revision}"
        if self._stopping.is_set():
            return Readiness(False, "the service is shutting down", resolved, report, warm)
        if resolved is not None and broken is None:
            how = "complete in the cache" if resolved.hit else "warmed into the cache"
            reason = f"{name} (commit {resolved.commit[:7]}) is resolved: {how}; it loads with no network"
            return Readiness(True, reason, resolved, report, warm)
        if broken is not None:
            reason = f"{broken.summary()}. POST /api/v1/cache/warm fetches the bad files again."
        elif warm.running:
            reason = self._running_reason(name, warm)
        elif warm.error is not None:
            reason = warm.error
        else:
            reason = f"starting: checking the cache for {name}"
        return Readiness(False, reason, resolved, report, warm)

    def _running_reason(self, name: str, warm: WarmState) -> str:
        if warm.kind == "startup" and warm.bytes_total == 0:
            return f"checking the cache for {name} in {self.cache.root}"
        what = "repairing" if warm.kind == "repair" else "warming"
        return (
            f"{what} {self.model}@{warm.revision} into {self.cache.root}: {warm.bytes_done} of {warm.bytes_total} "
            f"bytes (GNOSIS_CACHE_MODE={self.mode})"
        )

    def status(self, revision: str | None = None) -> SnapshotReport:
        """The fast check (names and sizes) of the model at ``revision`` (default: the configured one)."""
        report = self.cache.status(self.model, revision or self.revision)
        self._observe(report)
        return report

    def verify(self, revision: str | None = None) -> SnapshotReport:
        """The full check: sha256 of every file against the manifest. Blocks; callers run it in a thread."""
        with self._lock:
            if self._stopping.is_set():
                raise UnavailableError("The service is shutting down.")
            if self._warm.running:
                raise ConflictError(
                    f"A {self._warm.kind} of {self.model}@{self._warm.revision} is running; files are still changing.",
                    hint="Verify when it has finished (GET /api/v1/cache shows its progress).",
                )
            if self._verifying:
                raise ConflictError("A full verify is already running.", hint="Wait for its response.")
            self._verifying = True
        try:
            report = self.cache.status(self.model, revision or self.revision, full=True, on_bytes=self._check_stopping)
        except Stopping:
            raise UnavailableError("The service is shutting down; the verify was stopped.") from None
        finally:
            with self._lock:
                self._verifying = False
        self._observe(report)
        if report.complete:
            logger.info("full verify of %s@%s (%s): ok", self.model, report.revision, report.commit)
        else:
            logger.warning("full verify: %s", report.summary())
        return report

    def _check_stopping(self, _nbytes: int) -> None:
        if self._stopping.is_set():
            raise Stopping

    def _observe(self, report: SnapshotReport) -> None:
        """Remember the latest state; a fault in the resolved snapshot makes the service not ready."""
        with self._lock:
            if report.revision == self.revision:
                self._report = report
            resolved = self._resolved
            if resolved is None or report.commit != resolved.commit:
                return
            if not report.complete:
                self._broken = report
            elif report.check == "full" or (self._broken is not None and self._broken.check == "fast"):
                # a fast check cannot clear what a full check found (sizes match, hashes do not)
                self._broken = None

    # -- background work ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Resolve the configured model in a background thread, as GNOSIS_CACHE_MODE says; returns at once."""
        self.started = True
        self._launch("startup", self.revision, self._startup)

    def _startup(self, progress: _Progress) -> None:
        report = self.cache.status(self.model, self.revision)
        self._observe(report)
        logger.info(
            "model %s@%s is %s in %s (cache mode %s)",
            self.model,
            self.revision,
            report.state,
            self.cache.root,
            self.mode,
        )
        resolved = self.cache.resolve(self.model, self.revision, mode=self.mode, progress=progress)
        with self._lock:
            self._resolved = resolved
        if not resolved.hit or resolved.commit != report.commit:
            self._observe(self.cache.status(self.model, self.revision))
        logger.info(
            "model %s@%s resolved to commit %s (%s) in %.2f s; hub access is now off",
            self.model,
            self.revision,
            resolved.commit,
            "cache hit" if resolved.hit else "warmed",
            resolved.check_seconds,
        )

    def start_warm(self, revision: str | None = None, *, refresh: bool = False, repair: bool = False) -> WarmState:
        """Start downloading what is missing (``repair``: re-hash and re-fetch bad files) in the background.

        A warm of the configured revision while the resolved snapshot is known to be bad becomes a repair.
        """
        if self.mode == "offline":
            raise ConflictError(
                f"This server never downloads (GNOSIS_CACHE_MODE=offline), so it cannot warm {self.model}.",
                hint=f"Run `gnosis-ocr cache warm {self.model}` where the network is reachable (or fill the bucket "
                "with `gnosis-ocr cache push`), then restart; or serve with GNOSIS_CACHE_MODE=auto.",
            )
        if self.cache.guard.strict:
            raise ConflictError(
                "The network guard is strict (GNOSIS_NETWORK_GUARD=strict): this process refuses the model hub "
                "once the model is resolved.",
                hint="Warm from the CLI or a CI job (`gnosis-ocr cache warm`), "
                "or serve with GNOSIS_NETWORK_GUARD=count.",
            )
        if not writable(self.cache.root):
            raise CacheReadOnlyError(
                f"The cache at {self.cache.root} is read-only here; warming has to write to it.",
                hint="Warm where the bucket is mounted writable (e.g. a Cloud Run job), or from CI with "
                "`gnosis-ocr cache push`.",
            )
        rev = revision or self.revision
        with self._lock:
            broken = self._broken is not None and rev == self.revision
        kind: WarmKind = "repair" if repair or broken else "warm"
        return self._launch(kind, rev, lambda progress: self._warm_work(kind, rev, refresh, progress))

    def _warm_work(self, kind: WarmKind, revision: str, refresh: bool, progress: _Progress) -> None:
        if kind == "repair":
            result = self.cache.repair(self.model, revision, progress=progress)
        else:
            result = self.cache.warm(self.model, revision, refresh=refresh, progress=progress)
        logger.info(
            "%s of %s@%s done: commit %s, %d file(s) and %d bytes downloaded, %d kept, in %.1f s",
            kind,
            self.model,
            revision,
            result.commit,
            result.downloaded_files,
            result.downloaded_bytes,
            result.reused_files,
            result.seconds,
        )
        if revision != self.revision:
            return
        if kind == "repair":
            with self._lock:
                self._broken = None  # every file was re-hashed and the bad ones fetched again
        self._observe(self.cache.status(self.model, revision))
        with self._lock:
            resolved = self._resolved
        if resolved is None:
            resolved = self.cache.resolve(self.model, revision, mode="auto", progress=progress)
            with self._lock:
                self._resolved = resolved
            logger.info("model %s@%s resolved to commit %s after the warm", self.model, revision, resolved.commit)
        elif resolved.commit != result.commit:
            logger.info(
                "%s@%s: commit %s is now cached; this process serves %s until it restarts",
                self.model,
                revision,
                result.commit,
                resolved.commit,
            )

    def _launch(self, kind: WarmKind, revision: str, work: Callable[[_Progress], None]) -> WarmState:
        with self._lock:
            if self._stopping.is_set():
                raise UnavailableError("The service is shutting down.")
            if self._warm.running:
                raise ConflictError(
                    f"A {self._warm.kind} of {self.model}@{self._warm.revision} is already running.",
                    hint="One at a time: GET /api/v1/cache shows its progress.",
                )
            if self._verifying:
                raise ConflictError("A full verify is running.", hint="Warm when it has answered.")
            progress = _Progress(self._stopping)
            self._progress = progress
            self._warm = WarmState(running=True, kind=kind, revision=revision, started_at=time.time())
            thread = threading.Thread(
                target=self._run, args=(kind, revision, work, progress), name=f"gnosis-{kind}", daemon=True
            )
            self._thread = thread
        thread.start()
        return self.warm_state()

    def _run(self, kind: WarmKind, revision: str, work: Callable[[_Progress], None], progress: _Progress) -> None:
        error: str | None = None
        try:
            work(progress)
        except Stopping:
            error = "stopped: the service shut down first"
            logger.info("%s of %s@%s stopped by shutdown", kind, self.model, revision)
        except GnosisError as exc:
            error = str(exc)
            logger.warning("%s of %s@%s failed: %s", kind, self.model, revision, exc)
        except Exception as exc:
            error = f"unexpected {type(exc).__name__} during {kind}"
            logger.exception(
                "%s of %s@%s failed unexpectedly: %s: %s", kind, self.model, revision, type(exc).__name__, exc
            )
        finally:
            done, total = progress.counts()
            with self._lock:
                self._warm = replace(
                    self._warm, running=False, bytes_done=done, bytes_total=total, error=error, finished_at=time.time()
                )
                self._progress = None

    def close(self, timeout: float = 5.0) -> None:
        """Stop: a running warm or verify gives up at its next chunk. Waits at most ``timeout`` seconds."""
        self._stopping.set()
        with self._lock:
            thread = self._thread
        if thread is None:
            return
        thread.join(timeout)
        if thread.is_alive():
            logger.warning(
                "%s still running %.0f s after shutdown began (waiting for another writer?); leaving it. Readers "
                "ignore its temp files and `gnosis-ocr cache prune` removes them.",
                thread.name,
                timeout,
            )
