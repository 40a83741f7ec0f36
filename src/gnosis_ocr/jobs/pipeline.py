"""One document through the pipeline: render pages lazily, take a usable text layer or OCR them in batches.

Pages stream: at most one engine batch of rendered pages is in memory at a time. A page that fails to render or
to recognise becomes that page's error; the rest of the document completes.
"""

from __future__ import annotations

import logging
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from gnosis_ocr.documents.model import DocumentLimits, Page, PageError
from gnosis_ocr.documents.pages import parse_page_selection
from gnosis_ocr.documents.render import open_document
from gnosis_ocr.engines.base import Engine, PageText
from gnosis_ocr.jobs.results import DocumentResult, PageResult

logger = logging.getLogger(__name__)

TextLayerPolicy = Literal["auto", "never", "only"]


@dataclass(frozen=True)
class OcrOptions:
    pages: str | None = None  # "1-3,7"; None for all
    text_layer: TextLayerPolicy = "auto"
    limits: DocumentLimits = field(default_factory=DocumentLimits)


class PipelineProgress(Protocol):
    def document_started(self, name: str, pages: int) -> None: ...

    def page_done(self, name: str, page: PageResult) -> None: ...


class _NoProgress:
    def document_started(self, name: str, pages: int) -> None:
        pass

    def page_done(self, name: str, page: PageResult) -> None:
        pass


def usable_text_layer(text: str | None, *, min_chars: int = 16) -> bool:
    """True when a PDF page's text layer looks like real text (not empty, not glyph-id garbage)."""
    if not text:
        return False
    visible = [c for c in text if not c.isspace()]
    if len(visible) < min_chars:
        return False
    letters = sum(1 for c in visible if c.isalnum())
    junk = sum(1 for c in visible if c == "\ufffd" or unicodedata.category(c) in ("Co", "Cn", "Cc"))
    return letters / len(visible) >= 0.5 and junk / len(visible) < 0.02


def ocr_document(
    source: Path | bytes,
    engine: Engine,
    *,
    name: str | None = None,
    options: OcrOptions | None = None,
    progress: PipelineProgress | None = None,
    on_render: Callable[[Page], None] | None = None,
) -> DocumentResult:
    """OCR one document. DocumentError (unreadable input) and EngineError (engine cannot run) propagate;
    anything that goes wrong with a single page is recorded on that page.

    ``on_render`` sees every rendered page before it is read (the service keeps the page images); an exception
    from it or from ``progress`` stops the document there (the service cancels jobs that way)."""
    options = options or OcrOptions()
    progress = progress or _NoProgress()
    doc_name = name or (source.name if isinstance(source, Path) else "document")
    started = time.monotonic()
    prefer_layer = options.text_layer == "only" or (options.text_layer == "auto" and not engine.info.vlm)
    results: dict[int, PageResult] = {}
    with open_document(source, limits=options.limits) as document:
        numbers = parse_page_selection(options.pages, document.page_count)
        progress.document_started(doc_name, len(numbers))
        for batch in _batches(document.pages(numbers), max(1, engine.batch_size)):
            to_ocr: list[Page] = []
            for item in batch:
                if on_render is not None and not isinstance(item, PageError):
                    on_render(item)
                if isinstance(item, PageError):
                    results[item.number] = _done(
                        progress, doc_name, PageResult(item.number, "", 0.0, error=item.message)
                    )
                elif prefer_layer and usable_text_layer(item.text_layer):
                    layer = (item.text_layer or "").strip()
                    results[item.number] = _done(progress, doc_name, _from_page(item, layer, 0.0, "text-layer"))
                elif options.text_layer == "only":
                    error = "the page has no usable text layer (--text-layer only never runs OCR)"
                    results[item.number] = _done(
                        progress, doc_name, _from_page(item, "", 0.0, "text-layer", error=error)
                    )
                else:
                    to_ocr.append(item)
            if to_ocr:
                for page, text in zip(to_ocr, _recognize(engine, to_ocr), strict=True):
                    result = _from_page(
                        page, text.markdown, text.seconds, text.source, error=text.error, meta=dict(text.meta)
                    )
                    results[page.number] = _done(progress, doc_name, result)
        kind, page_count = document.kind, document.page_count
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


def _recognize(engine: Engine, pages: Sequence[Page]) -> list[PageText]:
    texts = engine.recognize(pages)
    if len(texts) != len(pages) or [t.number for t in texts] != [p.number for p in pages]:
        raise RuntimeError(
            f"engine {engine.info.name} answered pages {[t.number for t in texts]} for {[p.number for p in pages]}"
        )
    return texts


def _from_page(
    page: Page,
    markdown: str,
    seconds: float,
    source: Literal["ocr", "text-layer"],
    *,
    error: str | None = None,
    meta: dict[str, object] | None = None,
) -> PageResult:
    width, height = page.image.size
    return PageResult(page.number, markdown, seconds, source, error, width, height, meta or {})


def _done(progress: PipelineProgress, name: str, result: PageResult) -> PageResult:
    progress.page_done(name, result)
    return result


def _batches(items: Iterable[Page | PageError], size: int) -> Iterator[list[Page | PageError]]:
    batch: list[Page | PageError] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
