"""``gnosis-ocr models``: the model profiles, and each model's state in the cache, size, parameters and licence."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from gnosis_ocr.engines.profiles import GENERIC_QWEN25_VL, PROFILES, ModelProfile, profile_for
from gnosis_ocr.modelcache import SnapshotReport, cache_from_settings
from gnosis_ocr.settings import Settings

out = Console()


def models(
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="Cache root; overrides MODEL_CACHE_PATH.", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document for machines.")] = False,
) -> None:
    """List the VLM models with a profile (prompt, page size, max tokens, output parsing) and their cache state.

    The configured model (MODEL_NAME) is marked; one without a profile of its own is read with the generic
    Qwen2.5-VL profile. Names and sizes only, no network: `gnosis-ocr cache warm MODEL` downloads one.
    """
    overrides: dict[str, Any] = {"model_cache_path": cache_dir} if cache_dir is not None else {}
    settings = Settings(**overrides)
    cache = cache_from_settings(settings)
    in_use = profile_for(settings.model_name, settings.vlm_profile)
    rows: list[tuple[str, ModelProfile]] = [(m, p) for p in PROFILES.values() for m in p.models]
    if settings.model_name not in {m for m, _ in rows}:
        rows.insert(0, (settings.model_name, in_use))
    entries = []
    for model_id, profile in rows:
        configured = model_id == settings.model_name
        revision = settings.model_revision if configured else "main"
        report = cache.status(model_id, revision)
        entries.append(_entry(model_id, in_use if configured else profile, report, configured))
    if as_json:
        out.print_json(
            data={
                "cache_root": str(settings.cache_root),
                "model": settings.model_name,
                "profile": in_use.name,
                "models": entries,
                "profiles": [_profile_doc(p) for p in PROFILES.values()],
            }
        )
        return
    table = Table("", "model", "profile", "state", "size", "parameters", "licence", title=f"Models in {cache.root}")
    for entry in entries:
        colour = {"complete": "green", "incomplete": "yellow", "absent": "red"}[entry["state"]]
        table.add_row(
            "*" if entry["configured"] else "",
            entry["model"],
            entry["profile"],
            f"[{colour}]{entry['state']}[/]",
            _size(entry),
            entry["parameters"],
            entry["licence"],
        )
    out.print(table)
    out.print(
        f"* the configured model (MODEL_NAME), read with profile {in_use.name}. Any other Qwen2.5-VL model is read "
        f"with {GENERIC_QWEN25_VL.name}; GNOSIS_VLM_PROFILE picks a profile by name.",
        highlight=False,
    )


def _entry(model_id: str, profile: ModelProfile, report: SnapshotReport, configured: bool) -> dict[str, Any]:
    return {
        "model": model_id,
        "profile": profile.name,
        "configured": configured,
        "revision": report.revision,
        "state": report.state,
        "commit": report.commit,
        "size_bytes": report.size_on_disk,
        "expected_bytes": report.expected_size,
        "approx_bytes": profile.size_bytes or None,
        "parameters": profile.parameters,
        "licence": profile.licence,
    }


def _profile_doc(profile: ModelProfile) -> dict[str, Any]:
    return {
        "name": profile.name,
        "models": list(profile.models),
        "max_tokens": profile.max_tokens,
        "max_pixels": profile.max_pixels,
        "max_side": profile.max_side,
        "prompt_first": not profile.image_first,
        "licence": profile.licence,
        "parameters": profile.parameters,
        "approx_bytes": profile.size_bytes or None,
        "source": profile.source,
    }


def _size(entry: dict[str, Any]) -> str:
    """Bytes on disk when cached, else the profile's approximate size."""
    if entry["state"] == "complete":
        return _gb(entry["size_bytes"])
    if entry["state"] == "incomplete" and entry["expected_bytes"]:
        return f"{_gb(entry['size_bytes'])} of {_gb(entry['expected_bytes'])}"
    return f"~{_gb(entry['approx_bytes'])}" if entry["approx_bytes"] else "-"


def _gb(n: int) -> str:
    if n >= 10**9:
        return f"{n / 10**9:.1f} GB"
    if n >= 10**6:
        return f"{n / 10**6:.1f} MB"
    return f"{n / 10**3:.1f} kB"
