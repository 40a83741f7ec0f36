"""``gnosis-ocr cache ...``: status, warm, verify, repair, prune, push."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from gnosis_ocr.cli.errors import EXIT_FAULT
from gnosis_ocr.cli.progress import ByteProgress
from gnosis_ocr.errors import ConfigError
from gnosis_ocr.modelcache import ModelCache, SnapshotReport, cache_from_settings
from gnosis_ocr.modelcache.prune import execute_prune, plan_prune
from gnosis_ocr.modelcache.push import push_snapshot
from gnosis_ocr.settings import Settings

cache_app = typer.Typer(
    help=(
        "Inspect and fill the model cache (MODEL_CACHE_PATH, default /cache/huggingface). A snapshot is complete "
        "only when its ready-manifest, written last, matches the files on disk."
    ),
    no_args_is_help=True,
)

ModelArg = Annotated[
    str | None, typer.Argument(help="Model repository id, e.g. nanonets/Nanonets-OCR-s. Default: MODEL_NAME.")
]
RevisionOpt = Annotated[
    str | None,
    typer.Option("--revision", "-r", help="Branch, tag or commit sha. Default: GNOSIS_MODEL_REVISION or main."),
]
CacheDirOpt = Annotated[
    Path | None, typer.Option("--cache-dir", help="Cache root; overrides MODEL_CACHE_PATH.", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for machines.")]

out = Console()
err = Console(stderr=True)


def _settings(cache_dir: Path | None) -> Settings:
    overrides: dict[str, Any] = {}
    if cache_dir is not None:
        overrides["model_cache_path"] = cache_dir
    return Settings(**overrides)


def _target(settings: Settings, model: str | None, revision: str | None) -> tuple[str, str]:
    return model or settings.model_name, revision or settings.model_revision


def _report_doc(report: SnapshotReport, settings: Settings) -> dict[str, Any]:
    return {**report.to_dict(), "cache_root": str(settings.cache_root), "policy": settings.cache_mode}


def _print_report(report: SnapshotReport, settings: Settings) -> None:
    colour = {"complete": "green", "incomplete": "yellow", "absent": "red"}[report.state]
    out.print(f"[bold {colour}]{report.state}[/]  {report.repo_id}@{report.revision}", highlight=False)
    rows = [
        ("commit", report.commit or "-"),
        ("path", str(report.snapshot_dir or "-")),
        ("size", _size(report.size_on_disk) + (f" of {_size(report.expected_size)}" if report.expected_size else "")),
        ("files", str(len(report.manifest.files)) if report.manifest else "-"),
        ("check", "names, sizes and sha256" if report.check == "full" else "names and sizes (fast)"),
        ("cache", str(settings.cache_root)),
        ("policy", settings.cache_mode),
    ]
    for key, value in rows:
        out.print(f"  {key:<7} {value}", highlight=False)
    for fault in report.faults:
        out.print(f"  [red]✗[/] {fault.path}: {fault.detail}", highlight=False)
    for leftover in report.leftovers:
        out.print(f"  [yellow]![/] {leftover}: temp file of a writer (not part of the snapshot)", highlight=False)
    if report.stale_lease:
        out.print(f"  [yellow]![/] {report.stale_lease}", highlight=False)
    if report.fix is not None:
        out.print(f"  run `{report.fix}` to {_fix_purpose(report)}", highlight=False)


def _fix_purpose(report: SnapshotReport) -> str:
    if report.state == "absent":
        return "download it"
    kinds = {f.kind for f in report.faults}
    if kinds == {"unexpected"}:
        return "remove the unexpected file(s) (`gnosis-ocr cache prune --yes` does it without the hub)"
    if report.state == "incomplete":
        return "fetch what is missing or wrong" + (" and remove unexpected files" if "unexpected" in kinds else "")
    return "remove temp files of dead writers and stale leases (`gnosis-ocr cache prune` shows the plan first)"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"


def _cache(settings: Settings) -> ModelCache:
    return cache_from_settings(settings)


@cache_app.command()
def status(
    model: ModelArg = None, revision: RevisionOpt = None, cache_dir: CacheDirOpt = None, as_json: JsonOpt = False
) -> None:
    """Is the model complete, incomplete (and what is wrong) or absent? Fast: names and sizes only, no network.

    Exit code 0 when complete, 1 otherwise.
    """
    settings = _settings(cache_dir)
    repo_id, rev = _target(settings, model, revision)
    report = _cache(settings).status(repo_id, rev)
    if as_json:
        out.print_json(data=_report_doc(report, settings))
    else:
        _print_report(report, settings)
    if not report.complete:
        raise typer.Exit(EXIT_FAULT)


@cache_app.command()
def verify(
    model: ModelArg = None,
    revision: RevisionOpt = None,
    cache_dir: CacheDirOpt = None,
    full: Annotated[bool, typer.Option("--full", help="Also hash every file (sha256).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check the snapshot against its ready-manifest, offline. Exit code 1 on any fault.

    By default names and sizes; --full re-hashes every file, which finds flipped or zeroed bytes.
    Temp files of a writer are not part of the snapshot: they are listed, never a fault (prune removes them).
    """
    settings = _settings(cache_dir)
    repo_id, rev = _target(settings, model, revision)
    cache = _cache(settings)
    total = 0
    if full:
        probe = cache.status(repo_id, rev)
        total = probe.expected_size or 0
    with ByteProgress(err, enabled=full and not as_json) as progress:
        progress.start(total, f"sha256 {repo_id}")
        report = cache.status(repo_id, rev, full=full, on_bytes=progress.advance)
    if as_json:
        out.print_json(data=_report_doc(report, settings))
    else:
        _print_report(report, settings)
    if not report.complete:
        raise typer.Exit(EXIT_FAULT)


