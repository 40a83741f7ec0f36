"""The reading loop: pages in flight, fair shares between readers, the loop guard's retries and fallbacks, turned
pages, and stopping (cancel aborts what is in flight; shutdown lets it finish within the grace)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future

from PIL import Image

from gnosis_ocr.documents.model import Page, PageError
from gnosis_ocr.engines.base import GREEDY, Decoding, EngineInfo, PageText
from gnosis_ocr.engines.feeder import BatchFeeder
from gnosis_ocr.jobs.reading import ReadPolicy, Stop, read_pages
from gnosis_ocr.jobs.results import PageResult
from gnosis_ocr.jobs.slots import FairSlots
from tests.support.fakeengine import FakeEngine

LOOP = "the same line again\n" * 200


class Sink:
    def __init__(self) -> None:
        self.results: dict[int, PageResult] = {}
        self.order: list[int] = []
        self.seen: list[int] = []  # pages rendered
        self.lock = threading.Lock()

    def rendered(self, page: Page) -> None:
        self.seen.append(page.number)

    def done(self, result: PageResult) -> None:
        with self.lock:
            self.results[result.number] = result
            self.order.append(result.number)


def pages(n: int, *, text_layer: str | None = None, start: int = 1) -> Iterator[Page | PageError]:
    for number in range(start, start + n):
        yield Page(number, Image.new("RGB", (64, 48), "white"), text_layer=text_layer)


class Scripted:
    """A VLM-like batch engine whose answers follow a script per page and attempt; it records what it was asked."""

    def __init__(self, script: dict[int, list[str]] | None = None, *, vlm: bool = True, delay: float = 0.0) -> None:
        self.script = script or {}
        self.vlm = vlm
        self.delay = delay
        self.asked: list[tuple[int, float, tuple[int, int]]] = []  # page, temperature, image size
        self.lock = threading.Lock()

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(name="scripted", vlm=self.vlm)

    @property
    def batch_size(self) -> int:
        return 2

    def load(self) -> None:
        pass

    def recognize(self, batch: Sequence[Page], decoding: Decoding = GREEDY) -> list[PageText]:
        out = []
        for page in batch:
            time.sleep(self.delay)
            with self.lock:
                attempt = sum(1 for p, _, _ in self.asked if p == page.number)
                self.asked.append((page.number, decoding.temperature, page.image.size))
            answers = self.script.get(page.number, ["fine text"])
            answer = answers[min(attempt, len(answers) - 1)]
            meta: dict[str, object] = {}
            if answer == "TURNED":
                answer, meta = "sideways garble", {"rotate": 90}
            elif answer == LOOP:
                meta = {"truncated": True}
            out.append(PageText(page.number, answer, 0.01, meta=meta))
        return out

    def close(self) -> None:
        pass


def _read(engine: Scripted | FakeEngine, items: Iterator[Page | PageError], **kwargs: object) -> Sink:
    sink = Sink()
    feeder = BatchFeeder(engine)
    try:
        read_pages(items, feeder, sink=sink, **kwargs)  # type: ignore[arg-type]
    finally:
        feeder.close()
    return sink


def test_every_page_lands_once_with_pages_in_flight() -> None:
    engine = FakeEngine(batch_size=3, delay=0.02)
    sink = _read(engine, pages(10))
    assert sorted(sink.order) == list(range(1, 11)) and len(sink.order) == 10
    assert sink.seen == list(range(1, 11))
    assert max(len(call) for call in engine.calls) > 1  # pages waited together for the engine


def test_a_looping_page_is_retried_hotter_then_falls_back_to_its_text_layer() -> None:
    engine = Scripted({2: [LOOP, LOOP, LOOP]})
    sink = _read(
        engine, pages(3, text_layer="The page's own words, long enough to be used."), policy=ReadPolicy(retries=2)
    )
    page = sink.results[2]
    assert page.source == "text-layer" and page.markdown.startswith("The page's own words")
    assert page.meta["fallback"] == "text-layer" and len(page.meta["loops"]) == 3  # type: ignore[arg-type]
    temperatures = [t for n, t, _ in engine.asked if n == 2]
    assert temperatures[0] == 0.0 and temperatures == sorted(temperatures) and len(temperatures) == 3
    assert [n for n, _, _ in engine.asked].count(1) == 1  # a clean page is read once
    assert sink.results[1].source == "ocr" and sink.results[1].meta == {}


def test_a_looping_page_recovers_on_a_retry() -> None:
    engine = Scripted({1: [LOOP, "clean at last"]})
    sink = _read(engine, pages(1), policy=ReadPolicy(retries=2))
    assert sink.results[1].markdown == "clean at last" and sink.results[1].meta["attempts"] == 2


def test_without_a_text_layer_the_fallback_engine_reads_it() -> None:
    engine = Scripted({1: [LOOP]})
    fallback = BatchFeeder(FakeEngine())
    try:
        sink = _read(engine, pages(1), policy=ReadPolicy(retries=1), fallback=lambda: fallback)
    finally:
        fallback.close()
    page = sink.results[1]
    assert page.ok and page.markdown.startswith("# Page 1") and page.meta["fallback"] == "fake"
    assert len([n for n, _, _ in engine.asked if n == 1]) == 2  # the first reading and one retry, no more


def test_no_fallback_at_all_fails_the_page_saying_why() -> None:
    sink = _read(Scripted({1: [LOOP]}), pages(1), policy=ReadPolicy(retries=0))
    assert sink.results[1].error is not None and "looped" in sink.results[1].error


def test_a_cpu_engine_is_never_second_guessed() -> None:
    engine = Scripted({1: [LOOP]}, vlm=False)
    sink = _read(engine, pages(1), policy=ReadPolicy(text_layer="never"))
    assert sink.results[1].markdown == LOOP and len(engine.asked) == 1


def test_a_page_the_model_calls_turned_is_turned_and_read_again() -> None:
    engine = Scripted({1: ["TURNED", "upright text"]})
    sink = _read(engine, pages(1))
    assert sink.results[1].markdown == "upright text" and sink.results[1].meta["turned"] == 90
    assert [size for _, _, size in engine.asked] == [(64, 48), (48, 64)]


def test_a_small_reader_gets_the_next_free_place() -> None:
    engine = Scripted(delay=0.05)
    feeder = BatchFeeder(engine)
    slots = FairSlots(2)
    big, small = Sink(), Sink()
    try:
        first = threading.Thread(
            target=read_pages, args=(pages(40), feeder), kwargs={"sink": big, "slots": slots, "owner": "big"}
        )
        first.start()
        while len(big.order) < 2:
            time.sleep(0.01)
        read_pages(pages(1, start=100), feeder, sink=small, slots=slots, owner="small")
        assert small.order == [100]
        assert len(big.order) < 20  # the small one did not wait for the big one to end
        first.join(30)
    finally:
        feeder.close()
    assert len(big.order) == 40 and slots.in_use == 0


def test_cancel_aborts_pages_in_flight_and_leaves_them_unreported() -> None:
    engine = Scripted(delay=0.2)
    feeder = BatchFeeder(engine)
    stop = Stop()
    sink = Sink()
    timer = threading.Timer(0.3, stop.trigger, args=("cancel",))
    timer.start()
    try:
        began = time.monotonic()
        reason = read_pages(pages(50), feeder, sink=sink, stop=stop)
        took = time.monotonic() - began
    finally:
        feeder.close()
    assert reason == "cancel" and took < 2.0
    assert len(sink.order) < 10 and len(engine.asked) < 10  # pages queued in the engine were never read


def test_shutdown_lets_pages_in_flight_finish_within_the_grace() -> None:
    engine = Scripted(delay=0.3)
    feeder = BatchFeeder(engine)
    stop = Stop()
    sink = Sink()
    threading.Timer(0.1, stop.trigger, args=("shutdown",)).start()
    try:
        reason = read_pages(pages(20), feeder, sink=sink, stop=stop, policy=ReadPolicy(grace=5.0))
    finally:
        feeder.close()
    assert reason == "shutdown"
    read = {n for n, _, _ in engine.asked}
    assert set(sink.order) <= read and sink.order  # what was read is kept
    assert all(r.ok for r in sink.results.values())  # nothing in flight was failed by the shutdown
    assert len(sink.order) < 20


def test_shutdown_keeps_a_page_that_loops_pending_rather_than_storing_the_loop() -> None:
    engine = Scripted({1: [LOOP, "fine text"], 2: [LOOP, "fine text"]}, delay=0.3)
    feeder = BatchFeeder(engine)
    stop = Stop()
    sink = Sink()
    threading.Timer(0.1, stop.trigger, args=("shutdown",)).start()
    try:
        reason = read_pages(pages(2), feeder, sink=sink, stop=stop, policy=ReadPolicy(grace=5.0))
    finally:
        feeder.close()
    assert reason == "shutdown"
    assert {n for n, _, _ in engine.asked} == {1, 2}  # both were read once, and looped
    assert sink.results == {}  # nothing is read again while stopping, so both stay pending, not done with a loop


def test_a_future_that_fails_fails_only_its_page() -> None:
    class Broken(Scripted):
        def recognize(self, batch: Sequence[Page], decoding: Decoding = GREEDY) -> list[PageText]:
            if any(p.number == 2 for p in batch):
                raise RuntimeError("device fell over")
            return super().recognize(batch, decoding)

    engine = Broken(vlm=False)
    feeder = BatchFeeder(engine)
    sink = Sink()
    try:
        read_pages(pages(4), feeder, sink=sink, slots=FairSlots(1))
    finally:
        feeder.close()
    assert not sink.results[2].ok and "device fell over" in (sink.results[2].error or "")
    assert all(sink.results[n].ok for n in (1, 3, 4))


def test_a_cancelled_future_of_a_closed_engine_fails_its_page() -> None:
    class Closing:
        info = EngineInfo(name="closing")
        capacity = 1

        def load(self) -> None:
            pass

        def submit(self, page: Page, decoding: Decoding = GREEDY) -> Future[PageText]:
            future: Future[PageText] = Future()
            future.cancel()
            return future

        def close(self) -> None:
            pass

    sink = Sink()
    read_pages(pages(1), Closing(), sink=sink)  # type: ignore[arg-type]
    assert sink.results[1].error is not None and "engine stopped" in sink.results[1].error
