"""A tiny, random, deterministic Qwen2.5-VL checkpoint for tests.

`build_tiny_model(dest)` writes a folder laid out like a real Qwen2.5-VL repository on the Hub:

    config.json                       Qwen2_5_VLConfig: 2 text layers (hidden 64, 2 heads of 32, 1 KV head),
                                      2 vision blocks (hidden 32)
    generation_config.json            greedy decoding, eos = <|im_end|>, <|endoftext|>
    model-0000k-of-0000n.safetensors  float32 weights, `shards` files (one `model.safetensors` when shards=1)
    model.safetensors.index.json      only when shards > 1
    tokenizer.json                    byte-level BPE trained here with `tokenizers`, Qwen2.5-VL special tokens
    tokenizer_config.json             loads as `Qwen2Tokenizer`
    chat_template.jinja               Qwen-style chat template with image placeholders
    preprocessor_config.json          `Qwen2VLImageProcessor` (PIL backend when torchvision is absent)

Everything is a pure function of `seed` and `shards`: two builds give byte-identical files. No PyPI package ships a
Qwen vocabulary, so the tokenizer is trained on generated text; its special tokens sit right after the learned
vocabulary, in Qwen's order, and `config.json` carries the matching ids.

transformers 5.x's `AutoProcessor` for Qwen2.5-VL needs torchvision, which these machines do not have, so callers
load `AutoTokenizer` and `AutoImageProcessor` separately and expand `<|image_pad|>` themselves:
`build_generation_inputs` is that expansion, written once so the engine can be compared against it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MODEL_TYPE = "qwen2_5_vl"
ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"

# Bump when the layout or contents change, so `tiny_model_dir` never reuses an older build.
BUILD_VERSION = 2  # 2: text head_dim 32 (vLLM's CPU attention takes 32, 64, 80, ... only)

# Qwen2.5-VL's special tokens, in Qwen's order (ids are consecutive right after the learned vocabulary).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
IMAGE_PAD = "<|image_pad|>"
BPE_VOCAB_SIZE = 1024  # learned tokens (256 byte symbols included); special tokens come after

# Image processor: patches of 14 px, 2x2 patches merged into one LLM token, at most 16 image tokens per image.
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 16

CHAT_TEMPLATE = (
    "{%- for message in messages %}\n"
    "{%- if loop.first and message['role'] != 'system' %}\n"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}\n"
    "{%- if message['content'] is string %}\n"
    "{{- message['content'] }}\n"
    "{%- else %}\n"
    "{%- for part in message['content'] %}\n"
    "{%- if part['type'] == 'image' or 'image' in part %}\n"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}\n"
    "{%- elif part['type'] == 'video' or 'video' in part %}\n"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}\n"
    "{%- elif part['type'] == 'text' %}\n"
    "{{- part['text'] }}\n"
    "{%- endif %}\n"
    "{%- endfor %}\n"
    "{%- endif %}\n"
    "{{- '<|im_end|>\\n' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "{{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

# Qwen2's pre-tokenizer split (the GPT-4 style regex with single digits), then byte-level mapping.
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)

_WORDS_TEXT = (
    "the of and to in is that for it as with was on be by this are from at or an have not which document page "
    "invoice total amount date name address table column row line text figure scan image paragraph section "
    "number report receipt account balance payment customer order item price quantity tax subtotal signature "
    "chapter title author summary result value model cache server request file download token"
)


def special_token_ids() -> dict[str, int]:
    """Token id of each Qwen2.5-VL special token in the tiny vocabulary."""
    return {token: BPE_VOCAB_SIZE + i for i, token in enumerate(SPECIAL_TOKENS)}


def _vocab_size_for_model() -> int:
    # The embedding matrix is padded to a multiple of 64, as real checkpoints do (151936 vs 151665 tokens).
    n = BPE_VOCAB_SIZE + len(SPECIAL_TOKENS)
    return (n + 63) // 64 * 64


def _corpus(seed: int) -> list[str]:
    """Generated English-like lines: common words, made-up words, numbers and punctuation."""
    rng = random.Random(seed)  # noqa: S311 (test data, not cryptography)
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "st", "tr", "ch", "sh"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
    codas = ["", "", "n", "r", "s", "t", "l", "nd", "ng", "ck"]
    made_up = [
        "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.randint(1, 3)))
        for _ in range(600)
    ]
    punct = [".", ",", ":", ";", "!", "?", "%", "$", "#", "(", ")", "-", "/"]
    common = _WORDS_TEXT.split()
    lines = []
    for _ in range(3000):
        line = []
        for _ in range(rng.randint(4, 14)):
            roll = rng.random()
            if roll < 0.55:
                word = rng.choice(common)
            elif roll < 0.85:
                word = rng.choice(made_up)
            elif roll < 0.95:
                word = str(rng.randint(0, 10 ** rng.randint(1, 6)))
            else:
                word = rng.choice(punct)
            if rng.random() < 0.15:
                word = word.capitalize()
            line.append(word)
        lines.append(" ".join(line) + rng.choice([".", "", "\n", ":"]))
    return lines


def _train_bpe(seed: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE

    tokenizer = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix=""))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(_corpus(seed), trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    if len(vocab) != BPE_VOCAB_SIZE:
        raise RuntimeError(f"tiny tokenizer: trained {len(vocab)} tokens, expected {BPE_VOCAB_SIZE}")
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]
    return vocab, merges  # type: ignore[return-value]


def _save_tokenizer(dest: Path, seed: int) -> None:
    from transformers import Qwen2Tokenizer

    vocab, merges = _train_bpe(seed)
    vocab = {**vocab, **special_token_ids()}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",  # noqa: S106 (a vocabulary token, not a secret)
        pad_token="<|endoftext|>",  # noqa: S106
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")],
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
        errors="replace",
        split_special_tokens=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(dest)
    for token, token_id in special_token_ids().items():
        if tokenizer.convert_tokens_to_ids(token) != token_id:
            raise RuntimeError(f"tiny tokenizer: {token} has id {tokenizer.convert_tokens_to_ids(token)}")


def _model_config() -> Any:
    from transformers import Qwen2_5_VLConfig

    ids = special_token_ids()
    text_hidden = 64
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": _vocab_size_for_model(),
            "hidden_size": text_hidden,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,  # head_dim 32 (vLLM's CPU kernels need >= 32); mrope sections sum to 16
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 1000000.0},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": text_hidden,
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": MERGE_SIZE,
            "temporal_patch_size": TEMPORAL_PATCH_SIZE,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        dtype="float32",
    )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars while saving; restore the caller's setting afterwards."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _state_dict_as_saved(model: Any) -> dict[str, Any]:
    """The state dict in the order `save_pretrained` shards it (after reverting transformers' key renames)."""
    state_dict = model.state_dict()
    try:
        from transformers.core_model_loading import revert_weight_conversion

        return dict(revert_weight_conversion(model, state_dict))
    except (ImportError, TypeError):  # internal helper; the shard count is checked after saving anyway
        return dict(state_dict)


def _save_weights(model: Any, dest: Path, shards: int) -> None:
    """`save_pretrained` with a `max_shard_size` that yields exactly `shards` files."""
    from huggingface_hub import split_torch_state_dict_into_shards

    state_dict = _state_dict_as_saved(model)
    total = sum(t.numel() * t.element_size() for t in state_dict.values())
    if shards == 1:
        model.save_pretrained(dest, max_shard_size=2 * total + 1)
        return
    # The split is greedy over tensors in order, so search the smallest limit that still gives `shards` files.
    lo, hi = 1, total + 1
    best: int | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        n = len(split_torch_state_dict_into_shards(state_dict, max_shard_size=mid).filename_to_tensors)
        if n > shards:
            lo = mid + 1
        else:
            if n == shards:
                best = mid
            hi = mid - 1
    if best is None:
        raise ValueError(f"cannot split the tiny model into {shards} shards")
    model.save_pretrained(dest, max_shard_size=best)
    written = sorted(p.name for p in dest.glob("model*.safetensors"))
    if len(written) != shards:
        raise RuntimeError(f"tiny model: asked for {shards} shards, save_pretrained wrote {written}")


def _image_processor_config() -> dict[str, Any]:
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
        "do_resize": True,
        "resample": 3,
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "merge_size": MERGE_SIZE,
    }


