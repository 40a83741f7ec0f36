"""``gnosis-ocr``: the terminal edge. Thin commands over the library; errors become a message and an exit code."""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.console import Console

from gnosis_ocr import __version__
from gnosis_ocr.cli.cache import cache_app
from gnosis_ocr.cli.errors import exit_code
from gnosis_ocr.errors import GnosisError
from gnosis_ocr.modelcache.offline import prepare_environment

app = typer.Typer(
    name="gnosis-ocr",
    help=(
        "Documents to Markdown with a vision-language OCR model, served from a model cache that loads with zero "
        "network calls once it is complete.\n\n"
        "Configuration comes from the environment (MODEL_CACHE_PATH, MODEL_NAME, HF_ENDPOINT, HF_TOKEN, "
        "GNOSIS_CACHE_MODE, ...); see docs/CACHE.md."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(cache_app, name="cache")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gnosis-ocr {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what happens (to stderr)."),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main() -> None:
    # Before anything imports huggingface_hub: telemetry (and its /api/agent-harnesses call) off.
    prepare_environment(os.environ, offline=False)
    err = Console(stderr=True)
    try:
        app()
    except GnosisError as exc:
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        if exc.hint:
            err.print(f"[bold]hint:[/] {exc.hint}", highlight=False)
        sys.exit(exit_code(exc))
    except KeyboardInterrupt:
        err.print("interrupted; nothing half-written is taken for complete (see `gnosis-ocr cache prune`).")
        sys.exit(130)


if __name__ == "__main__":
    main()
