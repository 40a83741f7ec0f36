"""The searchable PDF: page images with an invisible text layer, read back with pypdfium2.

Real documents (reportlab PDFs with text layers, including a page turned by /Rotate), real tesseract readings of
rendered text (upright and turned), real PDFium on both ends. Each check finds a word in the written PDF and asks
that its box there overlaps the word's box on the page image."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from PIL import Image, ImageDraw, ImageFont
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas

from gnosis_ocr.documents.model import DocumentLimits, Page, WordBox
from gnosis_ocr.documents.pdf import PdfPages
from gnosis_ocr.engines.tesseract import TesseractEngine
from gnosis_ocr.jobs.searchable import (
    NOMINAL_DPI,
    PageGeometry,
    PageImages,
    PdfPage,
    plain_text,
    write_pdf,
)
from gnosis_ocr.jobs.sink import display_image
from tests.documents import make

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
needs_dejavu = pytest.mark.skipif(not DEJAVU.is_file(), reason="Debian's fonts-dejavu draws the non-Latin text")

Box = tuple[float, float, float, float]  # x0, y0, x1, y1, PDF points, y up


def unicode_pdf(lines: Sequence[tuple[float, float, str]], *, rotate: int = 0) -> bytes:
    """One letter-size page with each (x, y, text) drawn in DejaVu Sans 20 pt (real text, Unicode)."""
    pdfmetrics.registerFont(TTFont("DejaVuSans", str(DEJAVU)))
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=make.LETTER, invariant=True)
    pdf.setFont("DejaVuSans", 20)
    for x, y, text in lines:
        pdf.drawString(x, y, text)
    pdf.showPage()
    pdf.save()
    return make.rotated(buffer.getvalue(), {0: rotate}) if rotate else buffer.getvalue()


def render(data: bytes) -> list[Page]:
    pages = PdfPages(data, name="test.pdf", limits=DocumentLimits(render_workers=0))
    try:
        return [pages.render(n, 10**10)[0] for n in range(1, pages.page_count + 1)]
    finally:
        pages.close()


def as_pdf_page(page: Page, text: str, words: Sequence[WordBox], **kw: object) -> PdfPage:
    return PdfPage(display_image(page), page.image.width, page.image.height, page.points, text, words, **kw)  # type: ignore[arg-type]


def written(pages: Sequence[PdfPage]) -> pdfium.PdfDocument:
    out = io.BytesIO()
    assert write_pdf(pages, out) == len(pages)
    data = out.getvalue()
    assert data.startswith(b"%PDF-")
    return pdfium.PdfDocument(data)


def texts(pdf: pdfium.PdfDocument) -> Iterator[tuple[tuple[float, float], str, pdfium.PdfTextPage]]:
    for i in range(len(pdf)):
        page = pdf[i]
        textpage = page.get_textpage()
        yield page.get_size(), textpage.get_text_range(), textpage


def found(textpage: pdfium.PdfTextPage, word: str) -> Box:
    """The box (loose character boxes, PDF points) of the first place ``word`` is found in the text layer."""
    searcher = textpage.search(word, match_case=True)
    hit = searcher.get_next()
    assert hit is not None, f"{word!r} is not in the text layer"
    index, count = hit
    boxes = [textpage.get_charbox(index + k, loose=True) for k in range(count)]
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def on_page(box: WordBox, frame: tuple[int, int], points: tuple[float, float]) -> Box:
    """A word box on the page image (pixels, y down) in PDF points (y up)."""
    sx, sy = points[0] / frame[0], points[1] / frame[1]
    return (box.left * sx, points[1] - box.bottom * sy, box.right * sx, points[1] - box.top * sy)


def overlap(a: Box, b: Box) -> float:
    """The intersection over the smaller box's area: 1.0 when one lies inside the other."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller


def words_of(text: str) -> list[str]:
    return text.split()


# -- text-layer pages ------------------------------------------------------------------------------------------


