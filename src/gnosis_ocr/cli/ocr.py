"""``gnosis-ocr ocr FILE...``: documents to Markdown or JSON, on stdout or into files."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, TaskID

from gnosis_ocr.cli.errors import EXIT_PARTIAL, exit_code
from gnosis_ocr.cli.progress import count_bars, print_engine
from gnosis_ocr.engines import engine_from_settings
from gnosis_ocr.engines.feeder import OnFirstUse
from gnosis_ocr.errors import ConfigError, DocumentError
from gnosis_ocr.jobs.pipeline import OcrOptions
from gnosis_ocr.jobs.results import DocumentResult, PageResult
from gnosis_ocr.jobs.searchable import PageImages, result_pages, write_pdf
from gnosis_ocr.modelcache import cache_from_settings
from gnosis_ocr.modelcache.fsutil import atomic_write_bytes, atomic_writer
from gnosis_ocr.settings import Settings


class Format(StrEnum):
    md = "md"
    json = "json"
    pdf = "pdf"  # searchable: the page images with their text as an invisible layer


class TextLayer(StrEnum):
    auto = "auto"
    never = "never"
    only = "only"


class _PageBars:
    """A bar per document, advanced page by page (PipelineProgress)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def document_started(self, name: str, pages: int) -> None:
        self._tasks[name] = self._progress.add_task(name, total=pages)

    def page_done(self, name: str, page: PageResult) -> None:
        self._progress.advance(self._tasks[name])


