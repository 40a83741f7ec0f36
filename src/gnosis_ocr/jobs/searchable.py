"""A searchable PDF: every page image with its text as an invisible layer where the words are.

Each PDF page has the size of the page it shows (a PDF page keeps its own size in points, rotation applied; an
image page is its rendered image at ``NOMINAL_DPI``), the page image over all of it (the stored display image, at
most 2 MP, as JPEG quality 75), and the page's text over that in render mode 3 (invisible), so a viewer finds,
selects and copies the words where they stand. Where the text goes is ``jobs.textlayer``: word boxes (tesseract,
text-layer and layout pages), else layout blocks (``meta["blocks"]``), else the page's text line by line.

The writer is pypdfium2 (PDFium, already the reader of uploads; no new PDF library). Chosen over reportlab (BSD,
a dev dependency here) by measuring the same 100 dense pages on this machine: 7.6 s against 16.0 s, similar peak
memory at that size; and because PDFium loads a JPEG *lazily*: the image object keeps a reader on the spool file
and PDFium reads the bytes only while saving, where reportlab and pikepdf keep every image in memory until the
save. Memory holds the pages being read and converted (``2 * workers``), the text placements (~30 bytes a word)
and PDFium's page dictionaries and compressed content streams (~4 kB a dense page); bench/pdf_bench.py measures it.

The font is made per document with fontTools: a TrueType font with one glyph per character the text uses (a box
half an em wide, never drawn; a few kB, ~85 kB for 3,000 CJK characters), which PDFium embeds with a ToUnicode map,
so copied text is the text in any script (the standard Helvetica with WinAnsi cannot carry Cyrillic, Greek or CJK).
PDFium cannot encode characters beyond the Basic Multilingual Plane (emoji, rare CJK) in a text object: they are
left out of the layer.

Every PDFium call runs under ``documents.pdf.PDFIUM_LOCK``, one page at a time, and the save under it once.
"""

from __future__ import annotations

import array
import collections
import contextlib
import ctypes
import functools
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from gnosis_ocr.documents.model import Page, WordBox
from gnosis_ocr.jobs.textlayer import (
    ADVANCE,
    ASCENT,
    DESCENT,
    NOMINAL_DPI,
    PdfPage,
    Run,
    page_points,
    page_runs,
    plain_text,
)

if TYPE_CHECKING:
    from gnosis_ocr.jobs.record import JobRecord, PageEntry
    from gnosis_ocr.jobs.results import DocumentResult, PageResult
    from gnosis_ocr.jobs.store import JobStore

logger = logging.getLogger(__name__)

__all__ = [
    "NOMINAL_DPI",
    "PageGeometry",
    "PageImages",
    "PdfPage",
    "SearchablePdf",
    "job_pages",
    "pdf_file",
    "plain_text",
    "write_pdf",
]

JPEG_QUALITY = 75
MAX_IMAGE_PIXELS = 2_000_000  # as the service keeps page images for display

PDF_MEDIA_TYPE = "application/pdf"


# -- what a page brings ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageGeometry:
    """What is stored beside a page's result for the PDF (``pages/<n>.words.json``): its pixel frame, size in
    points and word boxes."""

    width: int
    height: int
    points: tuple[float, float] | None = None
    words: tuple[WordBox, ...] = ()

    def to_json(self) -> bytes:
        body = {
            "width": self.width,
            "height": self.height,
            "points": list(self.points) if self.points else None,
            "words": [list(w) for w in self.words],
        }
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PageGeometry | None:
        """The geometry in ``data``; None when it is not one (a damaged file is ignored, never fatal)."""
        try:
            body = json.loads(data)
            points = body.get("points")
            words = tuple(
                WordBox(int(w[0]), int(w[1]), int(w[2]), int(w[3]), str(w[4]), int(w[5])) for w in body["words"]
            )
            return cls(
                int(body["width"]),
                int(body["height"]),
                (float(points[0]), float(points[1])) if points else None,
                words,
            )
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return None


def geometry_of(result: PageResult) -> PageGeometry | None:
    """The geometry of a finished page (None without a pixel frame: a page that never rendered)."""
    if result.width is None or result.height is None:
        return None
    return PageGeometry(result.width, result.height, result.points, result.word_boxes)


# -- the font ----------------------------------------------------------------------------------------------------