def build_tiny_model(dest: Path, *, seed: int = 0, shards: int = 2) -> Path:
    """Write a tiny random Qwen2.5-VL checkpoint (weights, tokenizer, image processor) into `dest`.

    `dest` is created if needed and must not already hold a checkpoint. Returns `dest`.
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = _model_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.eval()
    ids = special_token_ids()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    with _quiet_transformers():
        _save_weights(model, dest, shards)
        _save_tokenizer(dest, seed)
    (dest / "preprocessor_config.json").write_text(
        json.dumps(_image_processor_config(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return dest


def tiny_model_dir(cache_root: Path, *, seed: int = 0, shards: int = 2) -> Path:
    """Build the tiny model once under `cache_root` and return its folder; later calls reuse it.

    Safe across processes (pytest-xdist workers): builds under a lock into a private folder, renames it into place,
    then writes a marker next to it. The model folder itself holds only checkpoint files (it is served as a repo).
    """
    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    name = f"tiny-qwen2_5_vl-v{BUILD_VERSION}-seed{seed}-shards{shards}"
    final = cache_root / name
    marker = cache_root / f"{name}.complete"
    if marker.is_file() and final.is_dir():
        return final
    with (cache_root / f"{name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if marker.is_file() and final.is_dir():
                return final
            if final.exists():  # a build that died between rename and marker
                shutil.rmtree(final)
            tmp = cache_root / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                build_tiny_model(tmp, seed=seed, shards=shards)
                tmp.rename(final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            marker.write_text("ok\n", encoding="utf-8")
            return final
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def image_pad_count(image_grid_thw: Any, merge_size: int = MERGE_SIZE) -> list[int]:
    """Number of `<|image_pad|>` tokens each image takes: grid_t * grid_h * grid_w / merge_size**2."""
    return [int(t) * int(h) * int(w) // (merge_size**2) for t, h, w in image_grid_thw.tolist()]


def build_generation_inputs(tokenizer: Any, image_processor: Any, image: Any, prompt: str) -> dict[str, Any]:
    """Model inputs for one image plus one text prompt, as `Qwen2_5_VLProcessor` would build them.

    Applies the chat template (user turn: the image, then `prompt`; generation prompt added), runs the image
    processor, and repeats the `<|image_pad|>` placeholder once per merged patch. Returns `input_ids`,
    `attention_mask`, `pixel_values` and `image_grid_thw` as torch tensors, ready for `model.generate(**inputs)`.
    """
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if text.count(IMAGE_PAD) != 1:
        raise ValueError(f"chat template produced {text.count(IMAGE_PAD)} image placeholders, expected 1")
    vision = image_processor(images=[image], return_tensors="pt")
    merge_size = getattr(image_processor, "merge_size", MERGE_SIZE)
    (n_pads,) = image_pad_count(vision["image_grid_thw"], merge_size)
    text = text.replace(IMAGE_PAD, IMAGE_PAD * n_pads)
    encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    return {
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "pixel_values": vision["pixel_values"],
        "image_grid_thw": vision["image_grid_thw"],
    }
