"""A randomly initialised checkpoint with the exact shape of Nanonets-OCR-s, laid into a model cache.

    python -m bench.realshape --cache-dir DIR [--shape real|tiny] [--device cuda] [--remove]

Compute and memory cost depend on the config, not on the weights, so a random model with the real config measures
load time, memory and tokens/s honestly (generate a fixed token count: random weights stop at random). The real
weights cannot be fetched here, and 7.5 GB cannot travel to the GPU machine: the checkpoint is built where it runs.

``--shape real``: ``NANONETS_OCR_S_CONFIG`` below, the ``config.json`` of Qwen2.5-VL-3B-Instruct (the base that
Nanonets' model card names; a fine-tune keeps every shape), sources and checks in its comment. 3,754,622,976
parameters, 7,509,245,952 bytes in bf16 (the lm_head is tied to the embeddings and not saved), written as
``model-00001-of-00002.safetensors`` (4.98 GB) and ``model-00002-of-00002.safetensors`` (2.53 GB) plus
``model.safetensors.index.json``: ``save_pretrained`` with transformers 4.x's 5 GB shard limit. The hub's
Nanonets-OCR-s has two shards as well; their exact split is not known here. Built without transformers'
initialisation (``no_init_weights``): every matrix is copied from a seeded block of normal(0, 0.02) values (norms 1,
biases 0), on the GPU when the target is one. Measured on 2 CPU cores: the model made in 15 s, the whole build with
saving and hashing 40 s, peak RSS 7.7 GB (1.03x the weights).
The tokenizer is a byte-level BPE trained here (``tests.support.tinymodel``'s approach; no PyPI package ships a
Qwen vocabulary) padded to the real 151,643 regular tokens with filler words, then the 22 Qwen2.5 added tokens at
their real ids (151643 ``<|endoftext|>`` ... 151655 ``<|image_pad|>`` ... 151664), so ``len(tokenizer)`` is
151,665 as in the real one, every id is below ``vocab_size`` 151,936 and the config's token ids match. Its small
vocabulary encodes the Nanonets chat prompt into 351 tokens, roughly twice what Qwen's would: beside a page's 3,036
image tokens that is ~6% more prefill, and decoding is unchanged.

``--shape tiny``: ``tests.support.tinymodel`` (2 text layers, float32), for CPU smoke runs.

The cache is filled the way ``ModelCache.warm`` fills it, offline and without a hub: files go into
``snapshots/<commit>/`` (built in a temp folder beside them and renamed in), each file is hashed (sha256, in
parallel), then the ready-manifest and ``refs/main`` are written. ``ModelCache.resolve(..., mode="offline")`` then
proves it complete and engines load it as they load a warmed model. The commit is a hash of the shape, the config
and the builder version, so a second run finds the checkpoint complete and reuses it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import string
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tests.support.tinymodel import SPECIAL_TOKENS, _quiet_transformers

from gnosis_ocr.modelcache.fsutil import ensure_dir, temp_path
from gnosis_ocr.modelcache.hashing import sha256_file
from gnosis_ocr.modelcache.layout import repo_layout
from gnosis_ocr.modelcache.manifest import ManifestFile, new_manifest, write_manifest
from gnosis_ocr.modelcache.status import inspect_snapshot
from gnosis_ocr.modelcache.warm import write_ref

logger = logging.getLogger(__name__)

Shape = Literal["real", "tiny"]
SHAPES: tuple[Shape, ...] = ("real", "tiny")

# Not the hub's ids: a random model must never pass for the real one in anybody's cache.
REPO_IDS: dict[Shape, str] = {
    "real": "gnosis-bench/Nanonets-OCR-s-random",
    "tiny": "gnosis-bench/tiny-qwen2.5-vl-random",
}
REVISION = "main"
BUILD_VERSION = 1  # bump when what is built changes: the commit changes with it, so old builds are not reused
SHARD_LIMIT = "5GB"  # transformers 4.x's default max_shard_size: 2 shards at the real size

# config.json of Qwen/Qwen2.5-VL-3B-Instruct, the base model named in Nanonets-OCR-s's model card (base_model:
# Qwen/Qwen2.5-VL-3B-Instruct); a fine-tune keeps every shape. Checked against: Nanonets-OCR-s's
# tokenizer_config.json (special token ids 151643-151664, eos <|im_end|>, pad <|endoftext|>); the published module
# tree of Qwen2.5-VL (vision blocks 1280 wide, MLP 3420, 32 blocks); transformers 5.24's Qwen2_5_VLConfig, whose
# defaults are those of the 72B model (text hidden 8192, 80 layers, vocab 152064; vision hidden_size 3584,
# tokens_per_second 4), so every value that differs is written here; and the parameter count it gives,
# 3,754,622,976 (7.51 GB in bf16: the ~7.5 GB of the hub's two shards). The flat layout (text keys at the top,
# rope_scaling with type mrope) is that of the hub file; transformers 5 reads it into text_config and
# rope_parameters.
NANONETS_OCR_S_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 128000,
    "max_window_layers": 70,
    "num_attention_heads": 16,
    "num_hidden_layers": 36,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "sliding_window": 32768,
    "use_sliding_window": False,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 151936,
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 2048,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
    },
}
REAL_PARAMETERS = 3_754_622_976

# Qwen2.5's added tokens at their real ids: the first 14 are special (Qwen2.5-VL's), the rest plain added tokens.
QWEN_ADDED_TOKENS = (
    *SPECIAL_TOKENS,
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
N_SPECIAL = len(SPECIAL_TOKENS)
FIRST_ADDED_ID = 151643  # = the number of regular (BPE) tokens in Qwen2.5's vocabulary

# preprocessor_config.json of Qwen2.5-VL (pixel bounds 56x56 .. 12.8 MP; pages come at ~2.4 MP and stay so).
PREPROCESSOR_CONFIG: dict[str, Any] = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
    "do_resize": True,
    "resample": 3,
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "size": {"shortest_edge": 3136, "longest_edge": 12845056},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_convert_rgb": True,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
}


def added_token_ids() -> dict[str, int]:
    return {token: FIRST_ADDED_ID + i for i, token in enumerate(QWEN_ADDED_TOKENS)}


def commit_for(shape: Shape, seed: int = 0) -> str:
    """The snapshot's commit: a hash of what is built, so a changed builder never reuses an old build."""
    from tests.support import tinymodel

    what = {
        "builder": BUILD_VERSION,
        "shape": shape,
        "seed": seed,
        "config": NANONETS_OCR_S_CONFIG if shape == "real" else {"tinymodel": tinymodel.BUILD_VERSION},
    }
    return hashlib.sha1(json.dumps(what, sort_keys=True).encode(), usedforsecurity=False).hexdigest()


