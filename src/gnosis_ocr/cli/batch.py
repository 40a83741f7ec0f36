"""``gnosis-ocr batch SRC DST``: a collection to results beside their names, one shard per task, resumable."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, TaskID

from gnosis_ocr.cli.cache import parse_storage_options
from gnosis_ocr.cli.errors import EXIT_PARTIAL
from gnosis_ocr.cli.ocr import EngineOpt, ModelOpt, TextLayerOpt
from gnosis_ocr.cli.progress import count_bars, print_engine
from gnosis_ocr.engines import engine_from_settings
from gnosis_ocr.jobs.batch import (
    BatchPlan,
    DocumentOutcome,
    check_options,
    list_batch,
    open_tree,
    resolve_shard,
    run_batch,
    write_error_report,
)
from gnosis_ocr.jobs.pipeline import OcrOptions
from gnosis_ocr.jobs.results import PageResult
from gnosis_ocr.modelcache import cache_from_settings
from gnosis_ocr.settings import Settings


def _outcome_line(outcome: DocumentOutcome) -> str:
    if outcome.error is not None:
        return f"{outcome.path}: failed: {_one_line(outcome.error)}"
    failed = f", {len(outcome.failed_pages)} failed" if outcome.failed_pages else ""
    return f"{outcome.path}: {outcome.pages} page{'' if outcome.pages == 1 else 's'}{failed} in {outcome.seconds:.1f} s"


def _plan_line(plan: BatchPlan) -> str:
    mine = len(plan.todo) + len(plan.skipped)
    return (
        f"batch: task {plan.shard}: {mine} of {plan.total} documents in this shard: {len(plan.skipped)} already "
        f"done, {len(plan.todo)} to do"
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Lines:
    """One plain line per document on stderr, for logs (Cloud Run, kubectl logs, CI)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._prefix = "batch:"
        self._todo = 0
        self._finished = 0

    def batch_planned(self, plan: BatchPlan) -> None:
        self._prefix = f"batch: task {plan.shard}:"
        self._todo = len(plan.todo)
        self._console.print(_plan_line(plan), markup=False, highlight=False)

    def document_started(self, name: str, pages: int) -> None:
        pass

    def page_done(self, name: str, page: PageResult) -> None:
        pass

    def document_finished(self, outcome: DocumentOutcome) -> None:
        self._finished += 1
        line = f"{self._prefix} [{self._finished}/{self._todo}] {_outcome_line(outcome)}"
        self._console.print(line, markup=False, highlight=False)


