"""Jobs in memory: the records this instance holds, their versions and their watchers, under one short lock.

Every change to a held job goes through ``changed``: its version moves on and its watchers wake (an
``asyncio.Event`` set on the watcher's loop). Readers get copies (``held``) that share the page entries' values,
never the entries, so nothing changes under a reader. A deleted job is a tombstone from the moment DELETE
answers: it reads as gone here even while its reader is still stopping, and the writer never writes it again.

Nothing here touches storage: the lock is held for microseconds, never across a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator

from gnosis_ocr.jobs.record import JobRecord

FINISHED_KEPT = 256  # finished jobs kept in memory (the store has them all)
TOMBSTONES_KEPT = 4096


class JobTable:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.live: dict[str, JobRecord] = {}  # jobs this instance owns (queued or running)
        self.finished: OrderedDict[str, JobRecord] = OrderedDict()
        self._versions: dict[str, int] = {}
        self._deleted: OrderedDict[str, None] = OrderedDict()
        self._watchers: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    @contextlib.contextmanager
    def changing(self, job_id: str) -> Iterator[None]:
        """``with table.changing(id): <change the record>``: under the lock, then version and watchers move."""
        with self.lock:
            yield
        self.changed(job_id)

    def changed(self, job_id: str) -> None:
        with self.lock:
            if job_id in self.live or job_id in self.finished:
                self._versions[job_id] = self._versions.get(job_id, 0) + 1
            else:
                self._versions.pop(job_id, None)
            watchers = list(self._watchers.get(job_id, ()))
        for loop, event in watchers:
            with contextlib.suppress(RuntimeError):  # the loop closed
                loop.call_soon_threadsafe(event.set)

    # -- reading -----------------------------------------------------------------------------------------

    def record(self, job_id: str) -> JobRecord | None:
        """The held record itself (callers hold ``lock``), None when not held or deleted."""
        if job_id in self._deleted:
            return None
        return self.live.get(job_id) or self.finished.get(job_id)

    def held(self, job_id: str) -> tuple[int, JobRecord] | None:
        """(version, a copy) of a job held in memory, None for others."""
        with self.lock:
            record = self.record(job_id)
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

    def version(self, job_id: str) -> int | None:
        with self.lock:
            if self.record(job_id) is None:
                return None
            return self._versions.get(job_id, 0)

    def deleted(self, job_id: str) -> bool:
        with self.lock:
            return job_id in self._deleted

    # -- membership --------------------------------------------------------------------------------------

    def finish(self, record: JobRecord) -> list[str]:
        """Under the lock: move a live record to the finished list (bounded); the ids it pushed out of memory."""
        self.live.pop(record.id, None)
        self.finished[record.id] = record
        evicted = []
        while len(self.finished) > FINISHED_KEPT:
            job_id, _ = self.finished.popitem(last=False)
            self._versions.pop(job_id, None)
            evicted.append(job_id)
        return evicted

    def bury(self, job_id: str) -> None:
        """Deleted: gone for readers at once, forgotten from memory."""
        with self.lock:
            self._deleted[job_id] = None
            while len(self._deleted) > TOMBSTONES_KEPT:
                self._deleted.popitem(last=False)
            self.live.pop(job_id, None)
            self.finished.pop(job_id, None)
        self.changed(job_id)

    # -- watching ----------------------------------------------------------------------------------------

    def watch(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        with self.lock:
            self._watchers.setdefault(job_id, set()).add((asyncio.get_running_loop(), event))
        return event

    def unwatch(self, job_id: str, event: asyncio.Event) -> None:
        with self.lock:
            watchers = self._watchers.get(job_id)
            if watchers is None:
                return
            for item in [w for w in watchers if w[1] is event]:
                watchers.discard(item)
            if not watchers:
                del self._watchers[job_id]
