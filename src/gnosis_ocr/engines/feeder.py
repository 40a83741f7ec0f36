"""Any batch ``Engine`` as a ``StreamingEngine``: pages submitted one by one, read in batches, each with a future.

``streaming(engine)`` hands back engines that stream already (vLLM) as they are, and wraps the others in a
``BatchFeeder``: one thread takes up to ``batch_size`` submitted pages that read with the same ``Decoding`` and
calls ``recognize`` on them. A page cancelled before its batch starts is never read; one cancelled while its batch
runs is read and its result dropped (a batch engine cannot abort half a batch). ``capacity`` is two batches, so
the next batch is ready when one ends.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace

from gnosis_ocr.documents.model import Page
from gnosis_ocr.engines.base import GREEDY, Decoding, Engine, EngineInfo, PageText, StreamingEngine
from gnosis_ocr.errors import EngineUnavailableError, GnosisError

logger = logging.getLogger(__name__)


def streaming(engine: Engine | StreamingEngine, *, owned: bool = True) -> StreamingEngine:
    """``engine`` itself when it streams, else a ``BatchFeeder`` over it (``owned``: closing it closes ``engine``)."""
    if isinstance(engine, StreamingEngine):
        return engine
    return BatchFeeder(engine, owned=owned)


class OnFirstUse:
    """An engine built and loaded the first time it is asked for (a fallback most documents never need)."""

    def __init__(self, build: Callable[[], StreamingEngine]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._engine: StreamingEngine | None = None

    def __call__(self) -> StreamingEngine:
        with self._lock:
            if self._engine is None:
                engine = self._build()
                engine.load()
                self._engine = engine
            return self._engine

    def close(self) -> None:
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()


def with_reason(engine: StreamingEngine, reason: str) -> StreamingEngine:
    """The same engine; its ``info`` carries why it was chosen (``auto``)."""
    return _WithReason(engine, reason)


@dataclass(frozen=True)
class _Item:
    page: Page
    decoding: Decoding
    future: Future[PageText]


class BatchFeeder:
    def __init__(self, engine: Engine, *, owned: bool = True) -> None:
        self._engine = engine
        self._owned = owned
        self._lock = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._closed = False
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"BatchFeeder({self._engine.info.name})"

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def info(self) -> EngineInfo:
        return self._engine.info

    @property
    def capacity(self) -> int:
        return 2 * max(1, self._engine.batch_size)

    def load(self) -> None:
        self._engine.load()

    def submit(self, page: Page, decoding: Decoding = GREEDY) -> Future[PageText]:
        future: Future[PageText] = Future()
        with self._lock:
            if self._closed:
                raise EngineUnavailableError(f"The {self.info.name} engine is closed.")
            self._queue.append(_Item(page, decoding, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"gnosis-feed-{self.info.name}", daemon=True)
                self._thread.start()
            self._lock.notify()
        return future

    def recognize(self, pages: Sequence[Page], decoding: Decoding = GREEDY) -> list[PageText]:
        return self._engine.recognize(pages, decoding)

    def _next_batch(self) -> list[_Item] | None:
        """Up to one batch of live items sharing the first one's decoding; None once closed and drained."""
        with self._lock:
            while True:
                while self._queue and not self._queue[0].future.set_running_or_notify_cancel():
                    self._queue.popleft()  # cancelled while waiting: never read
                if self._queue:
                    break
                if self._closed:
                    return None
                self._lock.wait()
            first = self._queue.popleft()
            batch = [first]
            size = max(1, self._engine.batch_size)
            kept: deque[_Item] = deque()
            while self._queue and len(batch) < size:
                item = self._queue.popleft()
                if item.decoding != first.decoding:
                    kept.append(item)
                elif item.future.set_running_or_notify_cancel():
                    batch.append(item)
            self._queue.extendleft(reversed(kept))
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                texts = self._engine.recognize([item.page for item in batch], batch[0].decoding)
                if [t.number for t in texts] != [item.page.number for item in batch]:
                    raise RuntimeError(
                        f"engine {self.info.name} answered pages {[t.number for t in texts]} "
                        f"for {[item.page.number for item in batch]}"
                    )
            except Exception as exc:  # every page of the batch carries it; the feeder goes on
                if isinstance(exc, GnosisError):  # the engine cannot run (load failed): said once, no traceback
                    logger.warning("engine %s: %s", self.info.name, exc)
                else:  # an engine's own bug
                    logger.exception("engine %s: a batch of %d page(s) failed", self.info.name, len(batch))
                for item in batch:
                    item.future.set_exception(exc)
                continue
            for item, text in zip(batch, texts, strict=True):
                item.future.set_result(text)

    def close(self) -> None:
        """Pages still waiting end cancelled; a batch being read finishes first; then the engine closes (when the
        feeder owns it)."""
        with self._lock:
            self._closed = True
            while self._queue:
                self._queue.popleft().future.cancel()
            self._lock.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        if self._owned:
            self._engine.close()


class _WithReason:
    def __init__(self, engine: StreamingEngine, reason: str) -> None:
        self._engine = engine
        self._reason = reason

    @property
    def info(self) -> EngineInfo:
        return replace(self._engine.info, reason=self._reason)

    @property
    def capacity(self) -> int:
        return self._engine.capacity

    def load(self) -> None:
        self._engine.load()

    def submit(self, page: Page, decoding: Decoding = GREEDY) -> Future[PageText]:
        return self._engine.submit(page, decoding)

    def close(self) -> None:
        self._engine.close()
