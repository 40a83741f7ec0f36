"""``gnosis-ocr``: the terminal edge. Thin commands over the library; errors become a message and an exit code."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer
from rich.console import Console

from gnosis_ocr import __version__
from gnosis_ocr.cli.batch import batch
from gnosis_ocr.cli.cache import cache_app
from gnosis_ocr.cli.errors import exit_code
from gnosis_ocr.cli.models import models
from gnosis_ocr.cli.ocr import ocr
from gnosis_ocr.cli.serve import serve
from gnosis_ocr.errors import GnosisError
from gnosis_ocr.modelcache import cache_from_settings
from gnosis_ocr.modelcache.mounts import mount_of, writable
from gnosis_ocr.modelcache.offline import prepare_environment
from gnosis_ocr.settings import Settings

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
app.command()(ocr)
app.command()(batch)
app.command()(serve)
app.command()(models)


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


@app.command()
def info(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False) -> None:
    """Show the effective configuration, where the cache lives (and on what filesystem), and the model's state.

    Works with no network and no GPU; the token is never printed.
    """
    settings = Settings()
    cache = cache_from_settings(settings)
    report = cache.status(settings.model_name, settings.model_revision)
    mount = mount_of(settings.cache_root)
    doc = {
        "version": __version__,
        "model": settings.model_name,
        "revision": settings.model_revision,
        "model_state": report.state,
        "commit": report.commit,
        "cache_root": str(settings.cache_root),
        "cache_filesystem": mount.fstype if mount else None,
        "cache_on_bucket_mount": bool(mount and mount.is_bucket),
        "cache_writable": writable(settings.cache_root),
        "cache_mode": settings.cache_mode,
        "network_guard": "strict" if settings.strict_offline else "count",
        "hf_endpoint": settings.hf_endpoint,
        "hf_token": "set" if settings.hf_token else "unset",
    }
    console = Console()
    if as_json:
        console.print_json(data=doc)
        return
    for key, value in doc.items():
        console.print(f"{key:<22} {value}", highlight=False)
    if report.state != "complete":
        console.print(
            f"\nThe model is {report.state}: `gnosis-ocr cache warm` downloads it (cache mode {settings.cache_mode}).",
            highlight=False,
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
