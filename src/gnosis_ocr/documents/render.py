"""UPLOAD -> PAGES: open a document, check it against the limits, and render its pages one at a time.

    with open_document(path, limits=limits) as doc:
        for item in doc.pages(parse_page_selection("1-3", doc.page_count)):
            ...  # a Page (image, text layer) or a PageError (that page failed; the rest go on)

Order of checks, cheapest first and always before the expensive step they guard: size in bytes, then the kind
(sniffed from the first bytes), then opening (encrypted, broken, empty), then the page count, then per page its
pixels (from the page size or the image header, before rendering or decoding) and the document's pixel budget.

Opening and rendering run in worker processes (``documents.isolated``) under ``DocumentLimits.render_memory_bytes``
and ``render_timeout``: a page that exhausts them is that page's ``PageError``, a document that does so on opening
is a ``DocumentLimitError``. ``render_workers=0`` does both in this process instead, unbounded (trusted input only).
"""

from __future__ import annotations

import logging
import os
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol

from gnosis_ocr.documents.model import DocumentLimits, Kind, Page, PageError
from gnosis_ocr.documents.pages import check_page_numbers
from gnosis_ocr.documents.sniff import HEAD_BYTES, sniff
from gnosis_ocr.errors import DocumentError, DocumentLimitError

logger = logging.getLogger(__name__)

_DEFAULT_LIMITS = DocumentLimits()


class _Pages(Protocol):
    """What a format backend (``pdf.PdfPages``, ``images.ImagePages``) offers the document."""

    page_count: int

    def render(self, number: int, pixels_left: int) -> tuple[Page, int]: ...

    def close(self) -> None: ...


class Document:
    """An open document. Use it as a context manager, or call ``close()``; pages are rendered only when asked for.

    Not safe to share between threads; separate documents may be used from separate threads.
    """

    def __init__(self, backend: _Pages, *, kind: Kind, name: str, limits: DocumentLimits) -> None:
        self.kind: Kind = kind
        self.name = name
        self.page_count = backend.page_count
        self._backend = backend
        self._limits = limits
        self._pixels_used = 0
        # a document dropped without close() still releases its file and PDFium handles (under the PDFium lock)
        self._finalizer = weakref.finalize(self, backend.close)

    def pages(self, numbers: Sequence[int] | None = None) -> Iterator[Page | PageError]:
        """The pages ``numbers`` (1-based, all by default), rendered lazily in the order given.

        Each item is a ``Page`` or, where that page could not be rendered, a ``PageError``; one bad page never stops
        the others. Only the page being rendered is held here, so memory stays bounded by one page however long the
        document. Raises ``ConfigError`` up front for a number that is not a page of this document.
        """
        wanted = check_page_numbers(range(1, self.page_count + 1) if numbers is None else numbers, self.page_count)
        if self.closed:
            raise ValueError(f"{self.name} is closed")
        return (self._render(number) for number in wanted)

    def _render(self, number: int) -> Page | PageError:
        if not self._finalizer.alive:
            raise ValueError(f"{self.name} is closed")
        try:
            page, cost = self._backend.render(number, self._limits.max_total_pixels - self._pixels_used)
        except DocumentError as exc:  # over a limit, or a damaged page: said in our words by the backend
            logger.warning("document %s: page %d/%d failed: %s", self.name, number, self.page_count, exc.message)
            return PageError(number=number, message=exc.message)
        except Exception as exc:  # a third-party failure on one page is that page's error, not the document's
            logger.warning(
                "document %s: page %d/%d failed: %s: %s", self.name, number, self.page_count, type(exc).__name__, exc
            )
            return PageError(number=number, message=f"{self.name}: page {number} could not be rendered: {exc}")
        self._pixels_used += cost
        logger.debug("document %s: page %d/%d rendered at %dx%d", self.name, number, self.page_count, *page.image.size)
        return page

    def close(self) -> None:
        """Release the file and every PDFium/Pillow handle. Pages already yielded stay usable. Idempotent."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> Document:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Document {self.name!r} {self.kind}, pages={self.page_count}, {state}>"


def open_document(
    source: Path | bytes, *, limits: DocumentLimits = _DEFAULT_LIMITS, name: str | None = None
) -> Document:
    """Open a PDF, PNG, JPEG, TIFF or WebP from a path or from bytes; the kind is sniffed from its content.

    ``name`` names the document in messages (default: the file name, or "The upload" for bytes). Raises a
    ``DocumentError``: ``EmptyDocumentError``, ``UnsupportedDocumentError``, ``EncryptedDocumentError``,
    ``BrokenDocumentError`` or ``DocumentLimitError`` (bytes, pages, a single image's pixels, or opening past the
    render limits); an ``OSError`` when the path cannot be read.
    """
    if isinstance(source, Path):
        label = name or source.name
        size = source.stat().st_size
        _check_bytes(size, label, limits)
        with source.open("rb") as file:
            head = file.read(HEAD_BYTES)
    else:
        label = name or "The upload"
        size = len(source)
        _check_bytes(size, label, limits)
        head = source[:HEAD_BYTES]
    kind = sniff(head, name=label)
    backend = (
        open_backend(source, kind, label, limits)
        if limits.render_workers == 0
        else _isolated(source, kind, label, limits)
    )
    if backend.page_count > limits.max_pages:
        backend.close()
        raise DocumentLimitError(
            f"{label} has {backend.page_count:,} pages, over the limit of {limits.max_pages:,} (GNOSIS_MAX_PAGES).",
            hint="Raise GNOSIS_MAX_PAGES to read it, or split it first (e.g. `qpdf --split-pages in.pdf part.pdf`).",
        )
    logger.debug("document %s: %s, %d bytes, %d pages", label, kind, size, backend.page_count)
    return Document(backend, kind=kind, name=label, limits=limits)


def _check_bytes(size: int, name: str, limits: DocumentLimits) -> None:
    if size > limits.max_bytes:
        raise DocumentLimitError(
            f"{name} is {_human_bytes(size)}, over the limit of {_human_bytes(limits.max_bytes)} (GNOSIS_MAX_BYTES).",
            hint="Split or compress the document, or raise GNOSIS_MAX_BYTES if documents this large are expected.",
        )


def _human_bytes(size: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{size / factor:,.1f} {unit}"
    return f"{size} bytes"


def _isolated(source: Path | bytes, kind: Kind, name: str, limits: DocumentLimits) -> _Pages:
    """Open ``source`` in a worker process; bytes are spooled to a temporary file for the workers to read."""
    from gnosis_ocr.documents.isolated import IsolatedPages, Source, open_isolated

    if isinstance(source, Path):
        path, spooled = source, False
    else:
        fd, spool = tempfile.mkstemp(prefix="gnosis-ocr-document-")
        path, spooled = Path(spool), True
        with os.fdopen(fd, "wb") as file:
            file.write(source)
    try:
        located = Source.of(path, kind=kind, name=name, limits=limits)
        return IsolatedPages(located, open_isolated(located), spooled=spooled)
    except BaseException:
        if spooled:
            path.unlink(missing_ok=True)
        raise


def open_backend(source: Path | bytes, kind: Kind, name: str, limits: DocumentLimits) -> _Pages:
    """The in-process backend for ``source`` (in a render worker, or everywhere with ``render_workers=0``)."""
    # imported here: pypdfium2 alone takes ~0.1 s to import, and `import gnosis_ocr` must stay quick
    if kind == "pdf":
        from gnosis_ocr.documents.pdf import PdfPages

        return PdfPages(source, name=name, limits=limits)
    from gnosis_ocr.documents.images import ImagePages

    return ImagePages(source, kind, name=name, limits=limits)
