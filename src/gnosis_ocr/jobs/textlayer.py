"""Where a searchable PDF's invisible text goes on a page: pure geometry, no I/O (``jobs.searchable`` writes it).

Best first: word boxes (each word on its box, its line's thickness as the font size, stretched to the word's
width, running the way the page's lines run); layout blocks (``meta["blocks"]``: each block's text line by line over
its box); else the page's text as plain lines down the page. Sizes are PDF points, y up; boxes come in page pixels.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gnosis_ocr.documents.model import WordBox

NOMINAL_DPI = 180.0  # image pages: the rendered image at this resolution (~A4 for a full-page scan at 2.4 MP)
FALLBACK_POINTS = (595.0, 842.0)  # A4, for a page with nothing known about it
ADVANCE = 0.5  # every glyph's advance in the text layer's font, in em
ASCENT, DESCENT = 0.8, 0.2  # of that font, in em: a line box is one em high
_MARGIN = 0.05  # of the page, around text spread down a page that has no boxes
_MIN_SIZE = 1.0  # points: smaller text is not placed (degenerate boxes)


@dataclass(frozen=True)
class PdfPage:
    """One page to write: its image (any format Pillow reads), the pixel frame its boxes are in, its text."""

    image: bytes | None
    width: int | None = None  # pixels of the page as read (word boxes and block boxes are in this frame)
    height: int | None = None
    points: tuple[float, float] | None = None
    text: str = ""  # the page's Markdown (or plain text)
    words: Sequence[WordBox] = ()
    blocks: Sequence[object] = ()  # meta["blocks"], as stored: validated here


# -- where the text goes (pure) ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One invisible text object: ``text`` at font size ``size`` (points), placed by the matrix (a b c d e f)."""

    text: str
    size: float
    matrix: tuple[float, float, float, float, float, float]


_TAG = re.compile(r"<[^>]*>")
_BREAKING_TAG = re.compile(r"</(?:tr|p|div|li|h[1-6]|table|caption)>|<br\s*/?>", re.IGNORECASE)
_CELL_END = re.compile(r"</t[dh]>", re.IGNORECASE)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+")
_LIST = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_EMPHASIS = re.compile(r"(\*\*|__|`+)")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)*\|?\s*$")


def plain_text(markdown: str) -> list[str]:
    """A page's Markdown (HTML tables, LaTeX and all) as the plain lines a reader would copy."""
    text = _COMMENT.sub("", markdown)
    text = _BREAKING_TAG.sub("\n", text)
    text = _CELL_END.sub(" ", text)
    text = html.unescape(_TAG.sub("", text))
    lines = []
    for raw in text.splitlines():
        if _TABLE_RULE.match(raw):
            continue
        line = _LINK.sub(r"\1", _IMAGE.sub(r"\1", raw))
        line = _EMPHASIS.sub("", _LIST.sub("", _HEADING.sub("", line)))
        line = " ".join(line.replace("|", " ").split())
        if line:
            lines.append(line)
    return lines


def _layer_text(text: str) -> str:
    """What a text object can carry: no control characters, nothing beyond the BMP (PDFium cannot encode it)."""
    return "".join(c for c in text if " " <= c <= "\uffff" and not 0xD800 <= ord(c) <= 0xDFFF and c != "\x7f")


def _matrix(
    box: tuple[float, float, float, float], turn: int, size: float, length: float
) -> tuple[float, float, float, float, float, float]:
    """The text matrix that lays a run of natural ``length`` (points, at ``size``) along ``box`` (PDF space:
    x0, y0, x1, y1 with y up), reading ``turn`` degrees clockwise from left-to-right."""
    x0, y0, x1, y1 = box
    along = (y1 - y0) if turn in (90, 270) else (x1 - x0)
    stretch = along / length if length > 0 else 1.0
    descent = DESCENT * size
    if turn == 90:  # top to bottom; the letters' tops face right
        return (0.0, -stretch, 1.0, 0.0, x0 + descent, y1)
    if turn == 180:
        return (-stretch, 0.0, 0.0, -1.0, x1, y1 - descent)
    if turn == 270:  # bottom to top; the tops face left
        return (0.0, stretch, -1.0, 0.0, x1 - descent, y0)
    return (stretch, 0.0, 0.0, 1.0, x0, y0 + descent)