def glyphless_font(chars: Iterable[str]) -> bytes:
    """A TrueType font with a glyph half an em wide for each character (BMP only) and the space."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen
    from fontTools.ttLib.tables._g_l_y_f import Glyph

    advance = round(ADVANCE * 1000)
    ascent, descent = round(ASCENT * 1000), round(DESCENT * 1000)

    points = sorted({ord(c) for c in chars if " " < c <= "\uffff"} | {0x20})
    names = [".notdef", "cell"] + [f"g{cp:04X}" for cp in points]
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder(names)
    builder.setupCharacterMap({cp: f"g{cp:04X}" for cp in points})
    # Each glyph a box over its whole cell: never drawn (render mode 3), but PDFium skips a one-letter text object
    # whose glyph has no outline, and the box gives selection its height. One outline; every character refers to
    # it (a composite glyph, ~28 bytes), so 3,000 CJK characters make a font of ~85 kB, not ~115 kB.
    pen = TTGlyphPen(None)
    pen.moveTo((0, -descent))
    pen.lineTo((0, ascent))
    pen.lineTo((advance, ascent))
    pen.lineTo((advance, -descent))
    pen.closePath()
    glyphs = {".notdef": Glyph(), "cell": pen.glyph(), "g0020": Glyph()}
    for name in names[3:]:
        ref = TTGlyphPen({"cell": glyphs["cell"]})
        ref.addComponent("cell", (1, 0, 0, 1, 0, 0))
        glyphs[name] = ref.glyph()
    builder.setupGlyf(glyphs)
    builder.setupHorizontalMetrics({name: (advance, 0) for name in names})
    builder.setupHorizontalHeader(ascent=ascent, descent=-descent)
    builder.setupNameTable({"familyName": "GnosisTextLayer", "styleName": "Regular"})
    builder.setupOS2(sTypoAscender=ascent, sTypoDescender=-descent, usWinAscent=ascent, usWinDescent=descent)
    builder.setupPost()
    out = io.BytesIO()
    builder.save(out)
    return out.getvalue()


# -- the writer --------------------------------------------------------------------------------------------------


def jpeg(data: bytes) -> tuple[bytes, tuple[int, int]]:
    """A page image as JPEG (as it is, when it is one already and small enough) and its size in pixels."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG" and image.mode in ("RGB", "L") and image.width * image.height <= MAX_IMAGE_PIXELS:
            return data, image.size
        picture = image.convert("RGB") if image.mode not in ("RGB", "L") else image
        pixels = picture.width * picture.height
        if pixels > MAX_IMAGE_PIXELS:
            scale = (MAX_IMAGE_PIXELS / pixels) ** 0.5
            size = (max(1, int(picture.width * scale)), max(1, int(picture.height * scale)))
            picture = picture.resize(size, Image.Resampling.BILINEAR)
        out = io.BytesIO()
        picture.save(out, format="JPEG", quality=JPEG_QUALITY)
        return out.getvalue(), picture.size


