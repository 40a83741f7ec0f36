"""Test pages with honest ground truth: prose typeset into a PDF with reportlab, rendered with pypdfium2.

The PDF's own text layer (read back through pdfium) is the reference an OCR reading is scored against, so the
reference holds exactly the words on the page. The prose was written for these tests (no copyright attached).
``word_f1`` scores a reading: case-sensitive tokens split on whitespace, punctuation stripped at their edges.
"""

from __future__ import annotations

import io
import math
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFilter

PROSE: tuple[str, ...] = (
    "The river ran slowly past the old mill, carrying leaves and the occasional branch toward the sea. Nobody in "
    "the village could remember when the wheel had last turned, but the children still dared each other to climb "
    "the mossy stones at dusk.",
    "On market days the square filled with carts of apples, cheese, and wool. Traders argued about prices in loud "
    "voices, while the baker sold warm loaves from a window that opened onto the street. By noon the smell of bread "
    "had drifted as far as the church.",
    "Margaret kept the accounts for her father's shop in a narrow ledger bound in green cloth. Each evening she "
    "added the columns twice, once from the top and once from the bottom, because a single mistake could cost them "
    "a week of profit.",
    "In the winter of that year a stranger arrived with a wooden case of instruments. He measured the height of the "
    "hills, the width of the river, and the angle of the sun at midday, writing every number in a small notebook.",
    "The lighthouse keeper climbed one hundred and twelve steps every night to trim the wick. In storms he stayed "
    "at the top until morning, watching the black water for the lanterns of fishing boats returning late.",
    "A letter from the capital announced that the railway would reach the valley within three years. Some farmers "
    "welcomed the news, hoping to sell their grain in distant cities; others feared the noise and the strangers.",
    "The schoolmaster taught arithmetic with a box of pebbles and geography with a map painted on the wall. When "
    "the map faded, the pupils repainted it from memory, and several rivers changed their courses.",
    "Every spring the orchard bloomed for exactly nine days. Visitors came from the neighbouring towns to walk "
    "beneath the white branches, and the innkeeper hired extra cooks to feed them all.",
    "The clockmaker's apprentice spent his first year sweeping brass filings from the floor. In his second year he "
    "was allowed to oil the gears, and in his third he built a small clock that lost only a minute each week.",
    "During the long drought the well in the square fell so low that buckets came up filled with sand. The council "
    "met each morning to ration water, and people learned to wash with a single cup.",
    "Her grandmother's recipe for plum cake called for a handful of flour, a spoonful of honey, and patience. The "
    "written copy had been lost long ago, so the family recited it aloud every December.",
    "The bridge was finished on a Tuesday in October. The mayor cut a ribbon, a band played three marches, and a "
    "flock of geese crossed before anyone else, which the old men declared a lucky sign.",
)

_EDGE_PUNCTUATION = string.punctuation + "\u2018\u2019\u201c\u201d\u2013\u2014\u2026"


@dataclass(frozen=True)
class Score:
    precision: float
    recall: float
    f1: float


def words(text: str) -> list[str]:
    """Case-sensitive tokens split on whitespace, punctuation stripped at the edges; empty tokens dropped."""
    stripped = (token.strip(_EDGE_PUNCTUATION) for token in text.split())
    return [token for token in stripped if token]


def word_f1(reference: str, hypothesis: str) -> Score:
    """Bag-of-words precision, recall and F1 of ``hypothesis`` against ``reference``."""
    ref, hyp = Counter(words(reference)), Counter(words(hypothesis))
    if not ref and not hyp:
        return Score(1.0, 1.0, 1.0)
    matched = sum((ref & hyp).values())
    precision = matched / sum(hyp.values()) if hyp else 0.0
    recall = matched / sum(ref.values()) if ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if matched else 0.0
    return Score(round(precision, 4), round(recall, 4), round(f1, 4))


def text_pdf(
    path: Path,
    paragraphs: tuple[str, ...] = PROSE[:4],
    *,
    font: str = "Helvetica",
    size: float = 11.0,
    columns: int = 1,
    column_break_after: int | None = None,
    pagesize: tuple[float, float] | None = None,
) -> Path:
    """A one-page PDF typesetting ``paragraphs`` in one or more columns (reportlab, real text layer).

    ``column_break_after=n`` starts the next column after the n-th paragraph, so columns stand side by side.
    """
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.platypus import BaseDocTemplate, Flowable, Frame, FrameBreak, PageTemplate, Paragraph

    width, height = pagesize or A4
    margin = min(56.0, width / 10)
    gutter = 24.0
    column_width = (width - 2 * margin - (columns - 1) * gutter) / columns
    frames = [
        Frame(margin + i * (column_width + gutter), margin, column_width, height - 2 * margin, id=f"column{i}")
        for i in range(columns)
    ]
    doc = BaseDocTemplate(str(path), pagesize=(width, height))
    doc.addPageTemplates([PageTemplate(id="page", frames=frames)])
    style = ParagraphStyle("body", fontName=font, fontSize=size, leading=size * 1.3, spaceAfter=size)
    story: list[Flowable] = []
    for number, text in enumerate(paragraphs, start=1):
        story.append(Paragraph(text, style))
        if number == column_break_after:
            story.append(FrameBreak())
    doc.build(story)
    return path


def render_page(pdf: Path, target_pixels: int = 2_400_000) -> tuple[Image.Image, str]:
    """The first page as an RGB image of about ``target_pixels``, and its text layer."""
    import pypdfium2

    document = pypdfium2.PdfDocument(str(pdf))
    try:
        page = document[0]
        width, height = page.get_size()
        scale = math.sqrt(target_pixels / (width * height))
        image = page.render(scale=scale).to_pil().convert("RGB")
        textpage = page.get_textpage()
        text = textpage.get_text_range()
        textpage.close()
        page.close()
    finally:
        document.close()
    return image, text


def scan_like(
    image: Image.Image,
    *,
    skew: float = 1.2,
    blur: float = 0.8,
    noise: float = 18.0,
    jpeg_quality: int = 55,
    seed: int = 1,
) -> Image.Image:
    """A rendered page made to look scanned: grey, turned a little, soft, grainy, JPEG-compressed."""
    import numpy as np

    grey = image.convert("L").rotate(skew, resample=Image.Resampling.BICUBIC, fillcolor=255)
    grey = grey.filter(ImageFilter.GaussianBlur(blur))
    grain = np.random.default_rng(seed).normal(0.0, noise, (grey.height, grey.width))
    noisy = Image.fromarray(np.clip(np.asarray(grey, dtype=np.float32) + grain, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    noisy.save(buffer, "JPEG", quality=jpeg_quality)
    buffer.seek(0)
    with Image.open(buffer) as scanned:
        return scanned.convert("RGB")