@cache_app.command()
def warm(
    model: ModelArg = None,
    revision: RevisionOpt = None,
    cache_dir: CacheDirOpt = None,
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh", help="Ask the hub for a newer commit of the branch even when the cached one is complete."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Download what is missing into the persistent cache (through HF_ENDPOINT), crash-safe, manifest last.

    Idempotent: a complete snapshot is left alone without any network call (unless --refresh). When several
    instances warm the same empty cache at once, one downloads and the others wait for it.
    """
    settings = _settings(cache_dir)
    repo_id, rev = _target(settings, model, revision)
    with ByteProgress(err, enabled=not as_json) as progress:
        result = _cache(settings).warm(repo_id, rev, refresh=refresh, progress=progress)
    doc = {
        "model": result.repo_id,
        "revision": result.revision,
        "commit": result.commit,
        "path": str(result.snapshot_dir),
        "downloaded_files": result.downloaded_files,
        "downloaded_bytes": result.downloaded_bytes,
        "reused_files": result.reused_files,
        "waited_for_writer": result.waited_for_writer,
        "seconds": round(result.seconds, 3),
    }
    if as_json:
        out.print_json(data=doc)
    elif result.already_complete:
        out.print(f"{repo_id}@{rev} ({result.commit[:7]}) is already complete; nothing downloaded.", highlight=False)
    else:
        how = (
            "another instance downloaded it"
            if result.waited_for_writer and not result.downloaded_files
            else (
                f"downloaded {result.downloaded_files} file(s), {_size(result.downloaded_bytes)}; "
                f"kept {result.reused_files}"
            )
        )
        out.print(
            f"{repo_id}@{rev} ({result.commit[:7]}) is complete: {how} in {result.seconds:.1f} s.", highlight=False
        )


@cache_app.command()
def repair(model: ModelArg = None, revision: RevisionOpt = None, cache_dir: CacheDirOpt = None) -> None:
    """Re-hash every file and fetch again those that are missing or wrong (needs the hub)."""
    settings = _settings(cache_dir)
    repo_id, rev = _target(settings, model, revision)
    with ByteProgress(err) as progress:
        result = _cache(settings).repair(repo_id, rev, progress=progress)
    out.print(
        f"{repo_id}@{rev} ({result.commit[:7]}) repaired: fetched {result.downloaded_files} file(s), "
        f"{_size(result.downloaded_bytes)}; {result.reused_files} were good.",
        highlight=False,
    )


@cache_app.command()
def prune(
    cache_dir: CacheDirOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete what the plan lists.")] = False,
    grace: Annotated[
        float | None,
        typer.Option(
            help="Temp files untouched for longer than this many seconds, whose writer holds no live lease, are "
            "abandoned; a dead writer's on this host go at once. Default: the lease TTL (GNOSIS_CACHE_LEASE_TTL).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Plan, then (with --yes) delete: temp files of dead writers, stale leases, files a finished snapshot's
    manifest does not list, and snapshots no branch uses.

    The configured model's revision (MODEL_NAME, GNOSIS_MODEL_REVISION) is always kept.
    """
    settings = _settings(cache_dir)
    cache = _cache(settings)
    keep: dict[str, set[str]] = {}
    current = cache.status(settings.model_name, settings.model_revision)
    if current.commit:
        keep[settings.model_name] = {current.commit}
    plan = plan_prune(settings.cache_root, keep=keep, grace=settings.cache_lease_ttl if grace is None else grace)
    if as_json:
        doc = {
            "cache_root": str(plan.root),
            "bytes": plan.bytes,
            "deleted": yes,
            "items": [{"path": str(i.path), "kind": i.kind, "bytes": i.bytes, "reason": i.reason} for i in plan.items],
        }
        if yes:
            execute_prune(plan)
        out.print_json(data=doc)
        return
    if not plan.items:
        out.print(f"Nothing to prune in {plan.root}.", highlight=False)
        return
    table = Table("kind", "size", "path", "why", title=f"Prune plan for {plan.root}")
    for item in plan.items:
        table.add_row(item.kind, _size(item.bytes), str(item.path.relative_to(plan.root)), item.reason)
    out.print(table)
    if yes:
        freed = execute_prune(plan)
        out.print(f"Deleted {len(plan.items)} item(s), freed {_size(freed)}.", highlight=False)
    else:
        out.print(f"Nothing deleted. Run again with --yes to delete these {len(plan.items)} item(s).", highlight=False)


def parse_storage_options(options: list[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {item!r} is not KEY=VALUE.", hint="e.g. --option endpoint_url=http://...")
        try:
            parsed[key] = json.loads(value)
        except ValueError:
            parsed[key] = value
    return parsed


@cache_app.command()
def push(
    model: Annotated[str, typer.Argument(help="Model repository id.")],
    destination: Annotated[
        str,
        typer.Argument(
            help="gs://bucket/prefix or s3://bucket/prefix: the cache root "
            "in the bucket, e.g. gs://my-models/huggingface."
        ),
    ],
    revision: RevisionOpt = None,
    cache_dir: CacheDirOpt = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="fsspec storage option KEY=VALUE (repeatable; VALUE may be JSON)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy a complete snapshot to an object store, manifest last, so CI/CD fills the bucket without a mount.

    Credentials come from the usual places (GOOGLE_APPLICATION_CREDENTIALS, AWS_* variables); emulators through
    STORAGE_EMULATOR_HOST or AWS_ENDPOINT_URL. Every byte is checked against the manifest on its way up.
    """
    settings = _settings(cache_dir)
    _, rev = _target(settings, model, revision)
    cache = _cache(settings)
    report = cache.status(model, rev)
    with ByteProgress(err, enabled=not as_json) as progress:
        result = push_snapshot(
            cache.layout(model),
            report,
            destination,
            storage_options=parse_storage_options(option or []),
            progress=progress,
        )
    if as_json:
        out.print_json(
            data={
                "destination": result.destination,
                "commit": result.commit,
                "uploaded_files": result.uploaded_files,
                "uploaded_bytes": result.uploaded_bytes,
                "kept_files": result.kept_files,
                "seconds": round(result.seconds, 3),
            }
        )
    else:
        out.print(
            f"Pushed {model}@{rev} ({result.commit[:7]}) to {destination}: {result.uploaded_files} file(s) "
            f"uploaded ({_size(result.uploaded_bytes)}), {result.kept_files} already there.",
            highlight=False,
        )
