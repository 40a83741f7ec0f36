"""Pages with honest ground truth for the OCR benchmark, and its quality section (CER, word F1 per page kind).

Pages are typeset by ``tests.support.textpages.text_pdf`` (one PDF page per ``PageSpec``), joined and turned with
pypdfium2. The reference for each page is its text layer, read before the page is turned.
"""

from __future__ import annotations

import statistics
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.textpages import PROSE, scan_like, text_pdf, word_f1

from gnosis_ocr.documents import Page, PageError, open_document
from gnosis_ocr.engines.tesseract import TesseractEngine
from gnosis_ocr.jobs.pipeline import OcrOptions, ocr_document
from gnosis_ocr.jobs.results import DocumentResult


class BenchError(RuntimeError):
    """A step of the benchmark failed (a child exited non-zero, a page came back with an error)."""


# -- pages with ground truth ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageSpec:
    paragraphs: tuple[str, ...]
    font: str = "Helvetica"
    size: float = 11.0
    columns: int = 1
    column_break_after: int | None = None
    pagesize: tuple[float, float] | None = None
    rotation: int = 0  # the PDF page's /Rotate


def prose(start: int, count: int) -> tuple[str, ...]:
    return tuple(PROSE[(start + i) % len(PROSE)] for i in range(count))


@dataclass(frozen=True)
class Doc:
    path: Path
    references: list[str]  # per page, the text layer of the page before it was turned


def build_pdf(path: Path, specs: Sequence[PageSpec]) -> Doc:
    """One PDF page per spec (typeset by ``text_pdf``, then joined and turned with pypdfium2).

    The references are read from the unturned pages: pdfium reads the text layer of a page with /Rotate 90 in
    reverse line order, which would score a correct reading as scrambled.
    """
    import pypdfium2 as pdfium

    merged = pdfium.PdfDocument.new()
    references = []
    try:
        for index, spec in enumerate(specs):
            part = text_pdf(
                path.with_name(f"{path.stem}-part{index}.pdf"),
                spec.paragraphs,
                font=spec.font,
                size=spec.size,
                columns=spec.columns,
                column_break_after=spec.column_break_after,
                pagesize=spec.pagesize,
            )
            layers = text_layers(part)
            if len(layers) != 1:
                raise BenchError(f"{part}: the text spilled onto {len(layers)} pages; shorten it")
            references.append(layers[0])
            source = pdfium.PdfDocument(str(part))
            try:
                merged.import_pages(source)
            finally:
                source.close()
            if spec.rotation:
                merged[index].set_rotation(spec.rotation)
        merged.save(str(path))
    finally:
        merged.close()
    return Doc(path, references)


def text_layers(pdf: Path) -> list[str]:
    """Each page's text layer straight from pdfium."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(str(pdf))
    try:
        found = []
        for index in range(len(document)):
            textpage = document[index].get_textpage()
            found.append(textpage.get_text_range())
            textpage.close()
        return found
    finally:
        document.close()


def throughput_specs(count: int) -> list[PageSpec]:
    """Every third page two-column; one-column pages alternate Helvetica 11 and Times 11."""
    specs = []
    for i in range(count):
        if i % 3 == 2:
            specs.append(PageSpec(prose(i, 6), columns=2, column_break_after=3, size=10))
        else:
            specs.append(PageSpec(prose(i, 4), font="Times-Roman" if i % 3 else "Helvetica"))
    return specs


def _flatten(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def cer(reference: str, hypothesis: str) -> float:
    import jiwer

    ref, hyp = _flatten(reference), _flatten(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.cer(ref, hyp))


# -- rendering and reading ----------------------------------------------------------------------------------


def rendered(pdf: Path) -> list[Page]:
    """The pages as our renderer makes them."""
    pages = []
    with open_document(pdf) as document:
        for page in document.pages():
            if isinstance(page, PageError):
                raise BenchError(f"{pdf}: page {page.number} did not render: {page.message}")
            pages.append(page)
    return pages


def page_texts(result: DocumentResult) -> list[str]:
    bad = [f"page {p.number}: {p.error}" for p in result.pages if not p.ok]
    if bad:
        raise BenchError(f"{result.name}: {'; '.join(bad)}")
    return [p.markdown for p in result.pages]


# -- the quality section ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    name: str
    specs: tuple[PageSpec, ...]
    scan: dict[str, float] | None = None  # scan_like() arguments: pages made to look scanned, read as a TIFF


@dataclass(frozen=True)
class Scores:
    cer: float  # medians over pages
    f1: float
    f1_min: float


@dataclass(frozen=True)
class KindScore:
    kind: str
    pages: int
    ocr: Scores
    seconds_per_page: float  # engine seconds per page (one worker's wall time for the page)
    rotations: str  # rotations our engine applied, e.g. "270 x2"
    deskews: str  # degrees each page was straightened by, e.g. "2, 2, 1.99"; "-" when the engine did not say
    layer: Scores | None  # the text-layer path on the same pages (None: the kind has no text layer)


TINY = (200.0, 120.0)
SCANS: tuple[dict[str, float], ...] = (  # scan_like() arguments, mild to harsh
    {"skew": 1.2, "blur": 0.8, "noise": 18.0, "jpeg_quality": 55},  # scan_like's defaults
    {"skew": 2.0, "blur": 1.0, "noise": 30.0, "jpeg_quality": 30},
    {"skew": 2.0, "blur": 1.3, "noise": 25.0, "jpeg_quality": 35},
)
SKEWED: tuple[dict[str, float], ...] = (  # how far deskewing reaches: small and large turns, clean and harsh
    {"skew": -2.0, "blur": 0.0, "noise": 0.0, "jpeg_quality": 95},  # clean print, only turned
    {"skew": 0.5, "blur": 1.3, "noise": 25.0, "jpeg_quality": 35},
    {"skew": 5.0, "blur": 0.8, "noise": 18.0, "jpeg_quality": 55},
)
TURNED_SCAN = {"skew": 2.0, "blur": 0.8, "noise": 18.0, "jpeg_quality": 55}  # on a page turned by 90 degrees


def scan_name(scan: dict[str, float]) -> str:
    skew, blur, noise, quality = scan["skew"], scan["blur"], scan["noise"], scan["jpeg_quality"]
    return f"scan: skew {skew:g}°, blur {blur:g}, noise {noise:g}, JPEG {quality:g}"


def kinds(per_kind: int) -> list[Kind]:
    def pages(**kw: Any) -> tuple[PageSpec, ...]:
        count = kw.pop("count", 3)
        return tuple(PageSpec(prose(3 * i, count), **kw) for i in range(per_kind))

    sentences = [s.strip().rstrip(".") + "." for p in PROSE for s in p.split(". ") if len(s) < 110]
    return [
        Kind("Helvetica 11pt", pages()),
        Kind("Times 10pt", pages(font="Times-Roman", size=10)),
        Kind("two-column", pages(count=6, columns=2, column_break_after=3, size=10)),
        Kind("rotated 90", pages(rotation=90)),
        Kind("rotated 180", pages(rotation=180)),
        Kind("rotated 270", pages(rotation=270)),
        Kind("small 8pt", pages(count=5, size=8)),
        *(Kind(scan_name(scan), pages(), scan=scan) for scan in SCANS + SKEWED),
        Kind(f"rotated 90, {scan_name(TURNED_SCAN)}", pages(rotation=90), scan=TURNED_SCAN),
        Kind(
            "tiny page 200x120pt",
            tuple(PageSpec((sentences[i % len(sentences)],), size=9, pagesize=TINY) for i in range(per_kind)),
        ),
    ]


def scan_tiff(pdf: Path, path: Path, scan: dict[str, Any]) -> Path:
    """The PDF's pages rendered by our renderer, made scan-like, saved as one multi-page TIFF."""
    images = [scan_like(page.image, seed=page.number, **scan) for page in rendered(pdf)]
    images[0].save(path, save_all=True, append_images=images[1:])
    return path


