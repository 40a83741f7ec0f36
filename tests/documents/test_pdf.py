"""PDFs through pypdfium2: text layers, rotation, sizing, and every way a PDF can be bad."""

from __future__ import annotations

import pytest
from PIL import Image

from gnosis_ocr.documents import DocumentLimits, Page, PageError, open_document
from gnosis_ocr.errors import BrokenDocumentError, EmptyDocumentError, EncryptedDocumentError
from tests.documents import make


def only_pages(items: list[Page | PageError]) -> list[Page]:
    assert all(isinstance(item, Page) for item in items), items
    return [item for item in items if isinstance(item, Page)]


def dark(image: Image.Image, box: tuple[float, float, float, float]) -> bool:
    """Whether the region (fractions of width and height) is mostly black."""
    w, h = image.size
    region = image.convert("L").crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)))
    histogram = region.histogram()
    return sum(i * n for i, n in enumerate(histogram)) / sum(histogram) < 64


def test_text_layer_matches_what_was_written(small: DocumentLimits) -> None:
    written = [
        ["Invoice 2024-117", "Total due: 1,234.56 EUR", "Thank you for your business."],
        ["Second page, second line below", "The quick brown fox jumps over the lazy dog."],
        [],
    ]
    with open_document(make.text_pdf(written), limits=small) as doc:
        assert (doc.kind, doc.page_count) == ("pdf", 3)
        pages = only_pages(list(doc.pages()))
    assert [page.number for page in pages] == [1, 2, 3]
    assert pages[0].text_layer == "\n".join(written[0])
    assert pages[1].text_layer == "\n".join(written[1])
    assert pages[2].text_layer is None  # a page without text has no text layer, not ""
    for page in pages:
        assert page.image.mode == "RGB"
        assert page.source_size == (612.0, 792.0)


def test_two_columns_come_out_column_by_column(small: DocumentLimits) -> None:
    left = [f"left column line {i}" for i in range(1, 9)]
    right = [f"right column line {i}" for i in range(1, 9)]
    with open_document(make.two_column_pdf(left, right), limits=small) as doc:
        (page,) = only_pages(list(doc.pages()))
    assert page.text_layer is not None
    lines = page.text_layer.split("\n")
    assert lines == left + right


@pytest.mark.parametrize(
    ("rotate", "size", "mark"),
    [
        (0, (400.0, 600.0), (0.0, 0.0, 0.2, 0.12)),  # the black square stays top-left
        (90, (600.0, 400.0), (0.88, 0.0, 1.0, 0.2)),  # turned clockwise: top-right
        (180, (400.0, 600.0), (0.8, 0.88, 1.0, 1.0)),  # bottom-right
        (270, (600.0, 400.0), (0.0, 0.8, 0.12, 1.0)),  # bottom-left
    ],
)
def test_rotate_is_applied(
    small: DocumentLimits, rotate: int, size: tuple[float, float], mark: tuple[float, float, float, float]
) -> None:
    with open_document(make.marked_pdf(rotate=rotate), limits=small) as doc:
        (page,) = only_pages(list(doc.pages()))
    assert page.source_size == size
    assert (page.image.width > page.image.height) == (size[0] > size[1])
    assert dark(page.image, mark)
    assert not dark(page.image, (0.4, 0.4, 0.6, 0.6))
    assert page.text_layer == "rotated page"


def test_tiny_page_is_scaled_up_to_the_target() -> None:
    with open_document(make.text_pdf([["tiny"]], pagesize=(100, 60), font_size=8)) as doc:
        (page,) = only_pages(list(doc.pages()))
    limits = DocumentLimits()
    assert page.source_size == (100.0, 60.0)
    assert page.scale == pytest.approx(20.0)
    assert page.image.size == (2000, 1200)
    assert abs(page.image.width * page.image.height - limits.target_pixels) / limits.target_pixels < 0.01
    assert page.text_layer == "tiny"


def test_tiny_page_gets_at_least_the_minimum_long_side() -> None:
    limits = DocumentLimits(target_pixels=50_000, min_long_side=1024)
    with open_document(make.text_pdf([["tiny"]], pagesize=(100, 60)), limits=limits) as doc:
        (page,) = only_pages(list(doc.pages()))
    assert page.image.size == (1024, 615)
    assert page.scale == pytest.approx(10.24)


def test_letter_page_at_default_limits_lands_on_the_target() -> None:
    with open_document(make.text_pdf([["a letter page"]])) as doc:
        (page,) = only_pages(list(doc.pages()))
    pixels = page.image.width * page.image.height
    assert abs(pixels - DocumentLimits().target_pixels) / DocumentLimits().target_pixels < 0.01


@pytest.mark.parametrize("maker", [make.encrypted_pdf, make.aes_encrypted_pdf])
def test_password_protected(maker: object) -> None:
    assert callable(maker)
    with pytest.raises(EncryptedDocumentError) as info:
        open_document(maker(), name="locked.pdf")
    assert info.value.message.startswith("locked.pdf is password-protected")
    assert info.value.hint is not None
    assert "qpdf --decrypt" in info.value.hint


def test_owner_password_only_opens(small: DocumentLimits) -> None:
    with open_document(make.owner_only_pdf(), limits=small) as doc:
        (page,) = only_pages(list(doc.pages()))
    assert page.text_layer == "open to read"


@pytest.mark.parametrize("maker", [make.truncated_pdf, make.hopeless_pdf])
def test_broken(maker: object) -> None:
    assert callable(maker)
    with pytest.raises(BrokenDocumentError) as info:
        open_document(maker(), name="broken.pdf")
    assert info.value.message.startswith("broken.pdf is a damaged PDF that PDFium cannot open (data format error)")
    assert "truncated" in info.value.message
    assert info.value.hint is not None
    assert "qpdf" in info.value.hint


def test_junk_before_the_header_is_tolerated(small: DocumentLimits) -> None:
    data = b"Content-Type: application/pdf\r\n\r\n" + make.text_pdf([["after some junk"]])
    with open_document(data, limits=small) as doc:
        (page,) = only_pages(list(doc.pages()))
    assert page.text_layer == "after some junk"


def test_broken_xref_is_rebuilt(small: DocumentLimits) -> None:
    with open_document(make.broken_xref_pdf(), limits=small) as doc:
        pages = only_pages(list(doc.pages()))
    assert [page.text_layer for page in pages] == ["xref is garbage", "still readable"]


def test_zero_pages() -> None:
    with pytest.raises(EmptyDocumentError, match=r"empty\.pdf is a PDF without pages"):
        open_document(make.zero_page_pdf(), name="empty.pdf")


def test_a_damaged_page_fails_alone(small: DocumentLimits) -> None:
    with open_document(make.bad_page_pdf(), limits=small, name="mixed.pdf") as doc:
        assert doc.page_count == 3
        first, second, third = doc.pages()
    assert isinstance(first, Page)
    assert first.text_layer == "page 1"
    assert isinstance(second, PageError)
    assert second.number == 2
    assert second.message.startswith("mixed.pdf: page 2 is damaged: PDFium cannot load it")
    assert isinstance(third, Page)
    assert third.text_layer == "page 3"


def test_text_layer_of_rotated_pages_keeps_line_order() -> None:
    lines = ["first line of the page", "second line follows", "third and last line"]
    for angle in (90, 180, 270):
        data = make.rotated(make.text_pdf([lines]), {0: angle})
        with open_document(data) as document:
            (page,) = list(document.pages())
        assert page.text_layer == "\n".join(lines), angle  # type: ignore[union-attr]
