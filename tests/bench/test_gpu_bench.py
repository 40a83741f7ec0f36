"""The GPU benchmark's CPU smoke run, and the real-shape checkpoint's config and tokenizer (checked without building
the 7.5 GB weights: the model is made on the meta device)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench.realshape import (
    FIRST_ADDED_ID,
    NANONETS_OCR_S_CONFIG,
    QWEN_ADDED_TOKENS,
    REAL_PARAMETERS,
    REPO_IDS,
    ensure_checkpoint,
    save_real_tokenizer,
)

from gnosis_ocr.modelcache import ModelCache

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ["--device", "cpu", "--shape", "tiny", "--pages", "4", "--tokens", "16"]


@pytest.mark.slow
def test_cpu_smoke_prints_every_row(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_bench", *SMOKE, "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    pages_s = {r["name"]: r for r in doc["rows"] if r["section"] == "pages/s"}
    for name in ("transformers, one page at a time", "transformers, batch 4", "transformers, batch 16"):
        assert pages_s[name]["median"] > 0, name
        assert name in proc.stdout
    tokens_s = {r["name"]: r["median"] for r in doc["rows"] if r["section"] == "output tokens/s"}
    assert tokens_s["transformers, batch 4"] == pytest.approx(16 * pages_s["transformers, batch 4"]["median"])
    assert pages_s["transformers, batch 4"]["ratio"] == pytest.approx(1.0)
    for k in (16, 64, 256):
        row = pages_s[f"vLLM, {k} pages in flight"]
        assert (row["median"] or 0) > 0 or "vllm not installed" in row["note"], row
        assert f"vLLM, {k} pages in flight" in proc.stdout
    assert doc["facts"]["hub connection attempts"] == 0


def test_real_shape_config_has_the_real_parameter_count(tmp_path: Path) -> None:
    import torch
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    (tmp_path / "config.json").write_text(json.dumps(NANONETS_OCR_S_CONFIG))
    config = AutoConfig.from_pretrained(tmp_path)
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (2048, 36)
    assert (config.text_config.num_attention_heads, config.text_config.num_key_value_heads) == (16, 2)
    assert config.text_config.rope_parameters["mrope_section"] == [16, 24, 24]
    assert (config.vision_config.depth, config.vision_config.hidden_size, config.vision_config.out_hidden_size) == (
        32,
        1280,
        2048,
    )
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight  # tied: not saved twice
    assert sum(p.numel() for p in model.parameters()) == REAL_PARAMETERS  # 7.51 GB in bf16


def test_real_shape_tokenizer_matches_the_config(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    save_real_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) == FIRST_ADDED_ID + len(QWEN_ADDED_TOKENS) == 151665
    assert len(tokenizer) <= NANONETS_OCR_S_CONFIG["vocab_size"]
    cfg = NANONETS_OCR_S_CONFIG
    for token, key in (
        ("<|image_pad|>", "image_token_id"),
        ("<|video_pad|>", "video_token_id"),
        ("<|vision_start|>", "vision_start_token_id"),
        ("<|vision_end|>", "vision_end_token_id"),
        ("<|im_end|>", "eos_token_id"),
        ("<|endoftext|>", "bos_token_id"),
    ):
        assert tokenizer.convert_tokens_to_ids(token) == cfg[key], token
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    ids = tokenizer("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Read the page.<|im_end|>")[
        "input_ids"
    ]
    assert max(ids) < cfg["vocab_size"] and cfg["image_token_id"] in ids


def test_checkpoint_is_complete_in_the_cache_and_reused(tmp_path: Path) -> None:
    root = tmp_path / "huggingface"
    first = ensure_checkpoint(root, "tiny")
    cache = ModelCache(root, endpoint="http://127.0.0.1:9")
    report = cache.status(REPO_IDS["tiny"], full=True)
    assert report.complete and report.commit == first.commit
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json", "preprocessor_config.json"} <= {
        f.path for f in report.manifest.files
    }
    again = ensure_checkpoint(root, "tiny")
    assert again.reused and not first.reused and again.snapshot == first.snapshot
