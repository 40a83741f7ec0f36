"""OCR benchmark: pages/s of `gnosis-ocr ocr` against the raw engine on the same pages, and quality per page kind.

    .venv/bin/python -m bench.ocr_bench [--pages 12] [--repeats 3] [--workers 2] [--per-kind 3] [--json-out FILE]

Throughput. One PDF of ``--pages`` born-digital pages (one- and two-column prose from ``tests/support/textpages``)
is read, in the same repeat and in rotating order, by
  - raw: plain tesserocr in ``--workers`` processes (a multiprocessing pool, one PyTessBaseAPI each, same
    tessdata/psm/oem as ours), fed the pages pre-rendered by our renderer as raw pixels: no orientation pass, no
    isolation, no rendering in the clock. The best a hand-written script does;
  - ours, engine only: ``TesseractEngine.recognize`` on the same pre-rendered pages, all in one call;
  - ours, in-process: ``ocr_document(pdf, engine)`` with a warmed engine (rendering and batching included);
  - ours, fresh engine: the same with the engine started and stopped in the clock (the CLI minus its process);
  - ours, CLI: ``python -m gnosis_ocr ocr FILE.pdf --engine tesseract --text-layer never -o OUT.json``, wall time
    of the whole process (start-up, engine start, rendering, writing);
  - the text-layer path (``--text-layer auto``) on the same pages, in-process and as the CLI;
and, to explain the differences, rendering alone, the CLI's start-up alone and an engine start alone.
CPU use is (user + sys) CPU seconds of our process tree over wall seconds ("cores busy"): this process, the live
workers from /proc/<pid>/stat, reaped children from os.times(). The CPU other processes took meanwhile is shown
too (from /proc/stat); before each timed run the bench waits, within ``--quiet-wait`` seconds in all, for them to
go quiet.

Quality. Per page kind (fonts, columns, rotation, small print, scan-like, tiny page) ``--per-kind`` pages go through
``ocr_document`` with ``--text-layer never`` and with ``auto``; each reading is scored against the page's text layer
(read before the page is turned): CER (jiwer, NFKC, whitespace collapsed) and word F1
(``tests.support.textpages.word_f1``), medians over the kind's pages.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.textpages import word_f1

from bench.ocr_quality import (
    BenchError,
    KindScore,
    bench_quality,
    build_pdf,
    page_texts,
    quality_table,
    rendered,
    throughput_specs,
)
from bench.report import Report, print_facts_and_rows
from gnosis_ocr.documents import Page, open_document
from gnosis_ocr.engines.tesseract import OEM_DEFAULT, PSM_AUTO, TesseractEngine, find_tessdata
from gnosis_ocr.jobs.pipeline import OcrOptions, TextLayerPolicy, ocr_document

ROOT = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT = 300.0  # seconds any one child process or pool run may take
LANG = "eng"
SECTION = "throughput"
BREAKDOWN = "where the time goes"
CPU = "CPU use (cpu-s / wall-s)"


# -- results ----------------------------------------------------------------------------------------------------


@dataclass
class OcrReport(Report):
    kinds: list[KindScore] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "quality": [dataclasses.asdict(k) for k in self.kinds]}


# -- CPU use of a process tree ----------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """user + sys seconds of a live process (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu(pids: Sequence[int]) -> float:
    """CPU seconds so far of this process, its reaped children, and the live processes ``pids``."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system + sum(_proc_cpu(p) for p in pids)


def machine_busy() -> float:
    """CPU seconds all processes on the machine spent so far (/proc/stat: everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / _TICK


@dataclass
class Quiet:
    """Waits, within a budget for the whole run, for other processes to leave the cores alone before a timed run."""

    budget: float  # seconds of waiting left
    threshold: float = 0.25  # cores other processes may use and still count as quiet
    waited: float = 0.0

    def wait(self) -> None:
        for _ in range(int(self.budget)):  # bounded: one-second samples until quiet or out of budget
            before, started = machine_busy(), time.perf_counter()
            time.sleep(1.0)
            busy = (machine_busy() - before) / (time.perf_counter() - started)
            if busy <= self.threshold:
                return
            self.budget -= 1.0
            self.waited += 1.0


@dataclass(frozen=True)
class Timed:
    seconds: float
    cpu: float  # CPU seconds of our process tree meanwhile
    others: float  # CPU seconds every other process on the machine took meanwhile
    texts: list[str]


def timed(run: Callable[[], list[str]], pids: Callable[[], Sequence[int]] = list) -> Timed:
    before_pids = list(pids())
    cpu_before, busy_before = tree_cpu(before_pids), machine_busy()
    started = time.perf_counter()
    texts = run()
    seconds = time.perf_counter() - started
    cpu = tree_cpu(before_pids) - cpu_before
    return Timed(seconds, cpu, max(0.0, machine_busy() - busy_before - cpu), texts)


# -- raw tesserocr in a pool ------------------------------------------------------------------------------------

_RAW_API: Any = None
RawTask = tuple[str, tuple[int, int], bytes]  # mode, size, pixels


def _raw_init(tessdata: str, psm: int, oem: int) -> None:
    global _RAW_API  # noqa: PLW0603 - one API per pool worker process, the point of the baseline
    os.environ["OMP_THREAD_LIMIT"] = "1"  # as our workers do
    import tesserocr

    _RAW_API = tesserocr.PyTessBaseAPI(path=tessdata.rstrip("/") + "/", lang=LANG, psm=psm, oem=oem)


def _raw_read(task: RawTask) -> str:
    from PIL import Image

    mode, size, pixels = task
    _RAW_API.SetImage(Image.frombytes(mode, size, pixels))
    text: str = _RAW_API.GetUTF8Text()
    _RAW_API.Clear()
    return text


@contextlib.contextmanager
def raw_pool(workers: int) -> Iterator[Any]:
    tessdata = str(find_tessdata([LANG]).path)
    pool = multiprocessing.get_context("spawn").Pool(workers, _raw_init, (tessdata, PSM_AUTO, OEM_DEFAULT))
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


def raw_task(page: Page) -> RawTask:
    """A page as raw pixels, as our engine sends its workers too."""
    return page.image.mode, page.image.size, page.image.tobytes()


def raw_read(pool: Any, tasks: Sequence[RawTask]) -> list[str]:
    texts: list[str] = pool.map_async(_raw_read, tasks, chunksize=1).get(timeout=CHILD_TIMEOUT)
    return texts


def pool_pids() -> list[int]:
    return [p.pid for p in multiprocessing.active_children() if p.pid is not None]


# -- ours -------------------------------------------------------------------------------------------------------


def ours_read(engine: TesseractEngine, pdf: Path, text_layer: TextLayerPolicy) -> list[str]:
    return page_texts(ocr_document(pdf, engine, options=OcrOptions(text_layer=text_layer)))


def engine_read(engine: TesseractEngine, pages: Sequence[Page]) -> list[str]:
    """Our engine alone on pre-rendered pages, all in one call: no rendering, no batches."""
    texts = engine.recognize(pages)
    bad = [f"page {t.number}: {t.error}" for t in texts if not t.ok]
    if bad:
        raise BenchError("; ".join(bad))
    return [t.markdown for t in texts]


def child_env(workers: int) -> dict[str, str]:
    """Defaults for the CLI child: no GNOSIS_* from our environment except the worker count."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GNOSIS_")}
    return env | {"GNOSIS_OCR_WORKERS": str(workers), "PYTHONPATH": str(ROOT / "src")}


def cli_read(pdf: Path, out: Path, text_layer: str, workers: int) -> list[str]:
    argv = [sys.executable, "-m", "gnosis_ocr", "ocr", str(pdf), "--engine", "tesseract"]
    argv += ["--text-layer", text_layer, "-o", str(out)]
    done = subprocess.run(
        argv, env=child_env(workers), cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"gnosis-ocr ocr exited {done.returncode}: {done.stderr[-2000:]}")
    pages = json.loads(out.read_text())["pages"]
    out.unlink()
    return [p["markdown"] for p in pages]


def cli_start(workers: int) -> list[str]:
    """The CLI's own start-up: interpreter, imports, Typer (no engine, no document)."""
    argv = [sys.executable, "-m", "gnosis_ocr", "ocr", "--help"]
    subprocess.run(argv, env=child_env(workers), cwd=ROOT, capture_output=True, timeout=CHILD_TIMEOUT, check=True)
    return []


def cold_read(pdf: Path, workers: int) -> list[str]:
    """A fresh engine (workers started in the clock) reads the document, then stops: the CLI minus the process."""
    with TesseractEngine(LANG, workers=workers) as engine:
        return ours_read(engine, pdf, "never")


def engine_start(workers: int) -> list[str]:
    with TesseractEngine(LANG, workers=workers):
        pass
    return []


def render_only(pdf: Path) -> list[str]:
    with open_document(pdf) as document:
        return ["" for _ in document.pages()]


# -- the throughput section -------------------------------------------------------------------------------------


@dataclass
class Throughput:
    args: argparse.Namespace
    report: OcrReport
    pdf: Path
    references: list[str]
    pages: list[Page]
    tasks: list[RawTask]
    engine: TesseractEngine
    pool: Any
    out: Path
    f1: dict[str, list[float]] = field(default_factory=dict)
    others: list[float] = field(default_factory=list)  # cores other processes took during each OCR run
    quiet: Quiet = field(default_factory=lambda: Quiet(0.0))

    def worker_pids(self) -> list[int]:
        return self.engine.worker_pids

    def methods(self) -> dict[str, tuple[Callable[[], list[str]], Callable[[], Sequence[int]]]]:
        w, workers = self.args.workers, self.worker_pids
        return {
            "raw": (lambda: raw_read(self.pool, self.tasks), pool_pids),
            "engine": (lambda: engine_read(self.engine, self.pages), workers),
            "ours": (lambda: ours_read(self.engine, self.pdf, "never"), workers),
            "cold": (lambda: cold_read(self.pdf, w), list),
            "cli": (lambda: cli_read(self.pdf, self.out, "never", w), list),
            "layer": (lambda: ours_read(self.engine, self.pdf, "auto"), workers),
            "layer-cli": (lambda: cli_read(self.pdf, self.out, "auto", w), list),
            "render": (lambda: render_only(self.pdf), list),
            "cli-start": (lambda: cli_start(w), list),
            "engine-start": (lambda: engine_start(w), list),
        }


RAW, OURS, CLI = "raw tesserocr pool, pre-rendered", "ours: ocr_document, warm engine", "ours: gnosis-ocr ocr (process)"
ROWS: dict[str, tuple[str, str, str, str | None, str]] = {
    # method -> (section, row name, unit, vs, note)
    "raw": (SECTION, RAW, "pages/s", None, "no OSD, no isolation, no rendering"),
    "engine": (SECTION, "ours: engine.recognize, pre-rendered", "pages/s", RAW, "all pages in one call"),
    "ours": (SECTION, OURS, "pages/s", RAW, "renders, batches of 2 x workers"),
    "cold": (SECTION, "ours: fresh engine + ocr_document", "pages/s", RAW, "engine start in the clock"),
    "cli": (SECTION, CLI, "pages/s", RAW, "whole process"),
    "layer": (SECTION, "text layer: ocr_document auto", "pages/s", OURS, "still renders every page"),
    "layer-cli": (SECTION, "text layer: gnosis-ocr ocr auto", "pages/s", CLI, "still starts the engine"),
    "render": (BREAKDOWN, "render only (open_document, all pages)", "s/page", None, "main process, serial"),
    "cli-start": (BREAKDOWN, "CLI start-up (ocr --help)", "s", None, "interpreter + imports"),
    "engine-start": (BREAKDOWN, "engine start + stop (load, close)", "s", None, "workers import tesserocr"),
}


def record(t: Throughput, method: str, result: Timed) -> None:
    section, name, unit, vs, note = ROWS[method]
    count = len(t.references)
    value = count / result.seconds if unit == "pages/s" else result.seconds
    t.report.row(section, name, unit, vs=vs, note=note).samples.append(value / count if unit == "s/page" else value)
    if unit != "pages/s":
        return
    scores = [word_f1(ref, hyp).f1 for ref, hyp in zip(t.references, result.texts, strict=True)]
    t.f1.setdefault(name, []).extend(scores)
    if result.seconds >= 0.5:  # CPU clock ticks are 10 ms: shorter runs say little
        cores = t.report.row(CPU, name, "cores", note=f"of {os.cpu_count()} cores")
        cores.samples.append(result.cpu / result.seconds)
        t.others.append(result.others / result.seconds)


def bench_throughput(t: Throughput) -> None:
    methods = t.methods()
    for r in range(t.args.repeats):
        for method in run_order(list(methods), r):
            run, pids = methods[method]
            t.quiet.wait()
            record(t, method, timed(run, pids))
    others = t.report.row(CPU, "other processes on the machine, meanwhile", "cores", note="> 0.2: contended")
    others.samples.extend(t.others)
    for name, scores in t.f1.items():
        t.report.row("word F1 of the throughput pages", name, "F1").samples.extend(scores)


def run_order(items: Sequence[Any], repeat: int) -> list[Any]:
    """Forward, backward, then shifted by one and again: no method always first or last."""
    k = (repeat // 2) % len(items) if items else 0
    shifted = [*items[k:], *items[:k]]
    return shifted[::-1] if repeat % 2 else shifted


def orientation_passes(engine: TesseractEngine, pdf: Path) -> int:
    """How many pages of ``pdf`` made our engine run OSD (a second pass) at all."""
    result = ocr_document(pdf, engine, options=OcrOptions(text_layer="never"))
    return sum(1 for p in result.pages if "orientation_confidence" in p.meta)


def verdict(report: OcrReport) -> str:
    """The issue's goal in one line: ours >= 0.9 x raw, both cores used."""
    raw = report.median_of(SECTION, RAW)
    parts = []
    for label, name in (("in-process", OURS), ("CLI", CLI)):
        ours, cores = report.median_of(SECTION, name), report.median_of(CPU, name)
        if raw and ours is not None:
            parts.append(f"{label} {ours / raw:.2f} x raw" + (f" on {cores:.2f} cores" if cores else ""))
    raw_cores = report.median_of(CPU, RAW)
    return "; ".join(parts) + (f"; raw on {raw_cores:.2f} cores" if raw_cores else "") + " (goal: >= 0.90 x raw)"


# -- output -----------------------------------------------------------------------------------------------------


def print_report(report: OcrReport) -> None:
    print_facts_and_rows(report, "gnosis-ocr OCR benchmark", width=160)
    if report.kinds:
        from rich.console import Console

        Console(width=160, highlight=False).print(quality_table(report.kinds))


# -- main -------------------------------------------------------------------------------------------------------


def machine_facts(args: argparse.Namespace) -> dict[str, Any]:
    import tesserocr

    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    found = find_tessdata([LANG, "osd"])
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "tesseract": tesserocr.tesseract_version().splitlines()[0],
        "tessdata": f"{found.path} ({', '.join(f'{k}: {v}' for k, v in found.providers.items())})",
        "workers": f"{args.workers} (ours and raw)",
        "repeats": args.repeats,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ocr_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=12, help="pages in the throughput document")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per throughput measurement (medians)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, ours and raw")
    parser.add_argument("--per-kind", type=int, default=3, help="pages per kind in the quality section")
    parser.add_argument(
        "--quiet-wait", type=float, default=60.0, help="seconds, in all, to wait for other processes to go quiet"
    )
    parser.add_argument("--json-out", type=Path, default=None, help="also write the numbers here as JSON")
    args = parser.parse_args(argv)
    if min(args.pages, args.repeats, args.workers, args.per_kind) < 1:
        parser.error("--pages, --repeats, --workers and --per-kind must be at least 1")
    return args


def run_all(args: argparse.Namespace, report: OcrReport, tmp: Path, stack: contextlib.ExitStack) -> None:
    doc = build_pdf(tmp / "throughput.pdf", throughput_specs(args.pages))
    two = sum(1 for s in throughput_specs(args.pages) if s.columns == 2)
    report.facts["document"] = f"{args.pages} A4 pages ({args.pages - two} one-column, {two} two-column), born-digital"
    engine = stack.enter_context(TesseractEngine(LANG, workers=args.workers))
    pool = stack.enter_context(raw_pool(args.workers))
    pages = rendered(doc.path)
    tasks = [raw_task(page) for page in pages]
    raw_read(pool, tasks[: 2 * args.workers])  # warm-up: both APIs loaded
    t = Throughput(args, report, doc.path, doc.references, pages, tasks, engine, pool, tmp / "out.json")
    t.quiet = Quiet(args.quiet_wait)
    try:
        bench_throughput(t)
    finally:
        report.facts["waited for a quiet machine"] = f"{t.quiet.waited:.0f} s (budget {args.quiet_wait:g} s)"
    report.facts["verdict"] = verdict(report)
    osd = report.row(BREAKDOWN, "pages where ours ran OSD (2nd pass)", "pages", note="upright pages: 0 expected")
    osd.samples.append(orientation_passes(engine, doc.path))
    report.kinds.extend(bench_quality(engine, tmp / "kinds", args.per_kind))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (a CI timeout, `kill`) unwinds like an error, so workers and temp folders go away too
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    report = OcrReport(facts=machine_facts(args))
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gnosis-ocr-bench-")))
            run_all(args, report, tmp, stack)
    finally:
        report.facts["bench seconds"] = round(time.monotonic() - started, 1)
        print_report(report)
        if args.json_out is not None:
            report.write_json(args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
