"""PDF pages through pypdfium2: open, count, render one page at a time, read its text layer.

PDFium is not thread-safe: no two calls into it may run at the same time in one process, not even on different
documents. Every pdfium call in gnosis-ocr goes through this module (or the searchable PDF's writer,
``jobs.searchable``) and runs under ``PDFIUM_LOCK``, a process-wide lock held for one step (open, one page, close)
and never across a ``yield``. Threads may share the work that way; to render in parallel, use processes.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from gnosis_ocr.documents.model import DocumentLimits, Page, WordBox
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
                text, boxes = _text_layer(page, self.name, number, image.size)
            finally:
                page.close()
        result = Page(
            number=number,
            image=image,
            text_layer=text,
            source_size=(width, height),
            scale=plan.scale,
            points=(width, height),
            text_layer_boxes=boxes,
        )
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


def _text_layer(page: Any, name: str, number: int, size: tuple[int, int]) -> tuple[str | None, tuple[WordBox, ...]]:
    """The page's born-digital text, lines joined with ``\\n`` (None when it has none), and its words on the image
    rendered at ``size``. Never fails the page."""
    try:
        # pdfium reads a /Rotate 90 page's text bottom to top; its text is in writing order only unrotated.
        # The image is already rendered and the document is never saved, so unrotating here changes nothing else.
        rotation = page.get_rotation()
        if rotation:
            page.set_rotation(0)
        textpage = page.get_textpage()
        try:
            raw: str = textpage.get_text_range()
            boxes = _word_boxes(page, textpage, size, rotation) if raw.strip() else ()
        finally:
            textpage.close()
    except Exception as exc:  # the image is what matters; a page without a text layer is simply OCRed
        logger.warning("document %s: page %d: text layer unreadable, going on without it: %s", name, number, exc)
        return None, ()
    lines = raw.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").split("\n")
    text = "\n".join(line.rstrip() for line in lines).strip()
    return text or None, (boxes if text else ())


def _word_boxes(page: Any, textpage: Any, size: tuple[int, int], rotation: int) -> tuple[WordBox, ...]:
    """The text page's words (runs of characters between white space) with their boxes in image pixels.

    A character's loose box (its font's ascent to descent, as wide as its advance) is in page space; pdfium's
    page-to-device mapping puts it on the image as rendered at ``size`` with the page's ``rotation`` (the page itself
    is unrotated by now, so that mapping applies the rotation exactly once)."""
    raw_page, raw_text = page.raw, textpage.raw
    width, height = size
    turn = (rotation // 90) % 4
    rect = pdfium_c.FS_RECTF()
    dx, dy = ctypes.c_int(), ctypes.c_int()

    def device(x: float, y: float) -> tuple[int, int]:
        pdfium_c.FPDF_PageToDevice(raw_page, 0, 0, width, height, turn, x, y, dx, dy)
        return dx.value, dy.value

    words: list[WordBox] = []
    chars: list[str] = []
    box: list[int] = []
    line = 0

    def flush() -> None:
        if chars:
            words.append(WordBox(box[0], box[1], box[2], box[3], "".join(chars), line))
            chars.clear()

    for i in range(pdfium_c.FPDFText_CountChars(raw_text)):
        char = chr(pdfium_c.FPDFText_GetUnicode(raw_text, i))
        if char in "\r\n":
            flush()
            if char == "\n":
                line += 1
            continue
        if char.isspace() or char in "\x00\ufffe\uffff" or not pdfium_c.FPDFText_GetLooseCharBox(raw_text, i, rect):
            flush()
            continue
        (x0, y0), (x1, y1) = device(rect.left, rect.top), device(rect.right, rect.bottom)
        left, right, top, bottom = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        if chars:
            box[:] = [min(box[0], left), min(box[1], top), max(box[2], right), max(box[3], bottom)]
        else:
            box[:] = [left, top, right, bottom]
        chars.append(char)
    flush()
    return tuple(words)