@needs_dejavu
@pytest.mark.parametrize("rotate", [0, 90])
def test_a_text_layer_page_is_searchable_where_its_words_are(rotate: int) -> None:
    lines = [(72, 700, "Invoice number 2026-17"), (72, 640, "Привет мир, ελληνικά, naïve café")]
    lines.append((320, 90, "Total 42 €"))
    (page,) = render(unicode_pdf(lines, rotate=rotate))
    assert page.text_layer is not None and page.text_layer_boxes
    assert [w.text for w in page.text_layer_boxes] == words_of(page.text_layer)
    pdf = written([as_pdf_page(page, page.text_layer, page.text_layer_boxes)])
    (size, text, textpage), *_ = texts(pdf)
    assert size == ((612.0, 792.0) if rotate == 0 else (792.0, 612.0))  # the page as it is shown
    assert words_of(text) == words_of(page.text_layer)  # every word, in order, non-Latin ones too
    assert "Привет мир" in text and "naïve café" in text  # and the spaces between them
    frame = page.image.size
    for word in page.text_layer_boxes:
        if word.text in ("мир,", "naïve", "42", "Invoice"):
            assert overlap(found(textpage, word.text), on_page(word, frame, size)) > 0.6, word


def test_a_page_with_words_keeps_its_pdf_size_and_image() -> None:
    (page,) = render(make.text_pdf([["Hello there"]], pagesize=(300.0, 500.0)))
    pdf = written([as_pdf_page(page, page.text_layer or "", page.text_layer_boxes)])
    first = pdf[0]
    assert first.get_size() == (300.0, 500.0)
    images = [obj for obj in first.get_objects() if obj.type == pdfium.raw.FPDF_PAGEOBJ_IMAGE]
    assert len(images) == 1
    assert images[0].get_bounds() == pytest.approx((0.0, 0.0, 300.0, 500.0), abs=0.01)  # the whole page
    assert images[0].get_filters() == ["DCTDecode"]  # JPEG


# -- tesseract pages -------------------------------------------------------------------------------------------


LINES = ["The quick brown fox jumps", "over the lazy dog again", "Searchable layers matter"]


def drawn(turn: int) -> tuple[Image.Image, dict[str, tuple[int, int, int, int]]]:
    """Rendered lines of text, turned ``turn`` degrees counter-clockwise, and each word's box on that image."""
    font = ImageFont.truetype(str(DEJAVU), 40)
    image = Image.new("RGB", (1400, 900), "white")
    draw = ImageDraw.Draw(image)
    boxes: dict[str, tuple[int, int, int, int]] = {}
    for i, line in enumerate(LINES):
        x, y = 100.0, 150 + 130 * i
        draw.text((x, y), line, fill="black", font=font)
        for word in line.split():
            boxes.setdefault(word, draw.textbbox((x, y), word, font=font))  # type: ignore[arg-type]
            x += draw.textlength(word + " ", font=font)
    if turn == 90:
        width = image.width
        image = image.rotate(90, expand=True)
        boxes = {w: (top, width - right, bottom, width - left) for w, (left, top, right, bottom) in boxes.items()}
    return image, boxes


@needs_dejavu
@pytest.mark.parametrize("turn", [0, 90])
def test_a_tesseract_page_is_searchable_where_its_words_are(turn: int) -> None:
    image, truth = drawn(turn)
    with TesseractEngine(workers=1) as engine:
        (reading,) = engine.recognize([Page(1, image)])
    assert reading.ok and reading.word_boxes
    assert reading.meta["rotation"] == turn  # read turned back clockwise; its boxes are on the page as it came
    png = io.BytesIO()
    image.save(png, format="PNG")
    pdf = written([PdfPage(png.getvalue(), image.width, image.height, None, reading.markdown, reading.word_boxes)])
    (size, text, textpage), *_ = texts(pdf)
    assert size == pytest.approx((image.width * 72 / NOMINAL_DPI, image.height * 72 / NOMINAL_DPI))
    assert words_of(text) == words_of(reading.markdown)
    for word in ("quick", "lazy", "Searchable", "matter"):
        box = WordBox(*truth[word], word, 0)
        assert overlap(found(textpage, word), on_page(box, image.size, size)) > 0.6, word


# -- pages without boxes ---------------------------------------------------------------------------------------


