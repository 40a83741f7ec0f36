"""``gnosis-ocr models`` through Typer's runner, against a real cache: absent, and one model warmed from a hub."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gnosis_ocr.cli.main import app
from gnosis_ocr.engines.profiles import PROFILES
from gnosis_ocr.modelcache import ModelCache
from tests.conftest import REPO, model_size
from tests.support.hubserver import LocalHub

OCR2 = "nanonets/Nanonets-OCR2-3B"
SHIPPED = [m for p in PROFILES.values() for m in p.models]


def _run(cache_root: Path, *args: str, **env: str) -> Any:
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["models", *args],
        env={"MODEL_CACHE_PATH": str(cache_root), "HF_ENDPOINT": "http://127.0.0.1:9", "COLUMNS": "220", **env},
    )
    assert result.exit_code == 0, result.output
    return result


def _doc(cache_root: Path, **env: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_run(cache_root, "--json", **env).output)
    return doc


@pytest.fixture
def ocr2_hub(tiny_model: Path) -> Iterator[LocalHub]:
    """The tiny model published under a shipped profile's repository id."""
    server = LocalHub()
    server.add_repo(OCR2, tiny_model)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_an_empty_cache_lists_every_profiled_model_as_absent(tmp_path: Path) -> None:
    doc = _doc(tmp_path / "empty")
    assert [e["model"] for e in doc["models"]] == SHIPPED
    assert {e["state"] for e in doc["models"]} == {"absent"}
    default = next(e for e in doc["models"] if e["configured"])
    assert (default["model"], default["profile"], doc["profile"]) == (
        "nanonets/Nanonets-OCR-s",
        "nanonets-ocr-s",
        "nanonets-ocr-s",
    )
    olmocr = next(e for e in doc["models"] if e["model"] == "allenai/olmOCR-2-7B-1025")
    assert olmocr["licence"].startswith("apache-2.0") and olmocr["parameters"] == "8.3B" and olmocr["approx_bytes"]
    assert {p["name"] for p in doc["profiles"]} == set(PROFILES)
    assert next(p for p in doc["profiles"] if p["name"] == "olmocr-2")["prompt_first"] is True

    human = _run(tmp_path / "empty").output
    assert "allenai/olmOCR-2-7B-1025-FP8" in human and "absent" in human and "~7.5 GB" in human
    assert "generic-qwen2.5-vl" in human


def test_a_warmed_model_shows_complete_with_its_size_on_disk(
    tmp_path: Path, ocr2_hub: LocalHub, tiny_model: Path
) -> None:
    cache_root = tmp_path / "cache"
    ModelCache(cache_root, endpoint=ocr2_hub.endpoint).warm(OCR2)
    ocr2_hub.reset_counters()
    doc = _doc(cache_root, MODEL_NAME=OCR2)
    states = {e["model"]: e["state"] for e in doc["models"]}
    assert states.pop(OCR2) == "complete" and set(states.values()) == {"absent"}
    entry = next(e for e in doc["models"] if e["model"] == OCR2)
    assert entry["configured"] and entry["profile"] == "nanonets-ocr2-3b" and entry["commit"]
    assert entry["size_bytes"] == entry["expected_bytes"] == model_size(tiny_model)
    assert ocr2_hub.request_count == 0  # the listing reads the cache only

    human = _run(cache_root, MODEL_NAME=OCR2).output
    assert "complete" in human and "nanonets-ocr2-3b" in human


def test_a_configured_model_without_a_profile_is_listed_with_the_generic_one(tmp_path: Path) -> None:
    doc = _doc(tmp_path, MODEL_NAME=REPO)
    first = doc["models"][0]
    assert (first["model"], first["profile"], first["configured"]) == (REPO, "generic-qwen2.5-vl", True)
    named = _doc(tmp_path, MODEL_NAME=REPO, GNOSIS_VLM_PROFILE="olmocr-2")
    assert named["models"][0]["profile"] == "olmocr-2" and named["profile"] == "olmocr-2"