# -- building ---------------------------------------------------------------------------------------------------


def _filler_words(count: int, taken: set[str]) -> Iterator[str]:
    """``count`` distinct words made of ASCII letters (byte-level symbols that decode to themselves), none in
    ``taken``. No merge ever produces them: they only pad the vocabulary to its real size."""
    letters = string.ascii_lowercase
    made = 0
    i = 0
    while made < count:
        n, word = i, ""
        while True:
            word = letters[n % 26] + word
            n //= 26
            if n == 0:
                break
        i += 1
        candidate = "Ġ" + word  # a leading space, as most Qwen word tokens have
        if candidate not in taken:
            made += 1
            yield candidate


def save_real_tokenizer(dest: Path, seed: int = 0) -> None:
    """A Qwen2Tokenizer with the real vocabulary size and the real ids of every added token."""
    from tests.support.tinymodel import CHAT_TEMPLATE, _train_bpe
    from transformers import Qwen2Tokenizer

    learned, merges = _train_bpe(seed)
    vocab = dict(learned)
    vocab.update(
        zip(_filler_words(FIRST_ADDED_ID - len(vocab), set(vocab)), range(len(vocab), FIRST_ADDED_ID), strict=True)
    )
    ids = added_token_ids()
    vocab.update(ids)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",  # noqa: S106 (a vocabulary token, not a secret)
        pad_token="<|endoftext|>",  # noqa: S106
        extra_special_tokens=[t for t in QWEN_ADDED_TOKENS[:N_SPECIAL] if t not in ("<|im_end|>", "<|endoftext|>")],
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        errors="replace",
        split_special_tokens=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(dest)
    for token, token_id in ids.items():
        if tokenizer.convert_tokens_to_ids(token) != token_id:
            raise RuntimeError(f"real-shape tokenizer: {token} has id {tokenizer.convert_tokens_to_ids(token)}")
    if len(tokenizer) != FIRST_ADDED_ID + len(QWEN_ADDED_TOKENS):
        raise RuntimeError(f"real-shape tokenizer has {len(tokenizer)} tokens, expected 151665")


