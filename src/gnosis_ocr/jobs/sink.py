"""Where a running job's pages land: the page image stored as the page renders, the result the moment the page
finishes (in memory at once, saved by the writer, counted in the metrics)."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

from PIL import Image

from gnosis_ocr.documents.model import Page
from gnosis_ocr.jobs.record import JobRecord, PageEntry, PageReading, utcnow
from gnosis_ocr.jobs.results import PageResult
from gnosis_ocr.jobs.searchable import geometry_of
from gnosis_ocr.jobs.store import IMAGE_PIXELS

if TYPE_CHECKING:
    from gnosis_ocr.jobs.runner import JobRunner

logger = logging.getLogger(__name__)


def display_image(page: Page) -> bytes:
    """A page image as the service keeps it for people to look at: WebP, at most ``IMAGE_PIXELS`` (a scan at
    2.4 MP is ~0.2-0.5 MB instead of 3-5 MB of PNG; ~50 ms)."""
    image = page.image
    pixels = image.width * image.height
    if pixels > IMAGE_PIXELS:
        scale = (IMAGE_PIXELS / pixels) ** 0.5
        image = image.resize(
            (max(1, int(image.width * scale)), max(1, int(image.height * scale))), Image.Resampling.BILINEAR
        )
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=80, method=0)
    return buffer.getvalue()


class JobSink:
    """Where a job's pages land: images stored as pages render, results the moment each page finishes."""

    def __init__(self, runner: JobRunner, record: JobRecord, entries: dict[int, PageEntry], engine: str) -> None:
        self._runner = runner
        self._record = record
        self._entries = entries
        self._engine = engine

    def rendered(self, page: Page) -> None:
        entry = self._entries.get(page.number)
        if entry is None:
            return
        # a missing image must not fail the page, but why it is missing must be seen
        try:
            data = display_image(page)
        except Exception:  # the encoder refused the page (a bug of ours or PIL's): the traceback is the lead
            logger.exception("job %s page %d: page image not encoded; kept without it", self._record.id, entry.n)
            return
        try:
            self._runner.store.put_image(self._record.id, entry.n, data)
        except OSError as exc:  # the storage refused it (full, a bucket failing): its message says why
            logger.warning("job %s page %d: page image not stored: %s", self._record.id, entry.n, exc)
            return
        except Exception:  # anything else from the storage library: with its traceback
            logger.exception("job %s page %d: page image not stored", self._record.id, entry.n)
            return
        with self._runner.table.changing(self._record.id):
            entry.image = True

    def done(self, page: PageResult) -> None:
        entry = self._entries.get(page.number)
        if entry is None:
            return
        geometry = geometry_of(page) if page.ok else None
        if geometry is not None:  # before the page shows as done, so whoever sees it done finds its words
            try:
                self._runner.store.put_words(self._record.id, entry.n, geometry.to_json())
            except OSError as exc:  # the storage refused it; without it the PDF spreads the text down the page
                logger.warning("job %s page %d: word boxes not stored: %s", self._record.id, entry.n, exc)
            except Exception:  # anything else: with its traceback
                logger.exception("job %s page %d: word boxes not stored", self._record.id, entry.n)
        with self._runner.table.changing(self._record.id):
            if entry.rerun is not None:  # read again: the reading it replaces is kept (a new list: copies share it)
                entry.history = [*entry.history, reading_of(entry, self._record)]
                entry.rerun = None
            entry.engine = self._engine or None
            entry.status = "done" if page.ok else "failed"
            entry.markdown = page.markdown
            entry.source = page.source
            entry.seconds = round(page.seconds, 3)
            entry.error = page.error
            entry.width, entry.height = page.width, page.height
            entry.meta = dict(page.meta) or None
        metrics = self._runner.metrics
        fallback = page.meta.get("fallback")
        metrics.pages.labels(status=entry.status, source=f"fallback-{fallback}" if fallback else page.source).inc()
        loops = page.meta.get("loops")
        if isinstance(loops, list):
            metrics.page_retries.inc(min(len(loops), self._runner.options.loop_retries))
        if fallback:
            metrics.page_fallbacks.labels(to=str(fallback)).inc()
        if page.source == "ocr" and not fallback:
            metrics.page_seconds.labels(engine=self._engine).observe(page.seconds)
        self._runner.writer.mark(self._record.id)


def reading_of(entry: PageEntry, record: JobRecord) -> PageReading:
    """The page's present reading, to keep in its history."""
    return PageReading(
        status="failed" if entry.status == "failed" else "done",
        engine=entry.engine or (record.engine.name if record.engine else None),
        source=entry.source,
        markdown=entry.markdown,
        error=entry.error,
        seconds=entry.seconds,
        meta=entry.meta,
        replaced_at=utcnow(),
    )