def test_vlm_text_without_boxes_is_spread_down_the_page_and_round_trips() -> None:
    markdown = (
        "# Отчёт 2026\n\n<table><tr><th>Name</th><th>Wert</th></tr><tr><td>中文测试</td><td>42 €</td></tr></table>"
        "\n\n**Ελληνικά** and `code` — ok 😀\n\n<!-- page 3 -->"
    )
    image = Image.new("RGB", (1000, 1400), "white")
    pdf = written([PdfPage(make.image_bytes(image, "PNG"), 1000, 1400, (612.0, 792.0), markdown)])
    (_, text, textpage), *_ = texts(pdf)
    lines = [line.strip() for line in text.splitlines()]
    assert lines == ["Отчёт 2026", "Name Wert", "中文测试 42 €", "Ελληνικά and code — ok"]  # the emoji: not in the BMP
    top = found(textpage, "Отчёт")
    bottom = found(textpage, "Ελληνικά")
    assert top[1] > bottom[3]  # line by line, down the page
    assert 0 < top[0] < 612 * 0.1 and top[3] < 792


def test_layout_blocks_place_their_text_inside_the_block() -> None:
    blocks = [
        {"type": "title", "bbox": [100, 100, 900, 200], "text": "Annual report"},
        {"type": "text", "bbox": [100, 1000, 500, 1200], "text": "first line\nsecond line"},
        {"type": "figure", "bbox": [1, 2, 3]},  # no text, a bad box: ignored
        "not a block",
    ]
    pdf = written([PdfPage(None, 1000, 1400, None, "Annual report\n\nfirst line\nsecond line", (), blocks)])
    (size, text, textpage), *_ = texts(pdf)
    assert [line.strip() for line in text.splitlines()] == ["Annual report", "first line", "second line"]
    frame = (1000, 1400)
    title = on_page(WordBox(100, 100, 900, 200, "", 0), frame, size)
    body = on_page(WordBox(100, 1000, 500, 1200, "", 0), frame, size)
    assert overlap(found(textpage, "Annual report"), title) > 0.9
    assert overlap(found(textpage, "second line"), body) > 0.9
    first, second = found(textpage, "first"), found(textpage, "second")
    assert first[1] + first[3] > second[1] + second[3] + 20  # one line under the other


def test_pages_keep_their_order_and_blank_ones_their_place() -> None:
    pages = [
        PdfPage(None, 850, 1100, None, "one"),
        PdfPage(None),  # nothing known yet (a page still pending): the size of the one before
        PdfPage(None, 850, 1100, (200.0, 100.0), "three"),
    ]
    pdf = written(pages)
    got = [(size, text.strip()) for size, text, _ in texts(pdf)]
    first = (850 * 72 / NOMINAL_DPI, 1100 * 72 / NOMINAL_DPI)
    assert got == [(pytest.approx(first), "one"), (pytest.approx(first), ""), ((200.0, 100.0), "three")]


# -- pieces ----------------------------------------------------------------------------------------------------


def test_plain_text_of_markdown() -> None:
    markdown = "## Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- item **bold**\n\n![logo](x.png) [link](http://x)\n"
    assert plain_text(markdown) == ["Title", "a b", "1 2", "item bold", "logo link"]
    assert plain_text("a &amp; b<br>c<sup>2</sup>") == ["a & b", "c2"]


def test_geometry_round_trips_and_damage_is_ignored() -> None:
    geometry = PageGeometry(800, 600, (612.0, 792.0), (WordBox(1, 2, 3, 4, "Grüße", 0),))
    assert PageGeometry.from_json(geometry.to_json()) == geometry
    assert PageGeometry.from_json(b"{not json") is None
    assert PageGeometry.from_json(b'{"width": 1}') is None


def test_page_images_spool_what_the_pipeline_renders() -> None:
    with PageImages() as images:
        images.on_render(Page(3, Image.new("RGB", (2000, 2000), "white")))
        data = images.get(3)
        assert images.get(1) is None
    assert data is not None and data.startswith(b"\xff\xd8")
    with Image.open(io.BytesIO(data)) as kept:
        assert kept.width * kept.height <= 2_000_000


def test_the_text_layer_is_never_drawn() -> None:
    words = [WordBox(100 + 200 * i, 100, 280 + 200 * i, 160, w, 0) for i, w in enumerate(["ink", "would", "show"])]
    pdf = written([PdfPage(None, 1000, 1000, None, "ink would show", words)])
    (_, text, _), *_ = texts(pdf)
    assert text.split() == ["ink", "would", "show"]
    rendered = pdf[0].render(scale=1).to_pil().convert("L")
    assert rendered.getextrema() == (255, 255)  # a blank page: the glyphs (boxes) are there, in render mode 3