class _Window(io.RawIOBase):
    """A read-only file over ``length`` bytes at ``offset`` of an open file descriptor (one spooled JPEG)."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        super().__init__()
        self._fd, self._offset, self._length, self._pos = fd, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + pos))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = min(len(view), self._length - self._pos)
        if count <= 0:
            return 0
        data = os.pread(self._fd, count, self._offset + self._pos)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


@dataclass
class _Pending:
    """One page waiting for ``write``, compactly: its runs' texts joined by newlines (which no run holds) and their
    size and matrix as float32, seven numbers a run (~30 bytes a word instead of ~300 as objects)."""

    points: tuple[float, float]
    image: tuple[int, int] | None  # (offset, length) in the spool
    texts: str = ""
    numbers: array.array[float] = field(default_factory=lambda: array.array("f"))

    @classmethod
    def of(cls, points: tuple[float, float], image: tuple[int, int] | None, runs: Sequence[Run]) -> _Pending:
        numbers = array.array("f")
        for run in runs:
            numbers.append(run.size)
            numbers.extend(run.matrix)
        return cls(points, image, "\n".join(run.text for run in runs), numbers)

    def runs(self) -> Iterator[Run]:
        if not self.texts:
            return
        for k, text in enumerate(self.texts.split("\n")):
            size, *matrix = self.numbers[7 * k : 7 * k + 7]
            yield Run(text, size, (matrix[0], matrix[1], matrix[2], matrix[3], matrix[4], matrix[5]))


class SearchablePdf:
    """Collects pages (``add``) and writes the PDF (``write``). Images go to a spool file as they are added; the
    text placements stay in memory (~30 bytes a word, ~25 kB for a dense page: the font must know every character
    before the first text object is made); nothing touches PDFium before ``write``."""

    def __init__(self, spool_dir: Path | None = None) -> None:
        self._spool: IO[bytes] = tempfile.TemporaryFile(prefix="gnosis-pdf-", dir=spool_dir)  # noqa: SIM115 (closed by close)
        self._pages: list[_Pending] = []
        self._chars: set[str] = set()
        self._previous: tuple[float, float] | None = None

    def __enter__(self) -> SearchablePdf:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._spool.close()

    @property
    def page_count(self) -> int:
        return len(self._pages)

    def add(self, page: PdfPage, image_jpeg: bytes | None = None) -> None:
        """Add a page; ``image_jpeg`` is its image as ``page_jpeg`` made it already (else it is made here)."""
        points = page_points(page, self._previous)
        self._previous = points
        data = image_jpeg if image_jpeg is not None else page_jpeg(page, len(self._pages) + 1)
        image = None
        if data is not None:
            offset = self._spool.seek(0, os.SEEK_END)
            self._spool.write(data)
            image = (offset, len(data))
        runs = page_runs(page, points)
        for run in runs:
            self._chars.update(run.text)
        self._pages.append(_Pending.of(points, image, runs))

    def write(self, out: IO[bytes]) -> None:
        """Write the PDF to ``out`` (a binary file)."""
        import pypdfium2 as pdfium
        import pypdfium2.raw as pdfium_c

        from gnosis_ocr.documents.pdf import PDFIUM_LOCK

        self._spool.flush()
        fd = self._spool.fileno()
        font_data = glyphless_font(self._chars)
        font_buffer = (ctypes.c_uint8 * len(font_data)).from_buffer_copy(font_data)
        with PDFIUM_LOCK:
            pdf = pdfium.PdfDocument.new()
        try:
            with PDFIUM_LOCK:
                font = pdfium_c.FPDFText_LoadFont(
                    pdf.raw, font_buffer, len(font_data), pdfium_c.FPDF_FONT_TRUETYPE, True
                )
                if not font:
                    raise RuntimeError("PDFium refused the text layer's font")
            try:
                for pending in self._pages:
                    with PDFIUM_LOCK:
                        self._write_page(pdf, font, fd, pending)
                with PDFIUM_LOCK:
                    pdf.save(out)
            finally:
                with PDFIUM_LOCK:
                    pdfium_c.FPDFFont_Close(font)
        finally:
            with PDFIUM_LOCK:
                pdf.close()

    @staticmethod
    def _write_page(pdf: Any, font: Any, fd: int, pending: _Pending) -> None:
        import pypdfium2 as pdfium
        import pypdfium2.raw as pdfium_c

        width, height = pending.points
        page = pdf.new_page(width, height)
        try:
            if pending.image is not None:
                image = pdfium.PdfImage.new(pdf)
                image.load_jpeg(_Window(fd, *pending.image), inline=False, autoclose=True)
                image.set_matrix(pdfium.PdfMatrix(width, 0, 0, height, 0, 0))
                page.insert_obj(image)
            for run in pending.runs():
                obj = pdfium_c.FPDFPageObj_CreateTextObj(pdf.raw, font, ctypes.c_float(run.size))
                text = ctypes.create_string_buffer((run.text + "\x00").encode("utf-16-le"))
                pdfium_c.FPDFText_SetText(obj, ctypes.cast(text, pdfium_c.FPDF_WIDESTRING))
                pdfium_c.FPDFTextObj_SetTextRenderMode(obj, pdfium_c.FPDF_TEXTRENDERMODE_INVISIBLE)
                pdfium_c.FPDFPageObj_Transform(obj, *run.matrix)
                pdfium_c.FPDFPage_InsertObject(page.raw, obj)
            page.gen_content()
        finally:
            page.close()


# -- a job's pages, a CLI document's pages -------------------------------------------------------------------------


def job_pages(record: JobRecord, store: JobStore, document: int | None = None) -> Iterator[Callable[[], PdfPage]]:
    """The job's pages in order (one document's with ``document``), each a call that reads it from the store: its
    image, its stored geometry, its text and layout blocks."""
    for entry in record.pages:
        if document is not None and entry.document != document:
            continue
        yield functools.partial(_job_page, record.id, entry, store)


def _job_page(job_id: str, entry: PageEntry, store: JobStore) -> PdfPage:
    stored = store.image(job_id, entry.n) if entry.image else None
    image = stored[0] if stored is not None else None
    if entry.status != "done":
        return PdfPage(image, entry.width, entry.height)
    raw = store.words(job_id, entry.n)
    geometry = PageGeometry.from_json(raw) if raw is not None else None
    words: tuple[WordBox, ...] = ()
    points = None
    if geometry is not None and (geometry.width, geometry.height) == (entry.width, entry.height):
        words, points = geometry.words, geometry.points  # a file from an earlier reading of the page is not used
    blocks = (entry.meta or {}).get("blocks")
    return PdfPage(
        image,
        entry.width,
        entry.height,
        points,
        entry.markdown or "",
        words,
        blocks if isinstance(blocks, list) else (),
    )


class PageImages:
    """Page images kept while a document is read outside the service (the CLI): each rendered page as JPEG (at most
    ``MAX_IMAGE_PIXELS``) in a temporary spool file, by page number; ``on_render`` is the pipeline's hook."""

    def __init__(self, spool_dir: Path | None = None) -> None:
        self._spool: IO[bytes] = tempfile.TemporaryFile(prefix="gnosis-pages-", dir=spool_dir)  # noqa: SIM115 (closed by close)
        self._where: dict[int, tuple[int, int]] = {}

    def __enter__(self) -> PageImages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._spool.close()

    def on_render(self, page: Page) -> None:
        out = io.BytesIO()
        picture = page.image if page.image.mode in ("RGB", "L") else page.image.convert("RGB")
        pixels = picture.width * picture.height
        if pixels > MAX_IMAGE_PIXELS:
            from PIL import Image

            scale = (MAX_IMAGE_PIXELS / pixels) ** 0.5
            size = (max(1, int(picture.width * scale)), max(1, int(picture.height * scale)))
            picture = picture.resize(size, Image.Resampling.BILINEAR)
        picture.save(out, format="JPEG", quality=JPEG_QUALITY)
        data = out.getvalue()
        offset = self._spool.seek(0, os.SEEK_END)
        self._spool.write(data)
        self._where[page.number] = (offset, len(data))

    def get(self, number: int) -> bytes | None:
        where = self._where.get(number)
        if where is None:
            return None
        self._spool.flush()
        return os.pread(self._spool.fileno(), where[1], where[0])


