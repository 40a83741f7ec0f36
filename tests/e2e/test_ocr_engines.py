"""`gnosis-ocr ocr` end to end with each real engine: the tiny VLM from the cache (zero network) and tesseract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from gnosis_ocr.modelcache import ModelCache
from tests.conftest import REPO
from tests.documents import make
from tests.support.hubserver import LocalHub

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _ocr(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [sys.executable, "-m", "gnosis_ocr", "ocr", *args],
        env=full,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_nanonets_engine_reads_a_rendered_pdf_from_the_cache_offline(
    cache: ModelCache, hub: LocalHub, tmp_path: Path
) -> None:
    commit = cache.warm(REPO).commit
    pdf = tmp_path / "letter.pdf"
    pdf.write_bytes(make.text_pdf([["Invoice 2026-17", "Total: 42 EUR"], ["Page two"]]))
    hub.reset_counters()
    run = _ocr(
        [str(pdf), "--engine", "nanonets", "--model", REPO, "-f", "json"],
        MODEL_CACHE_PATH=str(cache.root),
        HF_ENDPOINT=hub.endpoint,
        GNOSIS_CACHE_MODE="offline",
        GNOSIS_VLM_MAX_NEW_TOKENS="8",
        GNOSIS_VLM_LOOP_GUARD="false",  # 8 tokens always stop at max tokens; the guard is tested below
        GNOSIS_DEVICE="cpu",
    )
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)["documents"][0]
    assert doc["engine"]["name"] == "vlm" and doc["engine"]["revision"] == commit
    assert doc["engine"]["backend"] == "transformers" and doc["engine"]["profile"] == "generic-qwen2.5-vl"
    assert doc["engine"]["model"] == REPO and doc["engine"]["vlm"] is True
    assert [p["page"] for p in doc["pages"]] == [1, 2]
    assert all(p["source"] == "ocr" and p["error"] is None for p in doc["pages"])  # the VLM ignores text layers
    assert all(0 < p["meta"]["new_tokens"] <= 8 for p in doc["pages"])
    assert hub.request_count == 0


def test_the_loop_guard_retries_a_cut_page_then_falls_back(cache: ModelCache, hub: LocalHub, tmp_path: Path) -> None:
    """8 tokens of the tiny random model always stop at max tokens: each page is read 3 times (greedy, then two
    hotter retries), then taken from its text layer (the PDF) or read by tesseract (the scan)."""
    cache.warm(REPO)
    pdf = tmp_path / "letter.pdf"
    pdf.write_bytes(make.text_pdf([["Invoice 2026-17 from the text layer of this page"]]))
    scan = tmp_path / "scan.png"
    scan.write_bytes(make.image_bytes(_text_image("Bright lanterns guide ships home."), "PNG"))
    hub.reset_counters()
    run = _ocr(
        [str(pdf), str(scan), "--engine", "vlm", "--model", REPO, "-f", "json"],
        MODEL_CACHE_PATH=str(cache.root),
        HF_ENDPOINT=hub.endpoint,
        GNOSIS_CACHE_MODE="offline",
        GNOSIS_VLM_MAX_NEW_TOKENS="8",
        GNOSIS_DEVICE="cpu",
        GNOSIS_OCR_WORKERS="1",
    )
    assert run.returncode == 0, run.stderr
    letter, photo = (d["pages"][0] for d in json.loads(run.stdout)["documents"])
    assert letter["source"] == "text-layer" and letter["meta"]["fallback"] == "text-layer"
    assert "Invoice 2026-17" in letter["markdown"]
    assert photo["meta"]["fallback"] == "tesseract" and "lanterns" in photo["markdown"]
    for page in (letter, photo):
        assert page["meta"]["attempts"] == 3 and len(page["meta"]["loops"]) == 3
        assert all(reason.startswith("stopped at max tokens") for reason in page["meta"]["loops"])
    assert hub.request_count == 0


def _text_image(line: str) -> Image.Image:
    image = Image.new("RGB", (1400, 400), "white")
    ImageDraw.Draw(image).text((60, 150), line, fill="black", font=ImageFont.load_default(size=56))
    return image


def test_auto_on_a_machine_without_gpu_takes_the_layout_engine_else_tesseract_and_says_why(tmp_path: Path) -> None:
    from gnosis_ocr.engines.layout import find_layout_model

    pdf = tmp_path / "letter.pdf"
    pdf.write_bytes(make.text_pdf([["The quick brown fox jumps over the lazy dog again and again."]]))
    cache = str(tmp_path / "cache")
    find_layout_model()  # the dev install (scripts/dev setup) has the layout model: auto takes the layout engine
    run = _ocr([str(pdf), "--text-layer", "never"], MODEL_CACHE_PATH=cache)
    assert run.returncode == 0, run.stderr
    said = " ".join(run.stderr.split())  # the terminal wraps the line
    assert "engine: layout (no CUDA GPU here, so the layout engine" in said
    assert "quick brown fox" in run.stdout

    absent = tmp_path / "absent.onnx"  # without its model file auto falls back to tesseract, and says why
    run = _ocr([str(pdf), "--text-layer", "never"], MODEL_CACHE_PATH=cache, GNOSIS_LAYOUT_MODEL=str(absent))
    assert run.returncode == 0, run.stderr
    said = " ".join(run.stderr.split())
    assert "engine: tesseract (no CUDA GPU here, so tesseract, as the layout engine is not installed" in said
    assert str(absent) in said
    assert "quick brown fox" in run.stdout


@pytest.mark.gpu
def test_nanonets_on_gpu(cache: ModelCache, hub: LocalHub, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cache.warm(REPO)
    pdf = tmp_path / "a.pdf"
    pdf.write_bytes(make.text_pdf([["one"], ["two"], ["three"]]))
    run = _ocr(
        [str(pdf), "--engine", "nanonets", "--model", REPO, "-f", "json"],
        MODEL_CACHE_PATH=str(cache.root),
        HF_ENDPOINT=hub.endpoint,
        GNOSIS_CACHE_MODE="offline",
        GNOSIS_VLM_MAX_NEW_TOKENS="8",
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["documents"][0]["engine"]["device"].startswith("cuda")
