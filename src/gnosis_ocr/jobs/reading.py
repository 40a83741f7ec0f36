"""Reading a document's pages with a streaming engine: many pages in flight, each stored the moment it finishes.

``read_pages`` is the one loop the CLI and the job runner share. It renders pages one ahead of the engine, takes a
usable PDF text layer where the policy prefers it, asks ``FairSlots`` for a place in the engine for each page that
needs reading (so pages of every running job share the device fairly), and handles each page as it comes back:

- the model says the page is turned (olmOCR-2's front matter): the page is turned and read once more;
- the loop guard (``engines.loopguard``) finds the output repeating or stopped at max tokens: the page is read
  again at a rising temperature, ``retries`` times at most; then it falls back to its text layer, else to the
  fallback engine (tesseract), else it fails saying why. A looping page costs its bounded retries and no more.

Memory is bounded by design: the pages in flight (at most the engine's capacity, shared by all readers) plus one
rendered page per reader waiting for its place.

Stopping: ``Stop.trigger("cancel"|"delete"|"lost")`` aborts this reader's pages in the engine at once and leaves
them pending; ``"shutdown"`` stops submitting, lets the pages in flight finish until ``grace`` seconds have passed,
then aborts the rest, which stay pending (never failed) for the next start to read.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from gnosis_ocr.documents.model import Page, PageError, WordBox
from gnosis_ocr.engines import loopguard
from gnosis_ocr.engines.base import GREEDY, Decoding, PageText, StreamingEngine
from gnosis_ocr.engines.profiles import upright
from gnosis_ocr.errors import GnosisError
from gnosis_ocr.jobs.results import PageResult
from gnosis_ocr.jobs.slots import SLOT, FairSlots

logger = logging.getLogger(__name__)

TextLayerPolicy = Literal["auto", "never", "only"]
StopReason = Literal["cancel", "delete", "shutdown", "lost"]  # lost: another instance has the job now
FallbackProvider = Callable[[], StreamingEngine | None]


class ReadSink(Protocol):
    def rendered(self, page: Page) -> None:
        """A page was rendered (before it is read): the service keeps its image."""

    def done(self, result: PageResult) -> None:
        """A page is finished (read, taken from its text layer, or failed)."""


class Stop:
    """A reader's stop signal, set from any thread; wakes the reader at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reason: StopReason | None = None
        self._inboxes: list[queue.SimpleQueue[object]] = []

    def trigger(self, reason: StopReason) -> None:
        with self._lock:
            if self.reason is None or reason in ("delete", "lost"):
                self.reason = reason
            inboxes = list(self._inboxes)
        for inbox in inboxes:
            inbox.put(_STOP)

    def _attach(self, inbox: queue.SimpleQueue[object]) -> None:
        with self._lock:
            self._inboxes.append(inbox)
            stopped = self.reason is not None
        if stopped:
            inbox.put(_STOP)

    def _detach(self, inbox: queue.SimpleQueue[object]) -> None:
        with self._lock:
            self._inboxes.remove(inbox)


@dataclass(frozen=True)
class ReadPolicy:
    text_layer: TextLayerPolicy = "auto"
    loop_guard: bool = True  # VLM pages that loop or stop at max tokens are read again, then fall back
    retries: int = 2  # loop guard: reads again at a rising temperature before falling back
    grace: float = 8.0  # shutdown: seconds the pages in flight may take to finish


_STOP = "stop"


@dataclass
class _Flight:
    page: Page
    future: Future[PageText]
    fallback: StreamingEngine | None = None  # reads it instead of the main engine (holding no place there)
    attempts: int = 1
    seconds: float = 0.0
    turned: int = 0  # degrees the page was turned at the model's word
    loops: list[str] = field(default_factory=list)


def usable_text_layer(text: str | None, *, min_chars: int = 16) -> bool:
    """True when a PDF page's text layer looks like real text (not empty, not glyph-id garbage)."""
    import unicodedata

    if not text:
        return False
    visible = [c for c in text if not c.isspace()]
    if len(visible) < min_chars:
        return False
    letters = sum(1 for c in visible if c.isalnum())
    junk = sum(1 for c in visible if c == "\ufffd" or unicodedata.category(c) in ("Co", "Cn", "Cc"))
    return letters / len(visible) >= 0.5 and junk / len(visible) < 0.02


def page_result(
    page: Page,
    markdown: str,
    seconds: float,
    source: Literal["ocr", "text-layer"],
    *,
    error: str | None = None,
    meta: dict[str, object] | None = None,
    word_boxes: tuple[WordBox, ...] = (),
) -> PageResult:
    width, height = page.image.size
    return PageResult(page.number, markdown, seconds, source, error, width, height, meta or {}, word_boxes, page.points)


