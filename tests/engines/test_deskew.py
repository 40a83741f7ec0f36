"""Deskew before reading: the skew estimate on rendered pages turned by known angles, pages with no lines at all, and
the engine on the scan that used to read as nothing (2 degrees askew, blurred), on upright pages it must leave alone,
and on pages turned by a quarter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gnosis_ocr.documents.model import Page
from gnosis_ocr.engines.tesseract import TesseractEngine
from gnosis_ocr.engines.tesseract_worker import deskew, estimate_skew
from tests.support.textpages import PROSE, render_page, scan_like, text_pdf, word_f1

BICUBIC = Image.Resampling.BICUBIC


@pytest.fixture(scope="module")
def prose_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Image.Image, str]:
    """Helvetica 11 pt, three paragraphs, ~2.4 MP: the bench's first page of each kind."""
    return render_page(text_pdf(tmp_path_factory.mktemp("deskew") / "prose.pdf", PROSE[0:3]))


def _blurred_scan(image: Image.Image, seed: int = 1) -> Image.Image:
    """The bench's harshest scan kind (bench/ocr_quality.py SCANS), which read as nothing before deskewing."""
    return scan_like(image, skew=2.0, blur=1.3, noise=25.0, jpeg_quality=35, seed=seed)


def _turned(image: Image.Image, degrees: float) -> Image.Image:
    """The page turned counter-clockwise by ``degrees`` on white paper, as a scanner would skew it."""
    return image.convert("L").rotate(degrees, resample=BICUBIC, expand=True, fillcolor=255).convert("RGB")


# -- the estimate -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("degrees", [-5.0, -3.0, -2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 3.0, 5.0])
def test_the_estimate_recovers_a_known_turn(prose_page: tuple[Image.Image, str], degrees: float) -> None:
    skew = estimate_skew(_turned(prose_page[0], degrees))
    assert skew.degrees == pytest.approx(degrees, abs=0.25), skew
    assert not skew.vertical


def test_an_upright_page_has_no_skew_and_is_left_as_it_is(prose_page: tuple[Image.Image, str]) -> None:
    image = prose_page[0]
    skew = estimate_skew(image)
    assert abs(skew.degrees) < 0.05, skew
    assert skew.contrast > 10  # a clear peak: upright lines, not the absence of lines
    straight, turned = deskew(image)
    assert straight is image
    assert turned == 0.0


def test_a_blurred_grainy_scan_is_estimated_through_the_noise(prose_page: tuple[Image.Image, str]) -> None:
    skew = estimate_skew(_blurred_scan(prose_page[0]))
    assert skew.degrees == pytest.approx(2.0, abs=0.25), skew


def test_lines_down_a_page_turned_by_a_quarter_are_estimated_too(prose_page: tuple[Image.Image, str]) -> None:
    quarter = prose_page[0].rotate(90, expand=True)
    upright = estimate_skew(quarter)
    askew = estimate_skew(_turned(quarter, -3.0))
    assert upright.vertical and abs(upright.degrees) < 0.05, upright
    assert askew.vertical and askew.degrees == pytest.approx(-3.0, abs=0.25), askew


def _noise(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (1754, 1240, 3), dtype=np.uint8))


def _blot() -> Image.Image:
    """One ink blot on an otherwise white page: ink, but too little to hold a line."""
    image = Image.new("L", (1240, 1754), 255)
    image.paste(0, (600, 800, 606, 806))
    return image


def _photo_like(seed: int) -> Image.Image:
    """Smooth light and shade with grain: structure at every angle, lines at none."""
    y, x = np.mgrid[0:1754, 0:1240]
    shade = 127 + 60 * np.sin(x / 97.0) * np.cos(y / 61.0) + np.random.default_rng(seed).normal(0, 20, x.shape)
    return Image.fromarray(shade.clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("white page", Image.new("RGB", (1240, 1754), "white")),
        ("grey paper", Image.new("L", (1240, 1754), 200)),
        ("black page", Image.new("L", (1240, 1754), 0)),
        ("one pixel", Image.new("RGB", (1, 1), "black")),
        ("a blot", _blot()),
        ("random noise", _noise(1)),
        ("photo-like", _photo_like(2)),
    ],
)
def test_a_page_without_lines_has_no_skew_and_is_left_as_it_is(name: str, image: Image.Image) -> None:
    skew = estimate_skew(image)
    assert skew.degrees == 0.0, (name, skew)
    straight, turned = deskew(image)
    assert straight is image and turned == 0.0


# -- the engine -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[TesseractEngine]:
    with TesseractEngine(workers=2) as engine:
        yield engine


@pytest.fixture(scope="module")
def unstraightened() -> Iterator[TesseractEngine]:
    """The engine as it was before deskewing."""
    with TesseractEngine(workers=2, deskew=False) as engine:
        yield engine


def test_the_blurred_scan_that_read_as_nothing_now_reads(
    engine: TesseractEngine, unstraightened: TesseractEngine, prose_page: tuple[Image.Image, str]
) -> None:
    image, reference = prose_page
    scans = [Page(n, _blurred_scan(image, seed=n)) for n in (1, 2)]

    before = unstraightened.recognize(scans)
    after = engine.recognize(scans)

    scores = [
        (word_f1(reference, b.markdown).f1, word_f1(reference, a.markdown).f1)
        for b, a in zip(before, after, strict=True)
    ]
    print("word F1 (without, with deskew):", scores)
    for (without, with_deskew), result in zip(scores, after, strict=True):
        assert without < 0.5, "the page no longer shows the failure deskewing is for"
        assert with_deskew >= 0.8, (with_deskew, result.markdown)
        assert result.meta["deskew_degrees"] == pytest.approx(2.0, abs=0.25)
        assert result.meta["rotation"] == 0
    assert "deskew_degrees" not in before[0].meta


def test_upright_pages_read_exactly_as_without_deskewing(
    engine: TesseractEngine, unstraightened: TesseractEngine, tmp_path: Path
) -> None:
    pages = [
        Page(1, render_page(text_pdf(tmp_path / "times.pdf", PROSE[4:7], font="Times-Roman", size=10))[0]),
        Page(2, scan_like(render_page(text_pdf(tmp_path / "flat.pdf", PROSE[7:10]))[0], skew=0.0)),
    ]
    before = unstraightened.recognize(pages)
    after = engine.recognize(pages)
    assert [a.markdown for a in after] == [b.markdown for b in before]
    assert [a.meta["confidence"] for a in after] == [b.meta["confidence"] for b in before]
    assert [a.meta["deskew_degrees"] for a in after] == [0.0, 0.0]


def test_a_quarter_turned_page_still_comes_out_upright_and_straight(
    engine: TesseractEngine, prose_page: tuple[Image.Image, str]
) -> None:
    image, reference = prose_page
    quarter = image.rotate(90, expand=True)  # PIL turns counter-clockwise; the engine turns it back by 90 clockwise
    pages = [Page(1, quarter), Page(2, _turned(quarter, 2.0))]

    results = engine.recognize(pages)

    for result, deskewed in zip(results, (0.0, 2.0), strict=True):
        assert result.ok, result.error
        assert word_f1(reference, result.markdown).f1 >= 0.9, result.markdown
        assert result.meta["rotation"] == 90
        assert result.meta["deskew_degrees"] == pytest.approx(deskewed, abs=0.25)