class _Bars:
    """A bar for the shard's documents and one for the pages of the document being read (a terminal)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._documents: TaskID | None = None
        self._pages: TaskID | None = None

    def batch_planned(self, plan: BatchPlan) -> None:
        self._progress.console.print(_plan_line(plan), markup=False, highlight=False)
        self._documents = self._progress.add_task(f"task {plan.shard}", total=len(plan.todo))

    def document_started(self, name: str, pages: int) -> None:
        self._pages = self._progress.add_task(name if len(name) <= 60 else "..." + name[-57:], total=pages)

    def page_done(self, name: str, page: PageResult) -> None:
        if self._pages is not None:
            self._progress.advance(self._pages)

    def document_finished(self, outcome: DocumentOutcome) -> None:
        if self._pages is not None:
            self._progress.remove_task(self._pages)
            self._pages = None
        if self._documents is not None:
            self._progress.advance(self._documents)
        if not outcome.ok:
            self._progress.console.print(f"warning: {_outcome_line(outcome)}", markup=False, highlight=False)


def batch(
    source: Annotated[
        str, typer.Argument(metavar="SRC", help="Folder of documents: a local path, gs://bucket/prefix or s3://...")
    ],
    destination: Annotated[
        str, typer.Argument(metavar="DST", help="Folder for the results: a local path, gs://bucket/prefix or s3://...")
    ],
    engine: EngineOpt = None,
    model: ModelOpt = None,
    pages: Annotated[
        str | None,
        typer.Option(
            "--pages",
            "-p",
            help="Pages to read of every document, e.g. -3 (at most the first three) or 1-3,7; a page past a "
            "document's end fails that document.",
        ),
    ] = None,
    text_layer: TextLayerOpt = None,
    task_index: Annotated[
        int | None,
        typer.Option(
            "--task-index",
            min=0,
            help="This task's index, from 0. Default: CLOUD_RUN_TASK_INDEX, else JOB_COMPLETION_INDEX.",
        ),
    ] = None,
    task_count: Annotated[
        int | None,
        typer.Option(
            "--task-count",
            min=1,
            help="How many tasks share the collection. Default: CLOUD_RUN_TASK_COUNT (needed with "
            "JOB_COMPLETION_INDEX: the Job's completions).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Redo every document of this shard, even those with results.")
    ] = False,
    errors_to: Annotated[
        str | None,
        typer.Option(
            "--errors-to",
            help="Folder (local, gs://, s3://) for a JSON report of this task, task-<index>-of-<count>.json: "
            "counts and every failed document or page, rewritten by each run.",
        ),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            help="fsspec storage option KEY=VALUE for every gs:// or s3:// URL given (repeatable; VALUE may be "
            "JSON), e.g. token=anon against an emulator.",
        ),
    ] = None,
) -> None:
    """OCR a whole collection, sharded over the tasks of a Cloud Run Job or Kubernetes Indexed Job; resumable.

    Documents are the files below SRC (recursive) ending in .pdf .png .jpg .jpeg .tif .tiff .webp (any case),
    named by their path relative to SRC and read in sorted order. Results go beside those names under DST:
    a/b/scan.pdf gives DST/a/b/scan.pdf.md and DST/a/b/scan.pdf.json (as `gnosis-ocr ocr -f md` / `-f json`).
    Each is written whole (one PUT to a bucket; temp file and rename on disk), the .json last: a document whose
    .json exists is done, and a rerun skips it without reading it, so a killed or retried task resumes where it
    stopped. --force redoes the shard. A document that cannot be read gets no result and is tried again by the
    next run; one with failed pages is written, its .json saying which pages failed and why.

    Shards: document p belongs to task int(sha256(p)[:8]) mod COUNT (the UTF-8 relative path; the first 8 bytes
    of the digest, big-endian). It depends on the name alone, so adding documents never moves the others.
    The task is --task-index/--task-count, else CLOUD_RUN_TASK_INDEX/CLOUD_RUN_TASK_COUNT (Cloud Run Jobs), else
    JOB_COMPLETION_INDEX (Kubernetes Indexed Jobs) with --task-count; with none of them one task does everything.

    The engine is loaded once per task; settings come from the environment as for `gnosis-ocr ocr`
    (GNOSIS_ENGINE, MODEL_CACHE_PATH, GNOSIS_MAX_*, ...); bucket credentials from the usual places
    (GOOGLE_APPLICATION_CREDENTIALS, AWS_* variables). Progress bars on a terminal, else one log line per
    document (stderr). At the end, on stdout: one summary line, then one line per failed document or page.

    Exit codes: 0 every document of the shard read; 11 some documents or pages failed (the others are written);
    2 bad usage (SRC missing or without documents, task index not below the count); 12 results could not be
    written to DST (full, not writable: a rerun resumes); 10 the engine cannot run; others as for every command.

    A Cloud Run Job of 20 tasks over a bucket (execute it again to resume, or to retry the failures; the image's
    entry point runs gnosis-ocr, so only --args is given; deploy/cloudrun.sh batch-job does all this):

      gcloud run jobs create ocr-batch --image IMAGE --tasks 20 --parallelism 20 --max-retries 3 \\
        --task-timeout 24h \\
        --args batch,gs://my-docs/in,gs://my-docs/out,--errors-to,gs://my-docs/out/_errors
      gcloud run jobs execute ocr-batch

    A Kubernetes Indexed Job (completionMode: Indexed, completions: 20) runs the same with --task-count 20.
    """
    overrides: dict[str, Any] = {}
    if model:
        overrides["model_name"] = model
    settings = Settings(**overrides)
    shard = resolve_shard(os.environ, index=task_index, count=task_count)
    options = OcrOptions(
        pages=pages, text_layer=(text_layer.value if text_layer else settings.text_layer), limits=settings.limits()
    )
    check_options(options)
    storage_options = parse_storage_options(option or [])
    src = open_tree(source, storage_options)
    dst = open_tree(destination, storage_options)
    errors_tree = open_tree(errors_to, storage_options) if errors_to else None
    err = Console(stderr=True, soft_wrap=True)
    plan = list_batch(src, dst, shard, force=force)  # before the engine: a bad SRC costs no model load
    # no engine at all when everything is done; otherwise created once, started by its first page
    chosen = None
    if plan.todo:
        chosen = engine_from_settings(settings, cache_from_settings(settings), engine)
        print_engine(err, chosen.info)
    try:
        with count_bars(err) as bars:
            progress = _Bars(bars) if err.is_terminal else _Lines(err)
            report = run_batch(plan, src, dst, chosen, options=options, progress=progress)
    finally:
        if chosen is not None:
            chosen.close()
    typer.echo(report.summary())
    for document, page, error in report.errors():
        where = document if page is None else f"{document} page {page}"
        typer.echo(f"  {where}: {_one_line(error)}")
    if errors_tree is not None:
        name = write_error_report(errors_tree, report)
        err.print(f"batch: task {shard}: report written to {errors_tree.url}/{name}", markup=False, highlight=False)
    if not report.ok:
        raise typer.Exit(EXIT_PARTIAL)