def _reading_turn(words: Sequence[WordBox]) -> int:
    """Which way the page's lines run on the image (0, 90, 180, 270 degrees clockwise from left-to-right), by the
    majority of its lines of two words or more: from the first word's centre to the last one's."""
    lines: dict[int, list[WordBox]] = {}
    for word in words:
        lines.setdefault(word.line, []).append(word)
    votes = [0, 0, 0, 0]
    for line in lines.values():
        if len(line) < 2:
            continue
        first, last = line[0], line[-1]
        dx = (last.left + last.right - first.left - first.right) / 2
        dy = (last.top + last.bottom - first.top - first.bottom) / 2
        if abs(dx) >= abs(dy):
            votes[0 if dx >= 0 else 2] += 1
        else:
            votes[1 if dy > 0 else 3] += 1
    return 90 * max(range(4), key=lambda i: (votes[i], i == 0))


def word_runs(words: Sequence[WordBox], sx: float, sy: float, height_pt: float) -> list[Run]:
    """One run per word, the line's thickness as the font size, each word stretched over its own box. A word but the
    last of its line carries a trailing space (so copied text keeps its spaces)."""
    turn = _reading_turn(words)
    lines: dict[int, list[WordBox]] = {}
    for word in words:
        lines.setdefault(word.line, []).append(word)
    runs: list[Run] = []
    for line in lines.values():
        if turn in (90, 270):
            thickness = (max(w.right for w in line) - min(w.left for w in line)) * sx
        else:
            thickness = (max(w.bottom for w in line) - min(w.top for w in line)) * sy
        size = thickness / (ASCENT + DESCENT)
        if size < _MIN_SIZE:
            continue
        if turn in (90, 270):
            left, right = min(w.left for w in line) * sx, max(w.right for w in line) * sx
        else:
            top, bottom = height_pt - min(w.top for w in line) * sy, height_pt - max(w.bottom for w in line) * sy
        for i, word in enumerate(line):
            text = _layer_text(word.text)
            if not text.strip():
                continue
            if turn in (90, 270):
                box = (left, height_pt - word.bottom * sy, right, height_pt - word.top * sy)
            else:
                box = (word.left * sx, bottom, word.right * sx, top)
            matrix = _matrix(box, turn, size, len(text) * ADVANCE * size)
            runs.append(Run(text + (" " if i < len(line) - 1 else ""), size, matrix))
    return runs


def _blocks(blocks: Sequence[object]) -> list[tuple[tuple[float, float, float, float], str]]:
    """The usable blocks of ``meta["blocks"]``: a four-number bbox with x0 < x1, y0 < y1 and some text."""
    found = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        bbox, text = block.get("bbox"), block.get("text")
        if not isinstance(text, str) or not text.strip() or not isinstance(bbox, list | tuple) or len(bbox) != 4:
            continue
        try:
            x0, y0, x1, y1 = (float(v) for v in bbox)
        except (TypeError, ValueError):
            continue
        if x1 > x0 and y1 > y0:
            found.append(((x0, y0, x1, y1), text))
    return found


def spread_runs(
    lines: Sequence[str], box: tuple[float, float, float, float], *, max_size: float | None = None
) -> list[Run]:
    """Lines of text down ``box`` (PDF space), one band each, each run at most as wide as the box."""
    x0, y0, x1, y1 = box
    lines = [t for t in (_layer_text(line) for line in lines) if t.strip()]
    if not lines or x1 <= x0 or y1 <= y0:
        return []
    band = (y1 - y0) / len(lines)
    size = min(band / (ASCENT + DESCENT), max_size or band)
    if size < _MIN_SIZE:
        return []
    runs = []
    for i, line in enumerate(lines):
        natural = len(line) * ADVANCE * size
        top = y1 - i * band
        width = min(x1 - x0, natural)
        runs.append(Run(line, size, _matrix((x0, top - size, x0 + width, top), 0, size, natural)))
    return runs


def page_runs(page: PdfPage, points: tuple[float, float]) -> list[Run]:
    """Where the page's text goes on a page of ``points`` (see the module docstring for the order)."""
    width_pt, height_pt = points
    if page.width and page.height:
        sx, sy = width_pt / page.width, height_pt / page.height
        if page.words:
            return word_runs(page.words, sx, sy, height_pt)
        blocks = _blocks(page.blocks)
        if blocks:
            runs: list[Run] = []
            for (x0, y0, x1, y1), text in blocks:
                box = (x0 * sx, height_pt - y1 * sy, x1 * sx, height_pt - y0 * sy)
                runs += spread_runs(plain_text(text), box)
            return runs
    lines = plain_text(page.text)
    mx, my = width_pt * _MARGIN, height_pt * _MARGIN
    return spread_runs(lines, (mx, my, width_pt - mx, height_pt - my), max_size=height_pt / 60)


def page_points(page: PdfPage, previous: tuple[float, float] | None) -> tuple[float, float]:
    if page.points:
        return page.points
    if page.width and page.height:
        return (page.width * 72 / NOMINAL_DPI, page.height * 72 / NOMINAL_DPI)
    return previous or FALLBACK_POINTS
