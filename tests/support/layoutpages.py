"""Typeset pages whose structure is known: headings, columns, grids, tables, running headers and footers.

Each page is drawn with reportlab at exact places, so its ground truth is known by construction: the blocks in
reading order (type, text, box in PDF points) and every table's cells. The prose is ``textpages.PROSE`` (written
for these tests, no copyright attached); the table contents are made up here.

``layout_pdf(path, pages)`` writes one PDF page per ``PageLayout``; ``PageLayout.truth`` is what a reader should
recover: ``body`` (the blocks a reader keeps, in order), ``furniture`` (running header, footer, page number), and
``tables`` (rows of cell texts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tests.support.textpages import PROSE

BlockKind = Literal["title", "heading", "text", "list", "table", "caption", "header", "footer", "page_number"]

A4 = (595.28, 841.89)
MARGIN = 56.0


@dataclass(frozen=True)
class TruthBlock:
    kind: BlockKind
    text: str
    box: tuple[float, float, float, float]  # x0, top, x1, bottom in PDF points from the top left


@dataclass
class PageTruth:
    body: list[TruthBlock] = field(default_factory=list)
    furniture: list[TruthBlock] = field(default_factory=list)
    tables: list[list[list[str]]] = field(default_factory=list)


@dataclass(frozen=True)
class Table:
    rows: tuple[tuple[str, ...], ...]
    ruled: bool = True  # a full grid; False: only rules above, below and under the header row
    caption: str | None = None


@dataclass(frozen=True)
class Section:
    """A heading (optional) followed by paragraphs, a list or a table, in one column or grid cell."""

    heading: str | None = None
    paragraphs: tuple[str, ...] = ()
    items: tuple[str, ...] = ()  # a bulleted list after the paragraphs
    table: Table | None = None
    boxed: bool = False  # drawn in a frame (a grid of boxes)


@dataclass(frozen=True)
class PageLayout:
    title: str | None = None
    columns: tuple[tuple[Section, ...], ...] = ()  # one tuple of sections per column
    grid: tuple[tuple[Section, ...], ...] = ()  # rows of boxed sections, read row by row
    header: str | None = None
    footer: str | None = None
    page_number: int | None = None
    size: float = 10.5

    def truth(self) -> PageTruth:
        return _draw(None, self)


def layout_pdf(path: Path, pages: Sequence[PageLayout]) -> tuple[Path, list[PageTruth]]:
    """Write one PDF page per layout; answer the path and each page's ground truth."""
    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(path), pagesize=A4)
    truths = []
    for page in pages:
        truths.append(_draw(pdf, page))
        pdf.showPage()
    pdf.save()
    return path, truths


class _Pen:
    """Draws (when a canvas is given) and records boxes; y grows downwards from the top of the page."""

    def __init__(self, pdf: object | None, size: float) -> None:
        self.pdf = pdf
        self.size = size
        self.truth = PageTruth()

    def paragraph(self, text: str, x: float, top: float, width: float, size: float, font: str) -> float:  # noqa: PLR0917
        """Wrap ``text`` into ``width``; answer the bottom of the drawn paragraph."""
        from reportlab.lib.styles import ParagraphStyle
        from reportlab.platypus import Paragraph

        style = ParagraphStyle("p", fontName=font, fontSize=size, leading=size * 1.3)
        para = Paragraph(text, style)
        _, height = para.wrap(width, 10_000)
        if self.pdf is not None:
            para.drawOn(self.pdf, x, A4[1] - top - height)
        return top + float(height)

    def line(self, x0: float, y0: float, x1: float, y1: float, width: float = 0.8) -> None:
        if self.pdf is not None:
            self.pdf.setLineWidth(width)  # type: ignore[attr-defined]
            self.pdf.line(x0, A4[1] - y0, x1, A4[1] - y1)  # type: ignore[attr-defined]

    def rect(self, x0: float, top: float, x1: float, bottom: float) -> None:
        if self.pdf is not None:
            self.pdf.setLineWidth(0.8)  # type: ignore[attr-defined]
            self.pdf.rect(x0, A4[1] - bottom, x1 - x0, bottom - top)  # type: ignore[attr-defined]


