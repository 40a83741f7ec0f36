"""PAGES -> TEXT: the one seam every OCR engine implements.

An engine turns rendered pages into Markdown. ``recognize`` answers one ``PageText`` per page, in order, and never
raises for one bad page: that page's ``error`` says what went wrong and the rest of the document goes on. Engine-wide
failures (missing package, model, device) raise ``EngineUnavailableError`` from ``load``.

Two shapes of the same seam:

- ``Engine``: a batch in, a batch out (tesseract's worker pool, transformers ``generate()``, the fake).
- ``StreamingEngine``: one page in, a future out, many pages in flight at once, each finishing on its own (vLLM's
  continuous batching). ``capacity`` is how many pages it wants in flight to keep the device full; cancelling a
  future aborts that page inside the engine. ``engines.feeder.streaming(engine)`` gives any ``Engine`` this shape
  (batches of ``batch_size`` formed from the pages submitted), so the job runner and the CLI speak only this one.

``Decoding`` is how one attempt at a page decodes: greedy by default; the loop guard retries a looping page with a
rising temperature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from gnosis_ocr.documents.model import Page, WordBox

Source = Literal["ocr", "text-layer"]


@dataclass(frozen=True)
class EngineInfo:
    name: str  # "nanonets", "tesseract", "fake"
    model: str | None = None  # model repository id, or tesseract languages
    revision: str | None = None  # model commit sha, or engine library version
    device: str = "cpu"
    reason: str | None = None  # why this engine was chosen (auto)
    vlm: bool = False  # a vision-language model: keeps tables and equations, so a PDF text layer is not preferred
    backend: str | None = None  # how a VLM runs: "vllm", "transformers" or "remote" (None for the others)
    profile: str | None = None  # the model profile (prompt, limits, output parsing) a VLM reads pages with
    endpoint: str | None = None  # the remote engine's server (its base URL, never credentials)


@dataclass(frozen=True)
class Decoding:
    """How one attempt at a page decodes. Engines that do not sample (tesseract) ignore it."""

    temperature: float = 0.0  # 0: greedy
    max_tokens: int | None = None  # None: the engine's (profile's) bound
    seed: int | None = None  # for a repeatable sampled retry


GREEDY = Decoding()


@dataclass(frozen=True)
class PageText:
    number: int  # 1-based page number in the document
    markdown: str
    seconds: float
    source: Source = "ocr"
    error: str | None = None
    meta: Mapping[str, object] = field(default_factory=dict)  # e.g. {"rotation": 90, "confidence": 91.2}
    word_boxes: tuple[WordBox, ...] = ()  # the words and where they are on the page image (engines that find them)

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class Engine(Protocol):
    @property
    def info(self) -> EngineInfo: ...

    @property
    def batch_size(self) -> int:
        """How many pages ``recognize`` takes at once to best effect."""
        ...

    def load(self) -> None:
        """Load models or start workers; idempotent. Raises EngineUnavailableError."""

    def recognize(self, pages: Sequence[Page], decoding: Decoding = GREEDY) -> list[PageText]:
        """One PageText per page, same order. A failing page carries ``error``; nothing raises for it."""
        ...

    def close(self) -> None:
        """Release workers, memory, devices; idempotent."""


@runtime_checkable
class StreamingEngine(Protocol):
    @property
    def info(self) -> EngineInfo: ...

    @property
    def capacity(self) -> int:
        """Pages in flight at once that keep the device busy (more only wait inside the engine)."""
        ...

    def load(self) -> None:
        """As ``Engine.load``."""

    def submit(self, page: Page, decoding: Decoding = GREEDY) -> Future[PageText]:
        """Start reading one page. The future's result is the page's PageText (a failing page carries ``error``);
        ``future.cancel()`` aborts the page in the engine. Raises EngineUnavailableError once closed."""
        ...

    def close(self) -> None:
        """Stop: pages not finished are cancelled (their futures end cancelled), then release everything."""


def recognize_by_submit(engine: StreamingEngine, pages: Sequence[Page], decoding: Decoding = GREEDY) -> list[PageText]:
    """``Engine.recognize`` for a streaming engine: every page submitted at once, one PageText per page in order (a
    page cancelled inside the engine answers ``error="cancelled"``)."""
    futures = [engine.submit(page, decoding) for page in pages]
    out = []
    for page, future in zip(pages, futures, strict=True):
        try:
            out.append(future.result())
        except CancelledError:
            out.append(PageText(page.number, "", 0.0, error="cancelled"))
    return out