class _Reader:
    def __init__(
        self,
        engine: StreamingEngine,
        *,
        slots: FairSlots,
        owner: str,
        sink: ReadSink,
        policy: ReadPolicy,
        stop: Stop,
        fallback: FallbackProvider | None,
    ) -> None:
        self.engine = engine
        self.slots = slots
        self.owner = owner
        self.sink = sink
        self.policy = policy
        self.stop = stop
        self.fallback = fallback
        self.vlm = engine.info.vlm
        self.prefer_layer = policy.text_layer == "only" or (policy.text_layer == "auto" and not self.vlm)
        self.temperatures = loopguard.retry_temperatures(policy.retries) if self.vlm else ()
        self.inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.flights: dict[int, _Flight] = {}  # id(future) -> flight
        self.ahead: Page | None = None
        self.asked = False
        self.exhausted = False

    # -- the loop ----------------------------------------------------------------------------------------

    def run(self, items: Iterator[Page | PageError]) -> None:
        self.stop._attach(self.inbox)
        try:
            self._advance(items)
            while self.stop.reason is None and not (self.exhausted and self.ahead is None and not self.flights):
                event = self.inbox.get()
                if event == SLOT:
                    self._use_slot(items)
                elif isinstance(event, Future):
                    self._landed(event)
            if self.stop.reason is not None:
                self._wind_down()
        finally:
            for flight in self.flights.values():
                flight.future.cancel()
            self.slots.release_all(self.owner)
            self.stop._detach(self.inbox)

    def _advance(self, items: Iterator[Page | PageError]) -> None:
        """Render until a page needs the engine (then ask for its place) or the pages run out."""
        while self.ahead is None and not self.exhausted and self.stop.reason is None:
            item = next(items, None)
            if item is None:
                self.exhausted = True
                break
            if isinstance(item, PageError):
                self.sink.done(PageResult(item.number, "", 0.0, error=item.message))
                continue
            self.sink.rendered(item)
            if self.prefer_layer and usable_text_layer(item.text_layer):
                boxes = item.text_layer_boxes
                self.sink.done(page_result(item, (item.text_layer or "").strip(), 0.0, "text-layer", word_boxes=boxes))
            elif self.policy.text_layer == "only":
                error = "the page has no usable text layer (--text-layer only never runs OCR)"
                self.sink.done(page_result(item, "", 0.0, "text-layer", error=error))
            else:
                self.ahead = item
        if self.ahead is not None and not self.asked:
            self.asked = True
            self.slots.want(self.owner, self.inbox)

    def _use_slot(self, items: Iterator[Page | PageError]) -> None:
        self.asked = False
        page, self.ahead = self.ahead, None
        if page is None:  # nothing to read after all
            self.slots.release(self.owner)
            return
        self._submit(_Flight(page, Future()), GREEDY)
        self._advance(items)

    def _submit(self, flight: _Flight, decoding: Decoding) -> None:
        engine = flight.fallback or self.engine
        try:
            flight.future = engine.submit(flight.page, decoding)
        except Exception as exc:
            failed: Future[PageText] = Future()
            failed.set_exception(exc)
            flight.future = failed
        self.flights[id(flight.future)] = flight
        flight.future.add_done_callback(self.inbox.put)

    # -- a page comes back -------------------------------------------------------------------------------

    def _landed(self, future: Future[PageText]) -> None:
        flight = self.flights.pop(id(future), None)
        if flight is None:
            return
        text = self._outcome(flight, future)
        if text is None:
            return
        flight.seconds += text.seconds
        if flight.fallback is not None or not self.vlm or not text.ok:
            self._finish(flight, text, None)
            return
        turn = 0 if flight.turned else _as_degrees(text.meta.get("rotate"))
        reason = None
        if self.policy.loop_guard and not turn:
            reason = loopguard.looping(text.markdown, truncated=bool(text.meta.get("truncated")))
        if not turn and reason is None:
            self._finish(flight, text, None)
            return
        if self.stop.reason is not None:
            self.slots.release(self.owner)  # stopping: nothing is read again, so this page stays pending
            return
        if turn:
            flight.turned = turn
            flight.page = _turned(flight.page, turn)
            flight.attempts += 1
            self._submit(flight, GREEDY)  # keeps its place
            return
        self._retry_or_fall_back(flight, text, reason or "")

    def _outcome(self, flight: _Flight, future: Future[PageText]) -> PageText | None:
        """The page's reading, or None when the page is settled already (failed here, or left pending)."""
        try:
            text = future.result()
        except CancelledError:
            if flight.fallback is None:
                self.slots.release(self.owner)
            if self.stop.reason is None:  # the engine went away under a running read
                self._finish(flight, None, "the engine stopped before the page was read")
            return None  # stopping: the page stays pending
        except GnosisError:
            raise  # engine-wide (it cannot load, its model is missing): the document cannot be read
        except Exception as exc:
            logger.warning("%s: page %d: %s: %s", self.owner, flight.page.number, type(exc).__name__, exc)
            text = PageText(flight.page.number, "", 0.0, error=f"reading failed: {type(exc).__name__}: {exc}")
        if not text.ok and self.stop.reason == "shutdown":  # e.g. "engine closed": read again at the next start
            if flight.fallback is None:
                self.slots.release(self.owner)
            return None
        return text

    def _retry_or_fall_back(self, flight: _Flight, text: PageText, reason: str) -> None:
        flight.loops.append(reason)
        retry = len(flight.loops) - 1
        if retry < len(self.temperatures):
            logger.info(
                "%s: page %d loops (%s); reading it again at temperature %.1f",
                self.owner,
                flight.page.number,
                reason,
                self.temperatures[retry],
            )
            flight.attempts += 1
            self._submit(flight, Decoding(temperature=self.temperatures[retry], seed=flight.page.number))
            return
        self._fall_back(flight, text)

    def _fall_back(self, flight: _Flight, looped: PageText) -> None:
        self.slots.release(self.owner)
        page = flight.page
        if usable_text_layer(page.text_layer):
            meta = self._meta(flight, looped) | {"fallback": "text-layer"}
            logger.info(
                "%s: page %d looped %d time(s); took its text layer", self.owner, page.number, len(flight.loops)
            )
            text, boxes = (page.text_layer or "").strip(), page.text_layer_boxes
            self.sink.done(page_result(page, text, flight.seconds, "text-layer", meta=meta, word_boxes=boxes))
            return
        fallback = self._fallback_engine()
        if fallback is not None:
            logger.info(
                "%s: page %d looped %d time(s); reading it with %s",
                self.owner,
                page.number,
                len(flight.loops),
                fallback.info.name,
            )
            flight.fallback = fallback
            self._submit(flight, GREEDY)
            return
        error = f"the model looped on this page ({'; '.join(flight.loops)}) and no fallback engine is available"
        self.sink.done(page_result(page, "", flight.seconds, "ocr", error=error, meta=self._meta(flight, looped)))

    def _finish(self, flight: _Flight, text: PageText | None, error: str | None) -> None:
        if flight.fallback is None and error is None:
            self.slots.release(self.owner)
        page = flight.page
        if text is None:
            self.sink.done(page_result(page, "", flight.seconds, "ocr", error=error))
            return
        meta = self._meta(flight, text)
        if flight.fallback is not None:
            meta["fallback"] = flight.fallback.info.name
        boxes = text.word_boxes
        self.sink.done(
            page_result(page, text.markdown, flight.seconds, text.source, error=text.error, meta=meta, word_boxes=boxes)
        )

    def _meta(self, flight: _Flight, text: PageText) -> dict[str, object]:
        meta = dict(text.meta)
        if flight.attempts > 1:
            meta["attempts"] = flight.attempts
        if flight.loops:
            meta["loops"] = list(flight.loops)
        if flight.turned:
            meta["turned"] = flight.turned
        return meta

    def _fallback_engine(self) -> StreamingEngine | None:
        """The fallback engine (loaded on first use), None when there is none or it cannot load."""
        if self.fallback is None:
            return None
        try:
            return self.fallback()
        except Exception as exc:
            logger.warning("%s: no fallback engine: %s", self.owner, exc)
            return None

    # -- stopping ----------------------------------------------------------------------------------------

    def _wind_down(self) -> None:
        if self.stop.reason == "shutdown" and self.flights:
            deadline = time.monotonic() + self.policy.grace
            while self.flights and (left := deadline - time.monotonic()) > 0:
                try:
                    event = self.inbox.get(timeout=left)
                except queue.Empty:
                    break
                if isinstance(event, Future):
                    self._landed(event)  # finished pages are kept; nothing is read again while stopping
        for flight in list(self.flights.values()):
            flight.future.cancel()


