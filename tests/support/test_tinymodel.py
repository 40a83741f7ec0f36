"""The tiny Qwen2.5-VL checkpoint: deterministic, complete, and it really generates from an image."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.support.tinymodel import (
    SPECIAL_TOKENS,
    build_generation_inputs,
    build_tiny_model,
    image_pad_count,
    special_token_ids,
    tiny_model_dir,
)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.getbasetemp() / "tinymodel")


def test_same_seed_gives_byte_identical_files(tiny: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again")
    assert _digests(again) == _digests(tiny)


def test_other_seed_gives_other_weights(tiny: Path, tmp_path: Path) -> None:
    other = _digests(build_tiny_model(tmp_path / "other", seed=1))
    ours = _digests(tiny)
    assert other["config.json"] == ours["config.json"]
    assert other["model-00001-of-00002.safetensors"] != ours["model-00001-of-00002.safetensors"]


def test_layout_matches_a_sharded_hub_checkpoint(tiny: Path) -> None:
    names = sorted(p.name for p in tiny.iterdir())
    assert names == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    index = json.loads((tiny / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    }
    total = sum(p.stat().st_size for p in tiny.iterdir())
    assert 500_000 < total < 10_000_000


@pytest.mark.parametrize(("shards", "expected"), [(1, ["model.safetensors"]), (3, None)])
def test_shard_count(tmp_path: Path, shards: int, expected: list[str] | None) -> None:
    folder = build_tiny_model(tmp_path / "m", shards=shards)
    weights = sorted(p.name for p in folder.glob("model*.safetensors"))
    if expected is None:
        expected = [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    assert weights == expected
    assert (folder / "model.safetensors.index.json").exists() == (shards > 1)


def test_tiny_model_dir_builds_once(tiny: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in tiny.iterdir()}
    assert tiny_model_dir(tiny.parent) == tiny
    assert {p.name: p.stat().st_mtime_ns for p in tiny.iterdir()} == before
    assert not [p for p in tiny.parent.iterdir() if p.name.endswith(".tmp")]


def test_loads_and_generates_from_an_image(tiny: Path) -> None:
    import torch
    from PIL import Image
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoTokenizer,
        Qwen2_5_VLForConditionalGeneration,
    )

    config = AutoConfig.from_pretrained(tiny)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    image_processor = AutoImageProcessor.from_pretrained(tiny)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny).eval()

    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    assert type(image_processor).__name__.startswith("Qwen2VLImageProcessor")
    n_params = sum(p.numel() for p in model.parameters())
    assert 200_000 <= n_params <= 2_000_000

    ids = special_token_ids()
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [ids[t] for t in SPECIAL_TOKENS]
    assert config.image_token_id == ids["<|image_pad|>"]
    assert config.video_token_id == ids["<|video_pad|>"]
    assert config.vision_start_token_id == ids["<|vision_start|>"]
    assert config.vision_end_token_id == ids["<|vision_end|>"]
    assert tokenizer.eos_token_id == ids["<|im_end|>"] == config.text_config.eos_token_id
    assert tokenizer.pad_token_id == ids["<|endoftext|>"] == model.generation_config.pad_token_id
    assert len(tokenizer) <= config.text_config.vocab_size
    text = "Invoice total: 1234.50 EUR"
    assert tokenizer.decode(tokenizer.encode(text)) == text

    image = Image.new("RGB", (120, 80), (250, 250, 240))
    inputs = build_generation_inputs(tokenizer, image_processor, image, "Read the text on this page.")
    (n_pads,) = image_pad_count(inputs["image_grid_thw"])
    assert n_pads == inputs["pixel_values"].shape[0] // 4
    assert int((inputs["input_ids"] == config.image_token_id).sum()) == n_pads
    assert inputs["input_ids"].shape == inputs["attention_mask"].shape

    with torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        second = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    assert 1 <= first.shape[1] - prompt_len <= 5
    assert torch.equal(first, second)
    assert torch.equal(first[:, :prompt_len], inputs["input_ids"])