def _fill_random(model: Any, seed: int) -> None:
    """Every parameter filled, fast: matrices from a seeded block of normal(0, 0.02) values (tiled), norm weights
    1, other vectors (biases) 0. Values do not change the cost; they only have to be finite and tame."""
    import torch

    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    block = (torch.randn(1 << 24, generator=generator, device=device) * 0.02).to(torch.bfloat16)
    offset = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat = param.view(-1)
            if param.ndim == 1:
                flat.fill_(1.0 if "norm" in name or "ln_" in name else 0.0)
                continue
            pos = 0
            while pos < flat.numel():
                start = offset % block.numel()
                n = min(flat.numel() - pos, block.numel() - start)
                flat[pos : pos + n].copy_(block[start : start + n])
                pos += n
                offset += n + 7919  # shift the tiling so no two matrices are alike


def build_real_checkpoint(dest: Path, *, device: str = "cpu", seed: int = 0) -> None:
    """Write the real-shape random checkpoint (config, 2 bf16 shards + index, tokenizer, processor) into ``dest``."""
    import torch
    from transformers import AutoConfig, GenerationConfig, Qwen2_5_VLForConditionalGeneration

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers 5.x: initialisation runs (seconds on a GPU, ~50 s on 2 CPU cores)
        no_init_weights = contextlib.nullcontext

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.json").write_text(json.dumps(NANONETS_OCR_S_CONFIG, indent=2) + "\n", encoding="utf-8")
    config = AutoConfig.from_pretrained(dest)  # read back as the engines will read it
    started = time.monotonic()
    with torch.device(device), no_init_weights():
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.tie_weights()  # skipped with the initialisation: lm_head is the embedding matrix (tie_word_embeddings)
    _fill_random(model, seed)
    params = sum(p.numel() for p in model.parameters())
    if params != REAL_PARAMETERS:
        raise RuntimeError(f"real-shape model has {params:,} parameters, expected {REAL_PARAMETERS:,}")
    logger.info(
        "real-shape model: %s parameters made on %s in %.1f s", f"{params:,}", device, time.monotonic() - started
    )
    ids = added_token_ids()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    started = time.monotonic()
    model.to("cpu")  # safetensors writes from host memory; one copy there (7.5 GB), then the files
    with _quiet_transformers():
        model.save_pretrained(dest, max_shard_size=SHARD_LIMIT)
    del model
    shards = sorted(p.name for p in dest.glob("model*.safetensors"))
    if shards != ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]:
        raise RuntimeError(f"real-shape model: expected 2 shards, save_pretrained wrote {shards}")
    (dest / "config.json").write_text(json.dumps(NANONETS_OCR_S_CONFIG, indent=2) + "\n", encoding="utf-8")
    logger.info("real-shape model: weights saved in %.1f s", time.monotonic() - started)
    save_real_tokenizer(dest, seed)
    (dest / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n", encoding="utf-8")


def build_checkpoint(dest: Path, shape: Shape, *, device: str = "cpu", seed: int = 0) -> None:
    if shape == "tiny":
        from tests.support.tinymodel import build_tiny_model

        build_tiny_model(dest, seed=seed, shards=2)
    else:
        build_real_checkpoint(dest, device=device, seed=seed)


# -- into the cache ---------------------------------------------------------------------------------------------


def lay_into_cache(
    folder: Path, cache_root: Path, repo_id: str, commit: str, *, revision: str = REVISION, workers: int = 4
) -> Path:
    """Move the checkpoint in ``folder`` into ``cache_root`` as ``repo_id@commit`` and make it complete: snapshot
    files, then the ready-manifest (sha256 of every file), then ``refs/<revision>``, as ``warm`` writes them.

    ``folder`` must be on the same filesystem as ``cache_root`` (it is renamed, not copied). Returns the snapshot
    folder."""
    layout = repo_layout(cache_root, repo_id)
    snapshot = layout.snapshot_dir(commit)
    if snapshot.exists():
        shutil.rmtree(snapshot)  # an unfinished earlier build: no manifest vouches for it
    ensure_dir(snapshot.parent)
    ensure_dir(layout.blobs_dir)
    folder.rename(snapshot)
    files = sorted(p for p in snapshot.rglob("*") if p.is_file())
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(files)))) as pool:
        hashes = list(pool.map(sha256_file, files))
    entries = [
        ManifestFile(p.relative_to(snapshot).as_posix(), p.stat().st_size, sha)
        for p, sha in zip(files, hashes, strict=True)
    ]
    write_manifest(layout, new_manifest(repo_id, commit, revision, entries))
    write_ref(layout, revision, commit)
    return snapshot


