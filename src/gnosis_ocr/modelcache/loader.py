"""Load a resolved snapshot into transformers objects, reading weights with the parallel reader.

Everything is read from the snapshot folder (a local path, never a repo id), after ``ModelCache.resolve``
has put the process offline, so no call here can reach the network.
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
    buffers, stats = read_files(
        [p for p, _ in files],
        workers=options.workers,
        chunk_bytes=options.chunk_bytes,
        expected_sha256={p: sha for p, sha in files} if options.verify else None,
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
        ", sha256 checked" if options.verify else "",
    )
    return state, stats


def load_pretrained(
    resolved: ResolvedModel,
    model_class: Any,
    *,
    options: ReadOptions | None = None,
    metrics: CacheMetrics | None = None,
    **kwargs: Any,
) -> Any:
    """``model_class`` (a transformers model class) with config, generation config and weights from the
    snapshot. Extra keyword arguments (``dtype``, ...) go to ``from_pretrained``."""
    from transformers import AutoConfig, GenerationConfig

    started = time.monotonic()
    state, _ = read_state_dict(resolved, options or ReadOptions(), metrics)
    config = AutoConfig.from_pretrained(resolved.path)
    model = model_class.from_pretrained(None, config=config, state_dict=state, **kwargs)
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
    image_processor = AutoImageProcessor.from_pretrained(resolved.path)  # type: ignore[no-untyped-call]
    return tokenizer, image_processor
