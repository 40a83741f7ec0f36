"""load_pretrained: one host copy, the checkpoint's dtype, the same model as from_pretrained (tied weights, rotary
buffers, generate), a checkpoint that does not fit its config refused, and both GNOSIS_VERIFY_ON_LOAD settings."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from bench.realshape import lay_into_cache
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

from gnosis_ocr.errors import CacheCorruptError
from gnosis_ocr.modelcache import ModelCache, ResolvedModel, read_options_from_settings
from gnosis_ocr.modelcache.loader import ReadOptions, copied_bytes, load_pretrained, load_processor_parts
from gnosis_ocr.modelcache.loader import read_state_dict as read_weights
from gnosis_ocr.settings import Settings
from tests.support.tinymodel import build_generation_inputs, build_tiny_model

REPO = "gnosis-test/tiny-variant"
Shards = dict[str, dict[str, torch.Tensor]]


def _cache_with(tmp_path: Path, change: Callable[[dict[str, Any], Shards], None] | None = None) -> ResolvedModel:
    """The tiny model, changed by ``change(config, shards)``, laid into a cache and resolved offline."""
    folder = tmp_path / "build"
    build_tiny_model(folder, shards=2)
    if change is not None:
        config = json.loads((folder / "config.json").read_text())
        shards = {p.name: load_file(p) for p in sorted(folder.glob("*.safetensors"))}
        change(config, shards)
        (folder / "config.json").write_text(json.dumps(config))
        weight_map = {}
        for name, tensors in shards.items():
            save_file(tensors, folder / name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, name))
        index = folder / "model.safetensors.index.json"
        doc = json.loads(index.read_text())
        doc["weight_map"] = weight_map
        index.write_text(json.dumps(doc))
    commit = hashlib.sha1(str(tmp_path).encode(), usedforsecurity=False).hexdigest()
    root = tmp_path / "hf"
    lay_into_cache(folder, root, REPO, commit)
    return ModelCache(root, endpoint="http://127.0.0.1:9").resolve(REPO, mode="offline")


def _bf16(config: dict[str, Any], shards: Shards) -> None:
    config["dtype"] = "bfloat16"
    for tensors in shards.values():
        for key, tensor in tensors.items():
            tensors[key] = tensor.to(torch.bfloat16)


def _tied(config: dict[str, Any], shards: Shards) -> None:
    config["tie_word_embeddings"] = True
    config.get("text_config", {})["tie_word_embeddings"] = True
    for tensors in shards.values():
        tensors.pop("lm_head.weight", None)


def _page() -> Image.Image:
    image = Image.new("RGB", (112, 84), "white")
    ImageDraw.Draw(image).text((8, 30), "Hello", fill="black")
    return image


def _generate(model: Any, resolved: ResolvedModel) -> list[int]:
    tokenizer, image_processor = load_processor_parts(resolved)
    inputs = build_generation_inputs(tokenizer, image_processor, _page(), "Extract the text.")
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    return [int(t) for t in out[0, inputs["input_ids"].shape[1] :]]


def _assert_same_model(ours: Any, theirs: Any) -> None:
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert ours_sd.keys() == theirs_sd.keys()
    for name, tensor in theirs_sd.items():
        assert ours_sd[name].dtype == tensor.dtype, name
        assert torch.equal(ours_sd[name], tensor), name
    ours_buffers, theirs_buffers = dict(ours.named_buffers()), dict(theirs.named_buffers())
    assert ours_buffers.keys() == theirs_buffers.keys()
    assert any("inv_freq" in name for name in ours_buffers)  # the rotary buffers, not saved in the checkpoint
    for name, buffer in theirs_buffers.items():
        assert ours_buffers[name].device.type == "cpu", name
        assert torch.equal(ours_buffers[name], buffer), name


@pytest.mark.parametrize("change", [None, _tied, _bf16], ids=["float32", "tied-embeddings", "bfloat16"])
def test_same_model_and_tokens_as_from_pretrained(tmp_path: Path, change: Callable[..., None] | None) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration as Model

    resolved = _cache_with(tmp_path, change)
    ours = load_pretrained(resolved, Model)
    theirs = Model.from_pretrained(resolved.path)
    _assert_same_model(ours, theirs)
    if change is _tied:
        assert ours.lm_head.weight is ours.model.language_model.embed_tokens.weight
    assert _generate(ours, resolved) == _generate(theirs, resolved)


def test_one_host_copy_in_the_checkpoint_dtype(tmp_path: Path) -> None:
    """Every parameter is a view of a shard's read buffer (its storage is the whole shard), in bf16."""
    from transformers import Qwen2_5_VLForConditionalGeneration as Model

    resolved = _cache_with(tmp_path, _bf16)
    shard_sizes = {p.stat().st_size for p, _ in resolved.weight_files()}
    model = load_pretrained(resolved, Model)
    assert model.dtype == torch.bfloat16
    params = list(model.parameters())
    assert params and all(p.untyped_storage().nbytes() in shard_sizes for p in params)