def result_pages(result: DocumentResult, images: PageImages) -> Iterator[PdfPage]:
    """A CLI document's pages: its results, in memory, with the page images spooled while it was read."""
    for page in result.pages:
        blocks = page.meta.get("blocks")
        yield PdfPage(
            images.get(page.number),
            page.width,
            page.height,
            page.points,
            page.markdown if page.ok else "",
            page.word_boxes if page.ok else (),
            blocks if isinstance(blocks, list) and page.ok else (),
        )


def page_jpeg(page: PdfPage, number: int) -> bytes | None:
    """The page's image as JPEG; None without one (an unreadable stored image leaves the page blank, not the PDF
    unmade)."""
    if page.image is None:
        return None
    try:
        return jpeg(page.image)[0]
    except Exception as exc:
        logger.warning("searchable pdf: page %d: image skipped: %s", number, exc)
        return None


PageSource = PdfPage | Callable[[], PdfPage]  # a page, or how to read it (from a store: read in a worker thread)


def _prepared(pages: Iterable[PageSource], workers: int) -> Iterator[tuple[PdfPage, bytes | None]]:
    """Pages with their JPEG, read and converted ``workers`` at a time ahead of the writer (Pillow and the stores
    release the GIL), in order; at most ``2 * workers`` pages are held."""

    def prepare(source: PageSource, number: int) -> tuple[PdfPage, bytes | None]:
        page = source() if callable(source) else source
        return page, page_jpeg(page, number)

    with ThreadPoolExecutor(workers, thread_name_prefix="gnosis-pdf") as pool:
        window: collections.deque[Future[tuple[PdfPage, bytes | None]]] = collections.deque()
        try:
            for number, source in enumerate(pages, 1):
                window.append(pool.submit(prepare, source, number))
                if len(window) >= 2 * workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()


def write_pdf(
    pages: Iterable[PageSource], out: IO[bytes], *, spool_dir: Path | None = None, workers: int | None = None
) -> int:
    """Write a searchable PDF of ``pages`` to ``out``; the number of pages written. Pages are read and their images
    converted by ``workers`` threads (default 2, fewer on one core: a bucket's latency overlaps the conversion, and
    the OCR running beside keeps its cores) while the writer collects them."""
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    with SearchablePdf(spool_dir) as writer:
        for page, image in _prepared(pages, workers):
            writer.add(page, image)
        writer.write(out)
        return writer.page_count


@contextlib.contextmanager
def pdf_file(pages: Iterable[PageSource], *, spool_dir: Path | None = None) -> Iterator[tuple[IO[bytes], int]]:
    """The PDF in an anonymous temporary file (rewound) and its page count; the file is gone afterwards."""
    with tempfile.TemporaryFile(prefix="gnosis-result-", suffix=".pdf", dir=spool_dir) as out:
        count = write_pdf(pages, out, spool_dir=spool_dir)
        out.flush()
        out.seek(0)
        yield out, count