def scores(references: Sequence[str], texts: Sequence[str]) -> Scores:
    f1s = [word_f1(ref, hyp).f1 for ref, hyp in zip(references, texts, strict=True)]
    cers = [cer(ref, hyp) for ref, hyp in zip(references, texts, strict=True)]
    return Scores(statistics.median(cers), statistics.median(f1s), min(f1s))


def layer_scores(engine: TesseractEngine, doc: Doc, kind: str) -> Scores:
    """The text-layer path (--text-layer auto) on the same pages; every page must take its layer."""
    result = ocr_document(doc.path, engine, options=OcrOptions(text_layer="auto"))
    if any(p.source != "text-layer" for p in result.pages):
        raise BenchError(f"{kind}: --text-layer auto did not take the text layer on every page")
    return scores(doc.references, page_texts(result))


def score_kind(engine: TesseractEngine, kind: Kind, pdf: Path) -> KindScore:
    doc = build_pdf(pdf, kind.specs)
    source = pdf if kind.scan is None else scan_tiff(pdf, pdf.with_suffix(".tiff"), kind.scan)
    result = ocr_document(source, engine, options=OcrOptions(text_layer="never"))
    texts = page_texts(result)
    turned = [int(str(p.meta.get("rotation", 0))) for p in result.pages]
    deskews = [p.meta.get("deskew_degrees") for p in result.pages]
    return KindScore(
        kind.name,
        len(texts),
        scores(doc.references, texts),
        sum(p.seconds for p in result.pages) / len(texts),
        ", ".join(f"{deg} x{turned.count(deg)}" for deg in sorted(set(turned))),
        "-" if all(d is None for d in deskews) else ", ".join(f"{float(str(d)):g}" for d in deskews),
        layer_scores(engine, doc, kind.name) if kind.scan is None else None,
    )


def bench_quality(engine: TesseractEngine, folder: Path, per_kind: int) -> list[KindScore]:
    folder.mkdir()
    return [score_kind(engine, kind, folder / f"kind{index}.pdf") for index, kind in enumerate(kinds(per_kind))]


def quality_table(kinds: Sequence[KindScore]) -> Any:
    from rich.table import Table

    table = Table(title="quality per page kind: tesseract (--text-layer never) and the text layer (auto); medians")
    columns = (
        "kind",
        "pages",
        "CER",
        "word F1",
        "F1 min",
        "s/page",
        "rotation applied",
        "deskew °",
        "layer CER",
        "layer F1",
    )
    for name in columns:
        table.add_column(name, justify="left" if name in ("kind", "rotation applied", "deskew °") else "right")
    for k in kinds:
        layer = (f"{k.layer.cer:.3f}", f"{k.layer.f1:.3f}") if k.layer is not None else ("-", "- (no layer)")
        ocr = (f"{k.ocr.cer:.3f}", f"{k.ocr.f1:.3f}", f"{k.ocr.f1_min:.3f}")
        table.add_row(k.kind, str(k.pages), *ocr, f"{k.seconds_per_page:.2f}", k.rotations, k.deskews, *layer)
    return table