def _as_degrees(value: object) -> int:
    try:
        degrees = int(value) % 360 if isinstance(value, int | float | str) else 0
    except ValueError:
        return 0
    return degrees if degrees in (90, 180, 270) else 0


def _turned(page: Page, degrees: int) -> Page:
    return replace(page, image=upright(page.image, degrees))


def read_pages(
    items: Iterator[Page | PageError],
    engine: StreamingEngine,
    *,
    sink: ReadSink,
    slots: FairSlots | None = None,
    owner: str = "document",
    policy: ReadPolicy | None = None,
    stop: Stop | None = None,
    fallback: FallbackProvider | None = None,
) -> StopReason | None:
    """Read every page of ``items`` with ``engine``; each result goes to ``sink.done`` as it finishes.

    Returns None when every page is finished, else the stop reason (pages not finished stay unreported). An
    engine-wide failure (a ``GnosisError`` from the engine: it cannot load, its model is not cached) propagates;
    anything else that goes wrong with one page fails that page."""
    stop = stop or Stop()
    reader = _Reader(
        engine,
        slots=slots or FairSlots(max(1, engine.capacity)),
        owner=owner,
        sink=sink,
        policy=policy or ReadPolicy(),
        stop=stop,
        fallback=fallback,
    )
    reader.run(items)
    return stop.reason
