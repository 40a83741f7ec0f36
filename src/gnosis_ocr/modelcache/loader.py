"""Load a resolved snapshot into transformers objects, reading weights with the parallel reader.

Everything is read from the snapshot folder (a local path, never a repo id), after ``ModelCache.resolve``
has put the process offline, so no call here can reach the network.

One host copy: the reader puts each shard in one buffer and the tensors are views into it; transformers 5 builds
the model on the meta device and, where the dtype is the checkpoint's, makes those views the parameters (no
copy). So the model is loaded in the checkpoint's own dtype unless a caller asks for another (a conversion copies
every tensor: peak host memory is then the checkpoint plus the converted model). Key renames of older checkpoints,
tied weights (``lm_head`` = the embeddings, not saved) and non-persistent buffers (rotary ``inv_freq``) are
transformers' own loading code, which this reuses. A checkpoint that lacks a tensor the model needs, or has one
of the wrong shape, is refused rather than loaded with random values in its place.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gnosis_ocr.errors import CacheCorruptError
from gnosis_ocr.modelcache.cache import ResolvedModel
from gnosis_ocr.modelcache.metrics import CacheMetrics
from gnosis_ocr.modelcache.weights import ReadStats, read_files, tensors_from_buffer

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadOptions:
    """``verify``: True hashes every shard while it is read (``GNOSIS_VERIFY_ON_LOAD=full``); False checks the
    sizes only (``sizes``). The size check against the ready-manifest runs either way."""

    workers: int = 4
    chunk_bytes: int = 16 * 1024 * 1024
    verify: bool = True


def read_state_dict(
    resolved: ResolvedModel, options: ReadOptions, metrics: CacheMetrics | None = None
) -> tuple[dict[str, torch.Tensor], ReadStats]:
    """Every tensor of the snapshot's safetensors files, read in parallel sequential chunks."""
    files = resolved.weight_files()
    if not files:
        raise CacheCorruptError(
            f"{resolved.repo_id}@{resolved.commit[:7]} has no .safetensors weights; gnosis-ocr loads only "
            "safetensors (pickled .bin weights can run code on load)."
        )
    sizes = {resolved.path / f.path: f.size for f in resolved.manifest.files}
    buffers, stats = read_files(
        [p for p, _ in files],
        workers=options.workers,
        chunk_bytes=options.chunk_bytes,
        expected_sha256={p: sha for p, sha in files} if options.verify else None,
        expected_sizes={p: sizes[p] for p, _ in files},
    )
    state: dict[str, torch.Tensor] = {}
    for path, buf in buffers.items():
        tensors = tensors_from_buffer(buf)
        clash = state.keys() & tensors.keys()
        if clash:
            raise CacheCorruptError(f"{path.name} repeats tensors of another shard: {sorted(clash)[:3]}")
        state.update(tensors)
    if metrics is not None:
        metrics.observe("read", stats.seconds)
        metrics.bytes_read.inc(stats.bytes)
    logger.info(
        "%s@%s: read %d weight file(s), %.1f MiB in %.2f s (%.0f MiB/s)%s",
        resolved.repo_id,
        resolved.commit[:7],
        stats.files,
        stats.bytes / 2**20,
        stats.seconds,
        stats.mib_per_s,
        ", sha256 checked" if options.verify else ", sizes checked (GNOSIS_VERIFY_ON_LOAD=sizes)",
    )
    return state, stats


def checkpoint_dtype(state: dict[str, torch.Tensor]) -> torch.dtype | None:
    """The floating dtype holding most of the checkpoint's bytes (None when it has no floating tensors)."""
    weight: dict[torch.dtype, int] = {}
    for tensor in state.values():
        if tensor.is_floating_point():
            weight[tensor.dtype] = weight.get(tensor.dtype, 0) + tensor.nbytes
    return max(weight, key=lambda d: weight[d]) if weight else None


def _refuse_incomplete(resolved: ResolvedModel, info: dict[str, Any]) -> None:
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or ())
    if missing or mismatched:
        what = (f"{len(missing)} tensor(s) missing ({', '.join(missing[:3])})" if missing else "") + (
            f"{'; ' if missing else ''}{len(mismatched)} of the wrong shape ({', '.join(mismatched[:3])})"
            if mismatched
            else ""
        )
        raise CacheCorruptError(
            f"{resolved.repo_id}@{resolved.commit[:7]}: the weights do not fit the model of its config.json: "
            f"{what}. It was not loaded (the gaps would be random values).",
            hint="The snapshot's config and shards come from different models or revisions; `gnosis-ocr cache "
            "repair` fetches the pinned commit's files again.",
        )
    unexpected = sorted(info.get("unexpected_keys") or ())
    if unexpected:
        logger.warning(
            "%s@%s: %d checkpoint tensor(s) the model does not use, ignored: %s",
            resolved.repo_id,
            resolved.commit[:7],
            len(unexpected),
            ", ".join(unexpected[:5]),
        )


def copied_bytes(model: Any, state: dict[str, torch.Tensor]) -> int:
    """Bytes of ``model``'s parameters that are not views of the read buffers (0: one host copy)."""
    buffers = {t.untyped_storage().data_ptr() for t in state.values() if t.nbytes}
    return sum(p.nbytes for p in model.parameters() if p.nbytes and p.untyped_storage().data_ptr() not in buffers)


def load_pretrained(
    resolved: ResolvedModel,
    model_class: Any,
    *,
    options: ReadOptions | None = None,
    metrics: CacheMetrics | None = None,
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> Any:
    """``model_class`` (a transformers model class) with config, generation config and weights from the
    snapshot, on the host. ``dtype`` None: the checkpoint's own, so the parameters are the read buffers (one
    copy). Extra keyword arguments go to ``from_pretrained``."""
    from transformers import AutoConfig, GenerationConfig

    started = time.monotonic()
    state, _ = read_state_dict(resolved, options or ReadOptions(), metrics)
    config = AutoConfig.from_pretrained(resolved.path)
    target = dtype or checkpoint_dtype(state)
    model, info = model_class.from_pretrained(
        None, config=config, state_dict=state, dtype=target, output_loading_info=True, **kwargs
    )
    _refuse_incomplete(resolved, info)
    copied = copied_bytes(model, state)
    del state  # the parameters keep the buffers they view alive; the rest is freed here
    logger.info(
        "%s@%s: weights in %s, %s",
        resolved.repo_id,
        resolved.commit[:7],
        str(target).removeprefix("torch."),
        f"{copied / 2**20:.1f} MiB copied (dtype conversion)" if copied else "one host copy (no tensor copied)",
    )
    if (resolved.path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(resolved.path)
    model.eval()
    if metrics is not None:
        metrics.observe("load", time.monotonic() - started)
    return model


def load_processor_parts(resolved: ResolvedModel) -> tuple[Any, Any]:
    """(tokenizer, image processor) from the snapshot. ``AutoProcessor`` for Qwen2.5-VL needs torchvision in
    transformers 5.x (its video processor is mandatory); the two parts need only PIL."""
    from transformers import AutoImageProcessor, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    image_processor = AutoImageProcessor.from_pretrained(resolved.path)  # type: ignore[no-untyped-call, unused-ignore]  # typed from transformers 5.25
    return tokenizer, image_processor
