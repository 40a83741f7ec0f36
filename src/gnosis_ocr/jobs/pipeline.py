"""One document through the pipeline: render pages lazily, take a usable text layer or OCR them, many in flight.

Pages stream: at most the engine's capacity of rendered pages (plus one rendered ahead) is in memory at a time. A
page that fails to render or to recognise becomes that page's error; the rest of the document completes. The
reading loop itself is ``jobs.reading.read_pages``, shared with the service's job runner.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gnosis_ocr.documents.model import DocumentLimits, Page
from gnosis_ocr.documents.pages import parse_page_selection
from gnosis_ocr.documents.render import open_document
from gnosis_ocr.engines.base import Engine, StreamingEngine
from gnosis_ocr.engines.feeder import streaming
from gnosis_ocr.jobs.reading import FallbackProvider, ReadPolicy, TextLayerPolicy, read_pages, usable_text_layer
from gnosis_ocr.jobs.results import DocumentResult, PageResult

logger = logging.getLogger(__name__)

__all__ = ["OcrOptions", "PipelineProgress", "TextLayerPolicy", "ocr_document", "usable_text_layer"]


@dataclass(frozen=True)
class OcrOptions:
    pages: str | None = None  # "1-3,7"; None for all
    text_layer: TextLayerPolicy = "auto"
    limits: DocumentLimits = field(default_factory=DocumentLimits)
    loop_guard: bool = True  # VLM pages that loop are read again, then fall back (text layer, ``fallback``)
    loop_retries: int = 2  # the loop guard's retries of a looping VLM page


class PipelineProgress(Protocol):
    def document_started(self, name: str, pages: int) -> None: ...

    def page_done(self, name: str, page: PageResult) -> None: ...


class _NoProgress:
    def document_started(self, name: str, pages: int) -> None:
        pass

    def page_done(self, name: str, page: PageResult) -> None:
        pass


def ocr_document(
    source: Path | bytes,
    engine: Engine | StreamingEngine,
    *,
    name: str | None = None,
    options: OcrOptions | None = None,
    progress: PipelineProgress | None = None,
    on_render: Callable[[Page], None] | None = None,
    fallback: FallbackProvider | None = None,
) -> DocumentResult:
    """OCR one document. DocumentError (unreadable input) and EngineError (engine cannot run) propagate;
    anything that goes wrong with a single page is recorded on that page.

    Pages are read with as many in flight as the engine takes (``jobs.reading``); ``fallback`` gives the engine a
    page the VLM loops on goes to (tesseract). ``on_render`` sees every rendered page before it is read; an
    exception from it or from ``progress`` stops the document there (pages in flight are aborted)."""
    options = options or OcrOptions()
    progress = progress or _NoProgress()
    doc_name = name or (source.name if isinstance(source, Path) else "document")
    started = time.monotonic()
    reader = streaming(engine, owned=False)
    results: dict[int, PageResult] = {}
    sink = _Sink(results, progress, doc_name, on_render)
    policy = ReadPolicy(text_layer=options.text_layer, loop_guard=options.loop_guard, retries=options.loop_retries)
    try:
        with open_document(source, limits=options.limits) as document:
            numbers = parse_page_selection(options.pages, document.page_count)
            progress.document_started(doc_name, len(numbers))
            read_pages(document.pages(numbers), reader, sink=sink, policy=policy, fallback=fallback, owner=doc_name)
            kind, page_count = document.kind, document.page_count
    finally:
        if reader is not engine:
            reader.close()
    pages = tuple(results[n] for n in numbers)
    failed = sum(1 for p in pages if not p.ok)
    logger.info(
        "%s: %d page(s), %d failed, engine %s, %.2f s",
        doc_name,
        len(pages),
        failed,
        engine.info.name,
        time.monotonic() - started,
    )
    return DocumentResult(doc_name, kind, page_count, pages, engine.info, time.monotonic() - started)


class _Sink:
    def __init__(
        self,
        results: dict[int, PageResult],
        progress: PipelineProgress,
        name: str,
        on_render: Callable[[Page], None] | None,
    ) -> None:
        self._results = results
        self._progress = progress
        self._name = name
        self._on_render = on_render

    def rendered(self, page: Page) -> None:
        if self._on_render is not None:
            self._on_render(page)

    def done(self, result: PageResult) -> None:
        self._results[result.number] = result
        self._progress.page_done(self._name, result)
