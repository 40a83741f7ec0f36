"""Render benchmark: seconds for ``markdown_to_html`` on ~1 MB of each kind of OCR output, and where they go.

    .venv/bin/python -m bench.render_bench [--kib 1024] [--repeats 3] [--json-out FILE]

Kinds: Tesseract-like plain paragraphs; VLM prose with inline math and emphasis; VLM pages with HTML tables;
GFM pipe tables; a math-dense page (every expression distinct, so the per-page conversion cache does not help).
Each is split into the stages of ``gnosis_ocr.api.render`` (scan, markdown-it, latex2mathml, nh3) so a slow
total names its stage. Times are CPU seconds of this process (``time.process_time``), which a busy machine
inflates less than wall time; the wall time of the whole call is shown next to it.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from bench.report import Report, print_facts_and_rows
from gnosis_ocr.api import render

T = TypeVar("T")

KINDS: dict[str, Callable[[int], str]] = {
    "plain": lambda i: f"Paragraph {i} of a scanned letter, as Tesseract reads it, costs $5 and $10.\n" * 4 + "\n",
    "prose+math": lambda i: f"## Part {i}\n\nThe *quick* fox, $x_{{{i % 50}}}^2$, jumps **over** $\\alpha$.\n\n",
    "html tables": lambda i: (
        f'<table><tr><th colspan="2">Table {i}</th></tr>' + "<tr><td>cell</td><td>123.45</td></tr>" * 8 + "</table>\n\n"
    ),
    "gfm tables": lambda i: f"| item {i} | qty | price |\n|---|:-:|--:|\n" + "| tea | 2 | 3.50 |\n" * 8 + "\n",
    "math-dense": lambda i: f"$$\\frac{{a_{{{i}}} + b}}{{\\sqrt{{c_{{{i}}}}}}} = \\sum_{{k=0}}^{{{i}}} k$$\n\n",
}


def document(kind: str, size: int) -> str:
    parts: list[str] = []
    total = i = 0
    while total < size:
        part = KINDS[kind](i)
        parts.append(part)
        total += len(part)
        i += 1
    return "".join(parts)


def cpu(fn: Callable[[], T]) -> tuple[float, T]:
    began = time.process_time()
    result = fn()
    return time.process_time() - began, result


def measure(report: Report, kind: str, source: str) -> None:
    wall_began = time.perf_counter()
    seconds, _ = cpu(lambda: render.markdown_to_html(source))
    report.row(kind, "total (wall)", "s").samples.append(time.perf_counter() - wall_began)
    report.row(kind, "total", "s CPU").samples.append(seconds)
    text = render._normalise(source)
    seconds, (protected, maths) = cpu(lambda: render._protect(text))
    report.row(kind, "scan", "s CPU", vs="total").samples.append(seconds)
    seconds, html = cpu(lambda: render._render_markdown(protected))
    report.row(kind, "markdown-it", "s CPU", vs="total").samples.append(seconds)
    seconds, mathml = cpu(lambda: render._convert_all(maths))
    report.row(kind, "latex2mathml", "s CPU", vs="total", note=f"{len(maths)} expressions").samples.append(seconds)
    fragment = render._PLACEHOLDER.sub(lambda m: mathml[int(m.group(1))], html)
    seconds, _ = cpu(lambda: str(render._CLEANER.clean(fragment)))
    report.row(kind, "nh3", "s CPU", vs="total").samples.append(seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.render_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--kib", type=int, default=1024, help="input size per kind")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    report = Report(
        facts={
            "input": f"{args.kib} KiB per kind",
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "load average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        }
    )
    docs = {kind: document(kind, args.kib * 1024) for kind in KINDS}
    for _ in range(args.repeats):
        for kind, source in docs.items():
            measure(report, kind, source)
    print_facts_and_rows(report, "gnosis-ocr render benchmark", width=140)
    if args.json_out:
        report.write_json(args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
