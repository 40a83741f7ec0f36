"""A table region and its OCR words to rows of cells and an HTML table. numpy only, no model.

Two ways to find the grid, tried in order:

- **Ruled**: the table's own rules. Rows of the region's ink that run across at least ``RULE_SHARE`` of its width
  are horizontal rules, columns of ink down at least ``RULE_SHARE`` of its height are vertical ones. With two or more
  columns between vertical rules and rows between horizontal ones, those are the cells; an inner vertical rule
  missing within a row band (ink along it under ``SPAN_INK`` of the band) joins the cells beside it (colspan).
- **Borderless** (or rules above and below only): rows are the words' lines (words whose boxes overlap down the
  page), columns are the stretches of the region no word covers across all rows, at least ``COLUMN_GAP_LINES`` line
  heights wide.

Each word goes to the cell holding its centre; a cell's words are joined in reading order.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gnosis_ocr.engines.layout_blocks import Box, TableReading, Word

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

RULE_SHARE = 0.55  # a rule runs across (or down) at least this share of the table
SPAN_INK = 0.5  # an inner vertical rule inked along less than this share of a row band is not there (a span)
COLUMN_GAP_LINES = 0.9  # a borderless column gap is at least this many line heights wide
INK_LEVEL = 128  # grey levels at or below this are ink


def read_table(grey: NDArray[np.uint8], box: Box, words: Sequence[Word]) -> TableReading:
    """The table in ``box`` of the page ``grey`` (2-D, uint8), from the words the page's OCR pass found inside it.

    Reading each cell again on its own crop was tried and read worse (tesseract on a lone "Q1" answered "a1" or
    "ER"), so the cells take the page pass's words."""
    import numpy as np

    x0, y0, x1, y1 = (
        max(0, box[0] - 4),
        max(0, box[1] - 4),
        min(grey.shape[1], box[2] + 4),
        min(grey.shape[0], box[3] + 4),
    )
    ink = np.asarray(grey[y0:y1, x0:x1]) <= INK_LEVEL
    rows_at = _rules(ink.mean(axis=1)) if ink.size else []
    columns_at = _rules(ink.mean(axis=0)) if ink.size else []
    if len(columns_at) >= 3 and len(rows_at) >= 3:
        return _ruled(ink, [r + y0 for r in rows_at], [c + x0 for c in columns_at], (x0, y0), words)
    return _borderless(box, words)


def _rules(share: NDArray[np.float64]) -> list[int]:
    """Middles of the runs of ink rows (or columns) that cover at least RULE_SHARE."""
    found: list[int] = []
    start: int | None = None
    for index, value in enumerate([*share.tolist(), 0.0]):
        if value >= RULE_SHARE and start is None:
            start = index
        elif value < RULE_SHARE and start is not None:
            found.append((start + index - 1) // 2)
            start = None
    return found


def _ruled(
    ink: NDArray[np.bool_],
    rows_at: list[int],
    columns_at: list[int],
    origin: tuple[int, int],
    words: Sequence[Word],
) -> TableReading:
    ox, oy = origin
    bands = list(itertools.pairwise(rows_at))
    columns = list(itertools.pairwise(columns_at))
    grid: list[list[list[Word]]] = [[[] for _ in columns] for _ in bands]
    for word in words:
        cx, cy = (word.box[0] + word.box[2]) / 2, (word.box[1] + word.box[3]) / 2
        r = next((i for i, (top, bottom) in enumerate(bands) if top <= cy < bottom), None)
        c = next((i for i, (left, right) in enumerate(columns) if left <= cx < right), None)
        if r is not None and c is not None:
            grid[r][c].append(word)
    rows_html: list[str] = []
    cells: list[tuple[str, ...]] = []
    for r, (top, bottom) in enumerate(bands):
        spans: list[tuple[int, int]] = []  # (first column, how many)
        for c in range(len(columns)):
            if c > 0 and not _inked(ink, columns_at[c] - ox, top - oy, bottom - oy):
                first, count = spans[-1]
                spans[-1] = (first, count + 1)
            else:
                spans.append((c, 1))
        texts = [_cell_text([w for k in range(first, first + count) for w in grid[r][k]]) for first, count in spans]
        cells.append(tuple(texts))
        rows_html.append(
            "<tr>" + "".join(_td(text, count) for (_, count), text in zip(spans, texts, strict=True)) + "</tr>"
        )
    return TableReading("<table>" + "".join(rows_html) + "</table>", tuple(cells))


def _td(text: str, span: int = 1) -> str:
    colspan = f' colspan="{span}"' if span > 1 else ""
    return f"<td{colspan}>{html.escape(text, quote=False)}</td>"


def _inked(ink: NDArray[np.bool_], x: int, top: int, bottom: int) -> bool:
    """Whether the vertical rule at ``x`` runs through the band between ``top`` and ``bottom`` (inner part)."""
    margin = max(2, (bottom - top) // 6)
    strip = ink[top + margin : bottom - margin, max(0, x - 2) : x + 3]
    if strip.size == 0:
        return True
    return float(strip.any(axis=1).mean()) >= SPAN_INK


def _borderless(box: Box, words: Sequence[Word]) -> TableReading:
    rows: list[list[Word]] = []
    for word in sorted(words, key=lambda w: (w.box[1] + w.box[3]) / 2):
        middle = (word.box[1] + word.box[3]) / 2
        if rows and middle <= max(w.box[3] for w in rows[-1]):
            rows[-1].append(word)
        else:
            rows.append([word])
    if not rows:
        return TableReading("<table></table>", ())
    heights = sorted(w.box[3] - w.box[1] for w in words)
    line = heights[len(heights) // 2]
    covered = sorted((w.box[0], w.box[2]) for w in words)
    edges: list[float] = []
    reach = covered[0][1]
    for start, end in covered[1:]:
        if start - reach >= COLUMN_GAP_LINES * line:
            edges.append((start + reach) / 2)
        reach = max(reach, end)
    bounds = [float(box[0]), *edges, float(box[2]) + 1]
    cells: list[tuple[str, ...]] = []
    for row in rows:
        per = [
            [w for w in row if bounds[c] <= (w.box[0] + w.box[2]) / 2 < bounds[c + 1]] for c in range(len(bounds) - 1)
        ]
        cells.append(tuple(_cell_text(ws) for ws in per))
    body = "".join("<tr>" + "".join(_td(text) for text in row) + "</tr>" for row in cells)
    return TableReading(f"<table>{body}</table>", tuple(cells))


def _cell_text(words: Sequence[Word]) -> str:
    ordered = sorted(words, key=lambda w: (w.line, w.box[0]))
    return " ".join(w.text.strip("|") for w in ordered if w.text.strip("|")).strip()