def _write(path: Path, data: bytes) -> None:
    """Write by temp file, fsync and rename, so a crash never leaves half a result under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data, cache=False)


def _format(fmt: Format | None, output: Path | None) -> Format:
    """The format asked for, else json for ``-o *.json``, else md. A PDF is only ever written when asked for by
    ``-f pdf``: ``-o some.pdf`` alone may name a document, never to be overwritten by a guess."""
    fmt = fmt or (Format.json if output is not None and output.suffix == ".json" else Format.md)
    if fmt is Format.pdf and output is None:
        raise ConfigError(
            "-f pdf writes a binary file, not text for the terminal.",
            hint="Give -o out.pdf (one input) or -o FOLDER (FOLDER/<name>.pdf per input).",
        )
    return fmt


def _read_to_pdf(read: Callable[..., DocumentResult], path: Path) -> DocumentResult:
    """Read a document keeping its page images (JPEG, spooled to a temporary file), then write its searchable PDF
    into a temporary file beside ``path`` and rename it into place."""
    with PageImages() as images:
        result = read(on_render=images.on_render)
        with atomic_writer(path, cache=False) as out:
            write_pdf(result_pages(result, images), out)
    return result


def _render(result: DocumentResult, fmt: Format) -> bytes:
    if fmt is Format.json:
        return (json.dumps(result.to_dict(), indent=1, ensure_ascii=False) + "\n").encode()
    return result.markdown().encode()


def _targets(files: list[Path], output: Path, fmt: Format) -> dict[Path, Path]:
    """Where each result goes: ``output`` itself for one input and a *.md/*.json name, else ``output/<stem>.<fmt>``."""
    single = (".md", ".json", ".pdf") if fmt is Format.pdf else (".md", ".json")
    if len(files) == 1 and output.suffix in single and not output.is_dir():
        targets = {files[0]: output}
    elif output.exists() and not output.is_dir():
        raise ConfigError(
            f"-o {output} is an existing file; with this input it must be a folder (or, for one input, a *.md or "
            "*.json file name).",
            hint="Give a folder: results are written as <name>.md or <name>.json inside it.",
        )
    else:
        stems = [f.stem for f in files]
        targets = {f: output / f"{f.stem if stems.count(f.stem) == 1 else f.name}.{fmt.value}" for f in files}
    inputs = {f.resolve() for f in files}
    for target in targets.values():
        if target.resolve() in inputs:
            raise ConfigError(f"Refusing to overwrite the input {target} with its result.", hint="Choose another -o.")
    return targets


# options shared by `ocr` and `batch`
EngineOpt = Annotated[
    str | None,
    typer.Option(
        "--engine",
        "-e",
        help="auto (the VLM with a GPU and a complete cached model, else layout where its model file is installed, "
        "else tesseract), vlm, tesseract, layout, remote, or an engine named in GNOSIS_ENGINE_PLUGINS. "
        "Default: GNOSIS_ENGINE or auto.",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Qwen2.5-VL model id for the VLM engine. Default: MODEL_NAME."),
]
TextLayerOpt = Annotated[
    TextLayer | None,
    typer.Option(
        "--text-layer", help="Use a PDF page's own text: auto (with the CPU engine), never, only (never OCR)."
    ),
]


def ocr(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="PDF, PNG, JPEG, TIFF or WebP files (type sniffed from content).",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="A file (one input, *.md or *.json) or a folder for <name>.<format> per input. Default: stdout.",
        ),
    ] = None,
    fmt: Annotated[
        Format | None,
        typer.Option(
            "--format",
            "-f",
            help="md (page markers), json (per-page text, timings, engine, model commit) or pdf (searchable: the "
            "page images with their text as an invisible layer; needs -o). Default: from -o, else md.",
        ),
    ] = None,
    engine: EngineOpt = None,
    model: ModelOpt = None,
    pages: Annotated[
        str | None, typer.Option("--pages", "-p", help="Pages to read, e.g. 1-3,7 or 5- (1-based).")
    ] = None,
    text_layer: TextLayerOpt = None,
) -> None:
    """Read documents and write Markdown (or JSON). A page that fails is reported and the rest completes.

    Exit codes: 0 all pages read; 9 a document could not be read (others still are); 10 the engine cannot run;
    11 some pages failed.
    """
    overrides: dict[str, Any] = {}
    if model:
        overrides["model_name"] = model
    settings = Settings(**overrides)
    fmt = _format(fmt, output)
    targets = _targets(files, output, fmt) if output is not None else {}
    options = OcrOptions(
        pages=pages,
        text_layer=(text_layer.value if text_layer else settings.text_layer),
        limits=settings.limits(),
        loop_guard=settings.vlm_loop_guard,
        loop_retries=settings.vlm_loop_retries,
    )
    err = Console(stderr=True)
    cache = cache_from_settings(settings)
    chosen = engine_from_settings(settings, cache, engine)
    print_engine(err, chosen.info)
    # a page the VLM loops on is read again, then by tesseract (started only if a page needs it)
    fallback = OnFirstUse(lambda: engine_from_settings(settings, cache, "tesseract"))

    from gnosis_ocr.jobs.pipeline import ocr_document

    results: list[DocumentResult] = []
    worst = 0
    try:
        # no chosen.load() here: engines start on their first page, so documents read entirely from their text
        # layer never start OCR workers or load a model
        with count_bars(err) as bars:
            progress = _PageBars(bars)
            for path in files:
                try:
                    # the fallback is only ever asked for by a VLM
                    read = functools.partial(
                        ocr_document,
                        path,
                        chosen,
                        name=path.name,
                        options=options,
                        progress=progress,
                        fallback=fallback,
                    )
                    result = _read_to_pdf(read, targets[path]) if fmt is Format.pdf else read()
                except DocumentError as exc:
                    err.print(f"[bold red]error:[/] {path}: {exc.message}", highlight=False)
                    if exc.hint:
                        err.print(f"[bold]hint:[/] {exc.hint}", highlight=False)
                    worst = exit_code(exc)  # an unreadable document outranks failed pages, whatever the order
                    continue
                for page in result.pages:
                    if not page.ok:
                        err.print(f"[yellow]warning:[/] {path} page {page.number}: {page.error}", highlight=False)
                        worst = worst or EXIT_PARTIAL
                if output is not None and fmt is not Format.pdf:
                    _write(targets[path], _render(result, fmt))
                results.append(result)
    finally:
        chosen.close()
        fallback.close()
    if output is None:
        if fmt is Format.json:
            typer.echo(json.dumps({"documents": [r.to_dict() for r in results]}, indent=1, ensure_ascii=False))
        else:
            several = len(files) > 1
            typer.echo("\n".join((f"# {r.name}\n\n" if several else "") + r.markdown() for r in results), nl=False)
    if worst:
        raise typer.Exit(worst)