@dataclass(frozen=True)
class Checkpoint:
    shape: Shape
    repo_id: str
    revision: str
    commit: str
    snapshot: Path
    total_bytes: int
    build_seconds: float  # 0 when reused
    reused: bool


def ensure_checkpoint(
    cache_root: Path, shape: Shape, *, device: str = "cpu", seed: int = 0, workers: int = 4
) -> Checkpoint:
    """The checkpoint of ``shape`` complete in ``cache_root``: reused when the fast check says complete at the
    expected commit, else built and laid in."""
    repo_id, commit = REPO_IDS[shape], commit_for(shape, seed)
    layout = repo_layout(cache_root, repo_id)
    report = inspect_snapshot(layout, REVISION)
    if report.complete and report.commit == commit and report.manifest is not None:
        return Checkpoint(
            shape, repo_id, REVISION, commit, layout.snapshot_dir(commit), report.manifest.total_size, 0.0, True
        )
    started = time.monotonic()
    ensure_dir(layout.meta_dir)
    build_dir = temp_path(layout.meta_dir / "build")  # same filesystem as snapshots/, ignored by readers
    try:
        build_checkpoint(build_dir, shape, device=device, seed=seed)
        snapshot = lay_into_cache(build_dir, cache_root, repo_id, commit, workers=workers)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    total = sum(p.stat().st_size for p in snapshot.rglob("*") if p.is_file())
    seconds = time.monotonic() - started
    logger.info(
        "%s@%s: built and laid into %s in %.1f s (%.2f GB)", repo_id, commit[:7], cache_root, seconds, total / 1e9
    )
    return Checkpoint(shape, repo_id, REVISION, commit, snapshot, total, seconds, False)


def remove_checkpoint(cache_root: Path, shape: Shape) -> bool:
    """Delete the repository folder of ``shape`` from ``cache_root``; False when there was none."""
    repo_dir = repo_layout(cache_root, REPO_IDS[shape]).repo_dir
    if not repo_dir.exists():
        return False
    shutil.rmtree(repo_dir)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.realshape", description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, required=True, help="cache root (the GNOSIS cache_root)")
    parser.add_argument("--shape", choices=SHAPES, default="real")
    parser.add_argument("--tiny", action="store_const", const="tiny", dest="shape", help="same as --shape tiny")
    parser.add_argument("--device", default="cpu", help="where the weights are made (cuda: seconds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--remove", action="store_true", help="delete the checkpoint of --shape and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.remove:
        print("removed" if remove_checkpoint(args.cache_dir, args.shape) else "nothing to remove")
        return 0
    ckpt = ensure_checkpoint(
        args.cache_dir, args.shape, device=args.device, seed=args.seed, workers=os.cpu_count() or 2
    )
    print(
        f"{ckpt.repo_id}@{ckpt.commit} ({ckpt.shape}): {ckpt.total_bytes / 1e9:.2f} GB in {ckpt.snapshot}"
        + (" (reused)" if ckpt.reused else f" (built in {ckpt.build_seconds:.1f} s)")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
