"""PDF pages through pypdfium2: open, count, render one page at a time, read its text layer.

PDFium is not thread-safe: no two calls into it may run at the same time in one process, not even on different
documents. Every pdfium call in gnosis-ocr goes through this module and runs under ``PDFIUM_LOCK``, a process-wide
lock held for one step (open, one page, close) and never across a ``yield``. Threads may share the work that way;
to render in parallel, use processes.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from gnosis_ocr.documents.model import DocumentLimits, Page
from gnosis_ocr.documents.sizing import plan_page
from gnosis_ocr.errors import BrokenDocumentError, DocumentLimitError, EmptyDocumentError, EncryptedDocumentError

logger = logging.getLogger(__name__)

#: Serialises every call into PDFium in this process (see the module docstring). Re-entrant so close() may nest.
PDFIUM_LOCK = threading.RLock()

_DECRYPT_HINT = "Remove the password first, e.g. `qpdf --decrypt --password=PASSWORD in.pdf out.pdf`, and upload that."
_REPAIR_HINT = (
    "Re-export it from the program that made it, or try a repair, e.g. `qpdf in.pdf repaired.pdf` "
    "or `mutool clean in.pdf repaired.pdf`."
)


class PdfPages:
    """An open PDF. Pages are loaded, rendered and closed one at a time; nothing is kept between pages."""

    def __init__(self, source: Path | bytes, *, name: str, limits: DocumentLimits) -> None:
        self.name = name
        self._limits = limits
        self._source = source  # PDFium reads bytes in place: they must outlive the document
        with PDFIUM_LOCK:
            self._pdf: Any = _open(source, name)
            try:
                self.page_count: int = len(self._pdf)
                self._pdf.init_forms()  # so filled-in form fields are drawn, as a viewer shows them
            except BaseException:
                self._pdf.close()
                raise

    def render(self, number: int, pixels_left: int) -> tuple[Page, int]:
        """Page ``number`` (1-based) rendered to the target size, with its text layer, and the pixels it cost.

        Raises ``DocumentLimitError`` before rendering when the page would cost more than ``pixels_left``.
        """
        with PDFIUM_LOCK:
            try:
                page = self._pdf.get_page(number - 1)
            except pdfium.PdfiumError as exc:
                raise BrokenDocumentError(
                    f"{self.name}: page {number} is damaged: PDFium cannot load it ({exc})", hint=_REPAIR_HINT
                ) from exc
            try:
                width, height = page.get_size()  # PDF points, /Rotate already applied
                plan = plan_page(width, height, self._limits)
                if plan.pixels > pixels_left:
                    raise DocumentLimitError(
                        f"{self.name}: page {number} was not rendered: its {plan.pixels:,} pixels would pass the "
                        f"document's pixel budget of {self._limits.max_total_pixels:,} (GNOSIS_MAX_TOTAL_PIXELS).",
                        hint="Select fewer pages (--pages) or raise GNOSIS_MAX_TOTAL_PIXELS.",
                    )
                bitmap = page.render(scale=plan.scale, rev_byteorder=True)  # RGB on white
                try:
                    image = bitmap.to_pil()  # an RGB bitmap is decoded into a new Pillow image, not shared
                finally:
                    bitmap.close()
                text = _text_layer(page, self.name, number)
            finally:
                page.close()
        result = Page(number=number, image=image, text_layer=text, source_size=(width, height), scale=plan.scale)
        return result, image.width * image.height

    def close(self) -> None:
        with PDFIUM_LOCK:
            self._pdf.close()  # closes any page, text page or form handle still open under it


def _open(source: Path | bytes, name: str) -> Any:
    """A ``pypdfium2.PdfDocument`` with at least one page. For bytes, the caller keeps ``source`` alive until close.

    The raw loaders are called directly because ``PdfDocument(input)`` treats a document without pages as a load
    failure, reports a stale error code for it and leaves the loaded handle (and for a path, the file) open.
    """
    if isinstance(source, Path):
        path = (str(source) + "\x00").encode("utf-8", errors="surrogateescape")
        raw = pdfium_c.FPDF_LoadDocument(path, None)
    else:
        raw = pdfium_c.FPDF_LoadMemDocument64(source, len(source), None)
    if not raw:
        raise _load_error(pdfium_c.FPDF_GetLastError(), name)
    pdf = pdfium.PdfDocument(raw)
    if len(pdf) < 1:
        pdf.close()
        raise EmptyDocumentError(f"{name} is a PDF without pages.", hint=_REPAIR_HINT)
    return pdf


def _load_error(code: int, name: str) -> Exception:
    if code == pdfium_c.FPDF_ERR_PASSWORD:
        return EncryptedDocumentError(
            f"{name} is password-protected: the PDF is encrypted and needs a password to open.", hint=_DECRYPT_HINT
        )
    if code == pdfium_c.FPDF_ERR_SECURITY:
        return EncryptedDocumentError(
            f"{name} is encrypted with a security scheme PDFium does not support.", hint=_DECRYPT_HINT
        )
    if code == pdfium_c.FPDF_ERR_FILE:
        return OSError(f"PDFium could not read {name} (file access error)")
    reason = pdfium.internal.ErrorToStr.get(code, f"error {code}")
    return BrokenDocumentError(
        f"{name} is a damaged PDF that PDFium cannot open ({reason.lower()}). It may be truncated, as by an "
        "interrupted download or upload, or broken beyond what PDFium repairs.",
        hint=_REPAIR_HINT,
    )


def _text_layer(page: Any, name: str, number: int) -> str | None:
    """The page's born-digital text, lines joined with ``\\n``; None when it has none. Never fails the page."""
    try:
        # pdfium reads a /Rotate 90 page's text bottom to top; its text is in writing order only unrotated.
        # The image is already rendered and the document is never saved, so unrotating here changes nothing else.
        if page.get_rotation():
            page.set_rotation(0)
        textpage = page.get_textpage()
        try:
            raw: str = textpage.get_text_range()
        finally:
            textpage.close()
    except Exception as exc:  # the image is what matters; a page without a text layer is simply OCRed
        logger.warning("document %s: page %d: text layer unreadable, going on without it: %s", name, number, exc)
        return None
    lines = raw.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").split("\n")
    text = "\n".join(line.rstrip() for line in lines).strip()
    return text or None
