"""Images through Pillow: orientation, colour modes, TIFF pages, sizing, bombs and damage."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gnosis_ocr.documents import DocumentLimits, Page, PageError, open_document
from gnosis_ocr.errors import BrokenDocumentError, DocumentLimitError
from tests.documents import make


def render_one(data: bytes, limits: DocumentLimits) -> Page:
    with open_document(data, limits=limits) as doc:
        (page,) = doc.pages()
    assert isinstance(page, Page), page
    return page


def mean(image: Image.Image, box: tuple[float, float, float, float]) -> float:
    w, h = image.size
    region = image.convert("L").crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)))
    histogram = region.histogram()
    return sum(i * n for i, n in enumerate(histogram)) / sum(histogram)


@pytest.mark.parametrize(("fmt", "kind"), [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp"), ("TIFF", "tiff")])
def test_each_format_gives_an_rgb_page(small: DocumentLimits, fmt: str, kind: str) -> None:
    data = make.image_bytes(make.marked_image((300, 200)), fmt)
    with open_document(data, limits=small) as doc:
        assert (doc.kind, doc.page_count) == (kind, 1)
        (page,) = doc.pages()
    assert isinstance(page, Page)
    assert page.image.mode == "RGB"
    assert page.source_size == (300.0, 200.0)
    assert page.text_layer is None
    assert mean(page.image, (0, 0, 0.4, 1)) < 40  # the black half stayed left
    assert mean(page.image, (0.6, 0, 1, 1)) > 215


@pytest.mark.parametrize(
    ("orientation", "upright_size", "dark_box"),
    [
        (1, (400, 200), (0, 0, 0.4, 1)),  # left half black, as stored
        (3, (400, 200), (0.6, 0, 1, 1)),  # stored upside down: black ends up right
        (6, (200, 400), (0, 0, 1, 0.4)),  # stored turned left: turned right to stand up, black on top
        (8, (200, 400), (0, 0.6, 1, 1)),  # stored turned right: black at the bottom
    ],
)
def test_exif_orientation_is_applied(
    orientation: int, upright_size: tuple[int, int], dark_box: tuple[float, float, float, float]
) -> None:
    limits = DocumentLimits(target_pixels=80_000, min_long_side=64)
    page = render_one(make.jpeg_with_orientation((400, 200), orientation), limits)
    assert page.source_size == (float(upright_size[0]), float(upright_size[1]))
    assert (page.image.width > page.image.height) == (upright_size[0] > upright_size[1])
    assert mean(page.image, dark_box) < 40


def test_transparency_is_flattened_on_white(small: DocumentLimits) -> None:
    rgba = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (0, 0, 100, 100))
    page = render_one(make.image_bytes(rgba, "PNG"), small)
    assert mean(page.image, (0, 0, 0.45, 1)) < 10
    assert mean(page.image, (0.55, 0, 1, 1)) > 245  # transparent is white, not black

    palette = Image.new("P", (200, 100), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.paste(1, (0, 0, 100, 100))
    page = render_one(make.image_bytes(palette, "PNG", transparency=0), small)
    assert mean(page.image, (0.55, 0, 1, 1)) > 245
    assert page.image.getpixel((10, 10)) == (255, 0, 0)


def test_sixteen_bit_grey_is_stretched_not_clipped(small: DocumentLimits) -> None:
    ramp = np.tile(np.linspace(0, 4095, 256, dtype=np.uint16), (64, 1))  # a 12-bit scan in 16-bit samples
    data = make.image_bytes(Image.fromarray(ramp), "TIFF")
    page = render_one(data, small)
    assert mean(page.image, (0, 0, 0.1, 1)) < 30
    assert 100 < mean(page.image, (0.45, 0, 0.55, 1)) < 155
    assert mean(page.image, (0.9, 0, 1, 1)) > 225


def test_multipage_tiff_gives_a_page_per_frame(small: DocumentLimits) -> None:
    data = make.multipage_tiff([(300, 400), (400, 300), (200, 200)])
    with open_document(data, limits=small) as doc:
        assert (doc.kind, doc.page_count) == ("tiff", 3)
        pages = list(doc.pages())
        assert [item.number for item in pages] == [1, 2, 3]
        assert [p.source_size for p in pages if isinstance(p, Page)] == [(300.0, 400.0), (400.0, 300.0), (200.0, 200.0)]
        (second,) = doc.pages([2])
    assert isinstance(second, Page)
    assert second.image.width > second.image.height


def test_one_oversized_tiff_frame_fails_alone() -> None:
    limits = DocumentLimits(target_pixels=40_000, min_long_side=64, max_page_pixels=1_000_000)
    data = make.multipage_tiff([(200, 200), (1500, 1000), (200, 200)])
    with open_document(data, limits=limits, name="scan.tiff") as doc:
        first, second, third = doc.pages()
    assert isinstance(first, Page)
    assert isinstance(third, Page)
    assert isinstance(second, PageError)
    assert second.message.startswith("scan.tiff: page 2 is 1500 x 1000 pixels (2 megapixels), over the limit of 1")
    assert "GNOSIS_MAX_PAGE_PIXELS" in second.message


def test_big_scan_is_scaled_down_to_the_target() -> None:
    limits = DocumentLimits()
    scan = make.marked_image((4000, 5000), mode="L")
    for fmt in ("PNG", "JPEG"):  # JPEG takes the reduced-size decode path
        page = render_one(make.image_bytes(scan, fmt), limits)
        pixels = page.image.width * page.image.height
        assert abs(pixels - limits.target_pixels) / limits.target_pixels < 0.01, fmt
        assert page.scale == pytest.approx(page.image.width / 4000)
        assert page.source_size == (4000.0, 5000.0)


def test_tiny_image_is_scaled_up() -> None:
    data = make.image_bytes(make.marked_image((40, 30)), "PNG")
    page = render_one(data, DocumentLimits(target_pixels=10_000, min_long_side=512))
    assert page.image.size == (512, 384)
    assert page.scale == pytest.approx(12.8)
    page = render_one(data, DocumentLimits())
    assert abs(page.image.width * page.image.height - 2_400_000) / 2_400_000 < 0.01


def test_image_near_the_target_is_kept_as_it_is() -> None:
    image = make.marked_image((1000, 1000))
    page = render_one(make.image_bytes(image, "PNG"), DocumentLimits(target_pixels=1_020_000))
    assert page.image.size == (1000, 1000)
    assert page.scale == 1.0


def test_pixel_bomb_over_the_page_limit_is_refused_from_the_header() -> None:
    # The IDAT is not a zlib stream: had anything been decoded, this would be a decode error instead.
    with pytest.raises(DocumentLimitError) as info:
        open_document(make.png_bomb(8000, 8000), name="bomb.png")
    assert info.value.message == (
        "bomb.png: page 1 is 8000 x 8000 pixels (64 megapixels), over the limit of 40 megapixels per page "
        "(GNOSIS_MAX_PAGE_PIXELS); it was not decoded."
    )
    assert info.value.hint is not None
    assert "GNOSIS_MAX_PAGE_PIXELS" in info.value.hint


def test_pixel_bomb_past_pillows_ceiling_is_refused_too() -> None:
    with pytest.raises(DocumentLimitError, match=r"bomb\.png declares an image of more than 179 megapixels"):
        open_document(make.png_bomb(50_000, 50_000), name="bomb.png")
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's global is left as it was


def test_damaged_header_is_broken() -> None:
    with pytest.raises(BrokenDocumentError, match=r"x\.png starts like a PNG image but Pillow cannot read it"):
        open_document(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, name="x.png")


def test_truncated_image_fails_as_a_page(small: DocumentLimits) -> None:
    noise = Image.frombytes("L", (300, 300), bytes(np.random.default_rng(1).integers(0, 255, 90_000, dtype=np.uint8)))
    data = make.image_bytes(noise, "PNG")
    with open_document(data[: len(data) // 2], limits=small, name="cut.png") as doc:
        (item,) = doc.pages()
    assert isinstance(item, PageError)
    assert item.message.startswith("cut.png: page 1 could not be rendered:")
    assert "truncated" in item.message