def _draw(pdf: object | None, page: PageLayout) -> PageTruth:
    pen = _Pen(pdf, page.size)
    width = A4[0] - 2 * MARGIN
    if page.header:
        bottom = pen.paragraph(page.header, MARGIN, 30, width, 8.5, "Helvetica-Oblique")
        pen.line(MARGIN, bottom + 3, A4[0] - MARGIN, bottom + 3, 0.5)
        pen.truth.furniture.append(TruthBlock("header", page.header, (MARGIN, 30, A4[0] - MARGIN, bottom)))
    if page.footer:
        top = A4[1] - 40
        bottom = pen.paragraph(page.footer, MARGIN, top, width * 0.7, 8.5, "Helvetica")
        pen.truth.furniture.append(TruthBlock("footer", page.footer, (MARGIN, top, MARGIN + width * 0.7, bottom)))
    if page.page_number is not None:
        text = str(page.page_number)
        top = A4[1] - 40
        if pdf is not None:
            pdf.setFont("Helvetica", 8.5)  # type: ignore[attr-defined]
            pdf.drawRightString(A4[0] - MARGIN, A4[1] - top - 8.5, text)  # type: ignore[attr-defined]
        pen.truth.furniture.append(TruthBlock("page_number", text, (A4[0] - MARGIN - 12, top, A4[0] - MARGIN, top + 9)))
    top = 80.0
    if page.title:
        bottom = pen.paragraph(page.title, MARGIN, top, width, 20, "Helvetica-Bold")
        pen.truth.body.append(TruthBlock("title", page.title, (MARGIN, top, A4[0] - MARGIN, bottom)))
        top = bottom + 22
    if page.columns:
        gutter = 22.0
        count = len(page.columns)
        column_width = (width - (count - 1) * gutter) / count
        for index, sections in enumerate(page.columns):
            x = MARGIN + index * (column_width + gutter)
            y = top
            for section in sections:
                y = _section(pen, section, x, y, column_width) + 6
    if page.grid:
        _grid(pen, page.grid, top, width)
    return pen.truth


def _grid(pen: _Pen, grid: tuple[tuple[Section, ...], ...], top: float, width: float) -> None:
    """Rows of sections side by side, each boxed when asked; read row by row."""
    gap = 26.0
    y = top
    for row in grid:
        count = len(row)
        cell_width = (width - (count - 1) * gap) / count
        bottoms = []
        for index, section in enumerate(row):
            x = MARGIN + index * (cell_width + gap)
            bottoms.append(_section(pen, section, x + 8, y + 8, cell_width - 16) + 4)
        row_bottom = max(bottoms)
        for index, section in enumerate(row):
            if section.boxed:
                x = MARGIN + index * (cell_width + gap)
                pen.rect(x, y, x + cell_width, row_bottom)
        y = row_bottom + gap


def _section(pen: _Pen, section: Section, x: float, top: float, width: float) -> float:
    size = pen.size
    y = top
    if section.heading:
        bottom = pen.paragraph(section.heading, x, y, width, size * 1.35, "Helvetica-Bold")
        pen.truth.body.append(TruthBlock("heading", section.heading, (x, y, x + width, bottom)))
        y = bottom + size * 0.7
    for text in section.paragraphs:
        bottom = pen.paragraph(text, x, y, width, size, "Times-Roman")
        pen.truth.body.append(TruthBlock("text", text, (x, y, x + width, bottom)))
        y = bottom + size * 0.9
    if section.items:
        start = y
        for item in section.items:
            bottom = pen.paragraph(f"\u2022 {item}", x + 8, y, width - 8, size, "Times-Roman")
            y = bottom + size * 0.3
        pen.truth.body.append(TruthBlock("list", "\n".join(section.items), (x, start, x + width, y)))
        y += size * 0.6
    if section.table:
        y = _table(pen, section.table, x, y, width) + size
    return y


def _table(pen: _Pen, table: Table, x: float, top: float, width: float) -> float:
    size = pen.size * 0.95
    columns = len(table.rows[0])
    column_width = width / columns
    row_height = size * 2.0
    y = top
    if table.caption:
        bottom = pen.paragraph(table.caption, x, y, width, size, "Helvetica-Oblique")
        pen.truth.body.append(TruthBlock("caption", table.caption, (x, y, x + width, bottom)))
        y = bottom + size * 0.6
    start = y
    for r, row in enumerate(table.rows):
        font = "Helvetica-Bold" if r == 0 else "Helvetica"
        for c, cell in enumerate(row):
            pen.paragraph(cell, x + c * column_width + 4, y + size * 0.45, column_width - 8, size, font)
        y += row_height
    bottom = y
    if table.ruled:
        for r in range(len(table.rows) + 1):
            pen.line(x, start + r * row_height, x + width, start + r * row_height)
        for c in range(columns + 1):
            pen.line(x + c * column_width, start, x + c * column_width, bottom)
    else:
        pen.line(x, start, x + width, start, 1.2)
        pen.line(x, start + row_height, x + width, start + row_height, 0.6)
        pen.line(x, bottom, x + width, bottom, 1.2)
    text = "\n".join(" | ".join(row) for row in table.rows)
    pen.truth.body.append(TruthBlock("table", text, (x, start, x + width, bottom)))
    pen.truth.tables.append([list(row) for row in table.rows])
    return bottom


