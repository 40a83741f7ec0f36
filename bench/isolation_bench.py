"""Render isolation benchmark: per-page cost of rendering in worker processes against rendering in-process.

    .venv/bin/python -m bench.isolation_bench [--pages 20] [--repeats 5] [--target-pixels 2400000]

One text PDF of ``--pages`` pages, opened and rendered whole ``--repeats`` times each way: in this process
(``render_workers=0``, PDFium and Pillow unbounded) and isolated (the default: open and render workers under
RLIMIT_AS and a per-page timeout). "cold" is the first isolated document, which starts the workers; "warm" reuses
them. Medians of wall seconds per document and per page; overhead = isolated minus in-process, per page.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

from tests.documents import make

from gnosis_ocr.documents import DocumentLimits, Page, open_document


def _one(path: Path, limits: DocumentLimits) -> float:
    started = time.perf_counter()
    with open_document(path, limits=limits) as doc:
        pages = list(doc.pages())
    assert all(isinstance(p, Page) for p in pages), pages
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--target-pixels", type=int, default=DocumentLimits().target_pixels)
    args = parser.parse_args(argv)
    isolated = DocumentLimits(target_pixels=args.target_pixels)
    inline = dataclasses.replace(isolated, render_workers=0)
    with TemporaryDirectory() as scratch:
        path = Path(scratch) / "doc.pdf"
        path.write_bytes(make.text_pdf([[f"page {n}", "a line of text " * 6] * 30 for n in range(args.pages)]))
        cold = _one(path, isolated)
        times: dict[str, list[float]] = {"in-process": [], "isolated (warm)": []}
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            times["in-process"].append(_one(path, inline))
            times["isolated (warm)"].append(_one(path, isolated))
    base = statistics.median(times["in-process"]) / args.pages
    print(f"{args.pages}-page PDF at {args.target_pixels:,} px/page, {args.repeats} repeats")
    print(f"{'mode':<18}{'s/document':>12}{'ms/page':>10}{'overhead ms/page':>18}")
    rows = [("isolated (cold)", cold), *((mode, statistics.median(samples)) for mode, samples in times.items())]
    for mode, seconds in rows:
        per_page = seconds / args.pages
        print(f"{mode:<18}{seconds:>12.3f}{1000 * per_page:>10.1f}{1000 * (per_page - base):>18.1f}")


if __name__ == "__main__":
    main()