def test_another_dtype_is_a_copy(tmp_path: Path) -> None:
    """Asked for float32, the bf16 checkpoint is converted: new storage, not the read buffers (copied_bytes
    counts it)."""
    from transformers import AutoConfig
    from transformers import Qwen2_5_VLForConditionalGeneration as Model

    resolved = _cache_with(tmp_path, _bf16)
    shard_sizes = {p.stat().st_size for p, _ in resolved.weight_files()}
    converted = load_pretrained(resolved, Model, dtype=torch.float32)
    assert converted.dtype == torch.float32
    assert not any(p.untyped_storage().nbytes() in shard_sizes for p in converted.parameters())
    config = AutoConfig.from_pretrained(resolved.path)
    state, _ = read_weights(resolved, ReadOptions())
    same = Model.from_pretrained(None, config=config, state_dict=state, dtype=torch.bfloat16)
    assert copied_bytes(same, state) == 0
    state, _ = read_weights(resolved, ReadOptions())
    other = Model.from_pretrained(None, config=config, state_dict=state, dtype=torch.float32)
    assert copied_bytes(other, state) == sum(p.nbytes for p in other.parameters()) > 0


def test_a_checkpoint_missing_a_tensor_is_refused(tmp_path: Path) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration as Model

    def drop_one(_config: dict[str, Any], shards: Shards) -> None:
        for tensors in shards.values():
            for key in [k for k in tensors if k.endswith("layers.1.mlp.down_proj.weight")]:
                del tensors[key]

    resolved = _cache_with(tmp_path, drop_one)
    with pytest.raises(CacheCorruptError, match=r"1 tensor\(s\) missing .*layers\.1\.mlp\.down_proj\.weight"):
        load_pretrained(resolved, Model)


# -- GNOSIS_VERIFY_ON_LOAD --------------------------------------------------------------------------------------


def _largest_shard(resolved: ResolvedModel) -> Path:
    return max((p for p, _ in resolved.weight_files()), key=lambda p: p.stat().st_size)


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "zeroed":
        data = bytearray(len(data))
    elif how == "truncated":
        data = data[: len(data) - 4096]
    else:  # one byte of tensor data flipped: the header still parses
        data[-5] ^= 0xFF
    path.write_bytes(data)


@pytest.mark.parametrize("how", ["zeroed", "truncated", "flipped"])
def test_full_never_loads_a_damaged_shard(tmp_path: Path, how: str) -> None:
    resolved = _cache_with(tmp_path)  # resolved first: the damage comes after the start-up check
    _damage(_largest_shard(resolved), how)
    match = "truncated" if how == "truncated" else "does not match its sha256"
    with pytest.raises(CacheCorruptError, match=match):
        read_weights(resolved, read_options_from_settings(Settings(verify_on_load="full")))


def test_sizes_still_refuses_a_truncated_or_zeroed_shard(tmp_path: Path) -> None:
    resolved = _cache_with(tmp_path)
    options = read_options_from_settings(Settings(verify_on_load="sizes"))
    assert options.verify is False
    shard = _largest_shard(resolved)
    original = shard.read_bytes()
    _damage(shard, "truncated")
    with pytest.raises(CacheCorruptError, match=r"is [\d,]+ bytes but the ready-manifest says [\d,]+: .*truncated"):
        read_weights(resolved, options)
    shard.write_bytes(original)
    _damage(shard, "zeroed")  # same size: the safetensors header check refuses it
    with pytest.raises(CacheCorruptError, match="not a safetensors file"):
        read_weights(resolved, options)


def test_sizes_does_not_hash(tmp_path: Path) -> None:
    """The trade-off docs/CACHE.md states: under ``sizes`` a same-size change inside tensor data loads."""
    resolved = _cache_with(tmp_path)
    _damage(_largest_shard(resolved), "flipped")
    state, _ = read_weights(resolved, ReadOptions(verify=False))
    assert state


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "full"),
        ({"GNOSIS_VERIFY_ON_LOAD": "sizes"}, "sizes"),
        ({"GNOSIS_VERIFY_ON_LOAD": "full"}, "full"),
        ({"GNOSIS_CACHE_VERIFY_ON_LOAD": "false"}, "sizes"),
        ({"GNOSIS_CACHE_VERIFY_ON_LOAD": "true"}, "full"),
    ],
)
def test_verify_on_load_setting(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str) -> None:
    monkeypatch.delenv("GNOSIS_VERIFY_ON_LOAD", raising=False)
    monkeypatch.delenv("GNOSIS_CACHE_VERIFY_ON_LOAD", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.verify_on_load == expected
    assert read_options_from_settings(settings).verify is (expected == "full")


def test_verify_on_load_rejects_other_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("GNOSIS_VERIFY_ON_LOAD", "maybe")
    with pytest.raises(ValidationError, match=r"full.*sizes"):
        Settings()


@pytest.mark.parametrize(("dtype", "expected"), [("auto", torch.bfloat16), ("float32", torch.float32)])
def test_engine_loads_the_checkpoint_dtype_on_cpu(tmp_path: Path, dtype: str, expected: torch.dtype) -> None:
    """GNOSIS_VLM_DTYPE=auto on CPU is the checkpoint's dtype (bf16 here, half of float32); a setting overrides."""
    from gnosis_ocr.documents.model import Page
    from gnosis_ocr.engines.nanonets import NanonetsEngine

    resolved = _cache_with(tmp_path, _bf16)
    cache = ModelCache(tmp_path / "hf", endpoint="http://127.0.0.1:9")
    engine = NanonetsEngine(cache, REPO, mode="offline", device="cpu", dtype=dtype, max_new_tokens=4)  # type: ignore[arg-type]
    engine.load()
    try:
        assert engine._model.dtype == expected
        (text,) = engine.recognize([Page(number=1, image=_page())])
        assert text.error is None
    finally:
        engine.close()
    assert resolved.commit