# -- ready-made pages --------------------------------------------------------------------------------------------

SALES = Table(
    (
        ("Region", "Quarter", "Units", "Revenue"),
        ("North", "Q1", "1,240", "18,600"),
        ("South", "Q1", "980", "14,700"),
        ("East", "Q2", "1,515", "22,725"),
        ("West", "Q2", "1,102", "16,530"),
    ),
    caption="Table 1. Units sold and revenue by region.",
)
PARTS = Table(
    (
        ("Part", "Material", "Weight", "Stock"),
        ("Bracket", "Steel", "240 g", "112"),
        ("Hinge", "Brass", "85 g", "430"),
        ("Gasket", "Rubber", "12 g", "2,050"),
    ),
    ruled=False,
    caption="Table 2. Parts in the spring catalogue.",
)


def report_page(number: int = 1) -> PageLayout:
    """One column: title, two headed sections, a ruled table with caption, running header, footer, page number."""
    return PageLayout(
        title="Annual Report of the Valley Cooperative",
        columns=(
            (
                Section("1. Introduction", (PROSE[0], PROSE[1])),
                Section("2. Sales", (PROSE[2],), table=SALES),
                Section(None, (PROSE[3],)),
            ),
        ),
        header="Valley Cooperative - Annual Report 2026",
        footer="Printed for members of the cooperative",
        page_number=number,
    )


def two_column_page(number: int = 2) -> PageLayout:
    return PageLayout(
        title="Notes from the Harbour Town",
        columns=(
            (Section("The Lighthouse", (PROSE[4], PROSE[5])), Section("The Railway", (PROSE[6],))),
            (Section("The Orchard", (PROSE[7], PROSE[8])), Section("The Drought", (PROSE[9],))),
        ),
        header="Valley Cooperative - Annual Report 2026",
        footer="Printed for members of the cooperative",
        page_number=number,
    )


def three_column_page(number: int = 3) -> PageLayout:
    return PageLayout(
        title="Three Stories of the Valley",
        columns=(
            (Section("Mill", (PROSE[0], PROSE[10])),),
            (Section("Market", (PROSE[1], PROSE[11])),),
            (Section("Ledger", (PROSE[2], PROSE[3])),),
        ),
        header="Valley Cooperative - Annual Report 2026",
        footer="Printed for members of the cooperative",
        page_number=number,
    )


def grid_page(number: int = 4) -> PageLayout:
    """A 2x2 grid of boxed sections: read row by row."""
    return PageLayout(
        title="Four Seasons at the Mill",
        grid=(
            (Section("Spring", (PROSE[7],), boxed=True), Section("Summer", (PROSE[9],), boxed=True)),
            (Section("Autumn", (PROSE[11],), boxed=True), Section("Winter", (PROSE[3],), boxed=True)),
        ),
        header="Valley Cooperative - Annual Report 2026",
        footer="Printed for members of the cooperative",
        page_number=number,
    )


def catalogue_page(number: int = 5) -> PageLayout:
    """A borderless (three-rule) table, a bulleted list and headings."""
    return PageLayout(
        title="Spring Catalogue",
        columns=(
            (
                Section("Parts", (PROSE[8],), table=PARTS),
                Section(
                    "Delivery",
                    (PROSE[5],),
                    items=(
                        "Orders leave the warehouse every Monday.",
                        "Parcels above ten kilograms travel by rail.",
                        "Returns are accepted within thirty days.",
                    ),
                ),
            ),
        ),
        header="Valley Cooperative - Annual Report 2026",
        footer="Printed for members of the cooperative",
        page_number=number,
    )


def plain_page() -> PageLayout:
    """Prose only: what the layout path must read no worse than tesseract alone."""
    return PageLayout(columns=((Section(None, (PROSE[4], PROSE[5], PROSE[6], PROSE[7])),),))
