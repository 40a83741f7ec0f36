"""Structure benchmark: the layout engine beside the tesseract engine on pages whose structure is known.

    .venv/bin/python -m bench.layout_quality [--copies 2] [--workers 2] [--json-out FILE]

Pages. ``tests/support/layoutpages`` typesets them with reportlab at exact places, so the ground truth is known by
construction (the prose is the project's own, written for the tests; the tables are made up): a report page (title,
numbered headings, a ruled table with caption), two columns, three columns, a 2x2 grid of boxes, a catalogue page
(a three-rule borderless table, a bulleted list) and a plain prose page. Every page but the plain one carries the same
running header, a footer and its page number. One PDF holds ``--copies`` of the set, rendered by our renderer and
read by both engines through ``ocr_document`` with ``--text-layer never``.

Real pages (``--real DIR``): pages of public PDF manuals from Debian packages, their text layer as the reference
(``REAL_PAGES`` names each: package, file, pages, licence). Fetch them once with

    apt-get download r-doc-pdf gnuplot-doc && for f in *.deb; do dpkg-deb -x "$f" DIR; done

The text layer inside the top and bottom ``REAL_BAND`` of the page is the running header or footer (these manuals
set the chapter or title and the page number there); the rest is the body. They score word F1 and leakage.

Scores, per page kind (means over the kind's pages):
  - word F1: the body's words (furniture excluded) against the reading's, Markdown and HTML marks stripped
    (``tests.support.textpages.word_f1``);
  - order: the share of pairs of body blocks (paragraphs, headings, captions, list) found in the reading that come
    in the right order (each block located by its first five words);
  - table cells: F1 of (row, column, text) over every table's cells, the reading's tables parsed from its HTML;
  - leakage: the share of running headers, footers and page numbers that appear in the body of the reading;
  - headings: recall of the title and headings as Markdown heading lines (``#``/``##``/``###``);
  - s/page: engine seconds per page (one worker's wall time; the workers run side by side); and for the whole
    document, wall time and CPU time (this process and the workers, from /proc) per page. Wall times move with
    whatever else runs on the machine; the CPU times much less.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path

from tests.support import layoutpages as lp
from tests.support.textpages import word_f1, words

from bench.ocr_bench import tree_cpu
from gnosis_ocr.engines.layout import LayoutEngine
from gnosis_ocr.engines.tesseract import TesseractEngine
from gnosis_ocr.jobs.pipeline import OcrOptions, ocr_document

KINDS: tuple[tuple[str, Callable[[int], lp.PageLayout] | None], ...] = (
    ("report + ruled table", lp.report_page),
    ("two columns", lp.two_column_page),
    ("three columns", lp.three_column_page),
    ("2x2 grid", lp.grid_page),
    ("borderless table + list", lp.catalogue_page),
    ("plain prose", None),
)
# (package, file under DIR, 0-based pages, licence from the package's copyright file)
REAL_PAGES: tuple[tuple[str, str, tuple[int, ...], str], ...] = (
    ("r-doc-pdf", "usr/share/doc/r-doc-pdf/manual/R-intro.pdf", (12, 20, 40), "GPL-2+ (R Core Team)"),
    ("gnuplot-doc", "usr/share/doc/gnuplot/gnuplot.pdf", (30, 120, 200), "gnuplot licence (free to distribute)"),
)
REAL_BAND = 0.08
_TABLE = re.compile(r"<table>.*?</table>", re.S)
_ROW = re.compile(r"<tr>(.*?)</tr>", re.S)
_CELL = re.compile(r"<t[dh][^>]*>(.*?)</t[dh]>", re.S)


@dataclass(frozen=True)
class PageScore:
    kind: str
    f1: float
    order: float | None
    cells: float | None
    leakage: float | None
    headings: float | None
    seconds: float


def plain_text(markdown: str) -> str:
    """The reading's words: tables' cells as text, heading marks and list bullets removed."""
    text = _TABLE.sub(lambda m: " ".join(html.unescape(c) for c in _CELL.findall(m.group(0))), markdown)
    text = re.sub(r"<[^>]+>", " ", text)
    return re.sub(r"(?m)^(#{1,6}|-)\s+", "", text)


def table_cells(markdown: str) -> list[list[list[str]]]:
    return [
        [[" ".join(html.unescape(c).split()) for c in _CELL.findall(row)] for row in _ROW.findall(table)]
        for table in _TABLE.findall(markdown)
    ]


def cell_f1(truth: Sequence[Sequence[Sequence[str]]], found: Sequence[Sequence[Sequence[str]]]) -> float:
    want = {
        (t, r, c, cell) for t, table in enumerate(truth) for r, row in enumerate(table) for c, cell in enumerate(row)
    }
    got = {
        (t, r, c, cell) for t, table in enumerate(found) for r, row in enumerate(table) for c, cell in enumerate(row)
    }
    hits = len(want & got)
    if not hits:
        return 0.0
    precision, recall = hits / len(got), hits / len(want)
    return 2 * precision * recall / (precision + recall)


def order_score(blocks: Sequence[lp.TruthBlock], markdown: str) -> float | None:
    flat = " ".join(words(plain_text(markdown)))
    places = []
    for block in blocks:
        if block.kind in ("table",):
            continue
        key = " ".join(words(block.text)[:5])
        at = flat.find(key) if key else -1
        if at >= 0:
            places.append(at)
    pairs = list(combinations(places, 2))
    return sum(1 for a, b in pairs if a < b) / len(pairs) if pairs else None


def leakage(furniture: Sequence[lp.TruthBlock], markdown: str) -> float | None:
    if not furniture:
        return None
    lines = [" ".join(words(line)) for line in plain_text(markdown).splitlines()]
    body = " ".join(words(plain_text(markdown)))
    leaked = 0
    for block in furniture:
        key = " ".join(words(block.text))
        leaked += (key in lines) if block.kind == "page_number" else (key in body)
    return leaked / len(furniture)


def heading_recall(blocks: Sequence[lp.TruthBlock], markdown: str) -> float | None:
    heads = [b for b in blocks if b.kind in ("title", "heading")]
    if not heads:
        return None
    marked = {" ".join(words(line.lstrip("#"))) for line in markdown.splitlines() if re.match(r"#{1,3} ", line)}
    return sum(1 for b in heads if " ".join(words(b.text)) in marked) / len(heads)


def score_page(kind: str, truth: lp.PageTruth, markdown: str, seconds: float) -> PageScore:
    reference = "\n".join(b.text.replace(" | ", " ") for b in truth.body)
    return PageScore(
        kind,
        word_f1(reference, plain_text(markdown)).f1,
        order_score(truth.body, markdown),
        cell_f1(truth.tables, table_cells(markdown)) if truth.tables else None,
        leakage(truth.furniture, markdown),
        heading_recall(truth.body, markdown),
        seconds,
    )


def real_document(folder: Path, out: Path) -> tuple[Path, list[str], list[lp.PageTruth]]:
    """The chosen pages of the real manuals in one PDF; per page its kind and its truth (body text, and the
    running header and footer from the text layer's top and bottom bands)."""
    import pypdfium2 as pdfium

    merged = pdfium.PdfDocument.new()
    kinds: list[str] = []
    truths: list[lp.PageTruth] = []
    for package, name, numbers, _ in REAL_PAGES:
        source = pdfium.PdfDocument(str(folder / name))
        for number in numbers:
            page = source[number]
            width, height = page.get_size()
            text = page.get_textpage()
            body = text.get_text_bounded(0, height * REAL_BAND, width, height * (1 - REAL_BAND))
            bands = [
                text.get_text_bounded(0, height * (1 - REAL_BAND), width, height),
                text.get_text_bounded(0, 0, width, height * REAL_BAND),
            ]
            truth = lp.PageTruth(body=[lp.TruthBlock("text", body, (0, 0, width, height))])
            truth.furniture = [lp.TruthBlock("header", t.strip(), (0, 0, 0, 0)) for t in bands if t.strip()]
            truths.append(truth)
            kinds.append(f"real: {package}")
            text.close()
        merged.import_pages(source, [*numbers])
        source.close()
    merged.save(str(out))
    merged.close()
    return out, kinds, truths


def layouts(copies: int) -> list[tuple[str, lp.PageLayout]]:
    found: list[tuple[str, lp.PageLayout]] = []
    number = 1
    for _ in range(copies):
        for kind, make in KINDS:
            found.append((kind, make(number) if make is not None else lp.plain_page()))
            number += 1
    return found


def run(
    engine: LayoutEngine | TesseractEngine, pdf: Path, kinds: Sequence[str], truths: Sequence[lp.PageTruth]
) -> tuple[list[PageScore], float, float]:
    """Scores per page, and wall and CPU seconds (this process and the workers) per page of the document."""
    engine.load()
    pids = list(engine.worker_pids)
    cpu, started = tree_cpu(pids), time.perf_counter()
    result = ocr_document(pdf, engine, options=OcrOptions(text_layer="never"))
    wall = time.perf_counter() - started
    cpu = tree_cpu(pids) - cpu
    bad = [f"page {p.number}: {p.error}" for p in result.pages if not p.ok]
    if bad:
        raise RuntimeError("; ".join(bad))
    scores = [
        score_page(kind, truth, page.markdown, page.seconds)
        for kind, truth, page in zip(kinds, truths, result.pages, strict=True)
    ]
    return scores, wall / len(result.pages), cpu / len(result.pages)


def _joined(first: Path, second: Path, out: Path) -> Path:
    import pypdfium2 as pdfium

    merged = pdfium.PdfDocument(str(first))
    other = pdfium.PdfDocument(str(second))
    merged.import_pages(other)
    merged.save(str(out))
    other.close()
    merged.close()
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.mean(present) if present else None


def summary(scores: Sequence[PageScore]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for kind in dict.fromkeys(s.kind for s in scores):
        mine = [s for s in scores if s.kind == kind]
        out[kind] = {
            "pages": len(mine),
            "f1": _mean([s.f1 for s in mine]),
            "order": _mean([s.order for s in mine]),
            "cells": _mean([s.cells for s in mine]),
            "leakage": _mean([s.leakage for s in mine]),
            "headings": _mean([s.headings for s in mine]),
            "seconds": _mean([s.seconds for s in mine]),
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--copies", type=int, default=2, help="copies of the page set in the PDF (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per engine (default 2)")
    parser.add_argument("--real", type=Path, help="folder the Debian packages of REAL_PAGES were unpacked into")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    pages = layouts(args.copies)
    with tempfile.TemporaryDirectory(prefix="layout-bench-") as tmp:
        pdf, truths = lp.layout_pdf(Path(tmp) / "structure.pdf", [layout for _, layout in pages])
        kinds = [kind for kind, _ in pages]
        if args.real is not None:
            real, real_kinds, real_truths = real_document(args.real, Path(tmp) / "real.pdf")
            pdf = _joined(pdf, real, Path(tmp) / "all.pdf")
            kinds, truths = kinds + real_kinds, truths + real_truths
        results: dict[str, dict[str, dict[str, float | None]]] = {}
        walls: dict[str, float] = {}
        cpus: dict[str, float] = {}
        for name, engine in (
            ("tesseract", TesseractEngine(workers=args.workers)),
            ("layout", LayoutEngine(workers=args.workers)),
        ):
            try:
                scores, wall, cpu = run(engine, pdf, kinds, truths)
            finally:
                engine.close()
            results[name] = summary(scores)
            results[name]["all pages"] = summary([replace(s, kind="all") for s in scores])["all"]
            results[name]["all typeset"] = summary(
                [replace(s, kind="all") for s in scores if not s.kind.startswith("real")]
            )["all"]
            walls[name] = wall
            cpus[name] = cpu

    table = Table(title=f"structure per page kind ({len(kinds)} pages, {args.workers} workers): tesseract | layout")
    for column in ("kind", "word F1", "order", "table cells F1", "header/footer leakage", "headings found", "s/page"):
        table.add_column(column, justify="left" if column == "kind" else "right")

    def pair(kind: str, key: str, digits: int = 2) -> str:
        values = [results[e][kind][key] for e in ("tesseract", "layout")]
        return " | ".join("-" if v is None else f"{v:.{digits}f}" for v in values)

    for kind in [*dict.fromkeys(kinds), "all typeset", "all pages"]:
        table.add_row(
            kind,
            pair(kind, "f1", 3),
            pair(kind, "order"),
            pair(kind, "cells"),
            pair(kind, "leakage"),
            pair(kind, "headings"),
            pair(kind, "seconds"),
        )
    console = Console(width=150)
    console.print(table)
    console.print(
        f"per page of the document: wall {walls['tesseract']:.2f} s | {walls['layout']:.2f} s "
        f"({walls['layout'] / walls['tesseract']:.2f}x); CPU (parent + workers) {cpus['tesseract']:.2f} s | "
        f"{cpus['layout']:.2f} s ({cpus['layout'] / cpus['tesseract']:.2f}x)"
    )
    if args.json_out:
        args.json_out.write_text(
            json.dumps({"per_kind": results, "wall_per_page": walls, "cpu_per_page": cpus}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
