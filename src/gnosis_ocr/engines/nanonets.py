"""The VLM through transformers: any Qwen2.5-VL model (Nanonets-OCR-s, OCR2, olmOCR-2) with its model profile,
loaded only from the cache. The CPU backend, and the GPU fallback where vLLM is not installed.

The model is resolved by ``ModelCache.resolve`` to a local snapshot proven complete; weights are read by the
cache's parallel sequential reader (hashes checked) and everything else is loaded from the snapshot path, so no
call here reaches the network. The profile (``engines.profiles``) gives the prompt, the page image budget, the
token bound and the parsing of the answer; pages are batched (``batch_size``) with left padding.

Inputs are built without ``AutoProcessor`` (which needs torchvision in transformers 5.x for Qwen2.5-VL): the chat
prompt is written in the Qwen2-VL format (``ModelProfile.chat_text``) and each ``<|image_pad|>`` is repeated once
per merged vision patch.

Decoding: greedy, or sampled at ``Decoding.temperature`` with its seed (the loop guard's retries; top-k and top-p
are switched off then, since Qwen checkpoints ship ``top_k=1`` in their generation config, which would make any
temperature greedy). A profile with ``ignore_eos`` generates exactly its max tokens (``min_new_tokens``).

Lifetime: one generation at a time runs on the device, under ``_lock``. ``close`` takes that lock, so it waits for
a running batch to finish (its pages get their text) before it frees the model; pages asked for after ``close``
answer ``error="engine closed"`` without touching the device. ``load`` after ``close`` loads again.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

from gnosis_ocr.documents.model import Page
from gnosis_ocr.engines.base import GREEDY, Decoding, EngineInfo, PageText
from gnosis_ocr.engines.profiles import IMAGE_PAD, ModelProfile, profile_for
from gnosis_ocr.errors import EngineUnavailableError
from gnosis_ocr.modelcache.cache import CacheMode, ModelCache, ResolvedModel

if TYPE_CHECKING:
    from gnosis_ocr.modelcache.loader import ReadOptions

logger = logging.getLogger(__name__)

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
CLOSED = "engine closed"


def expand_image_pads(text: str, grid_thw: Sequence[int], merge_size: int) -> str:
    """``text`` with its one ``<|image_pad|>`` repeated once per merged patch of an image of grid ``grid_thw``."""
    t, h, w = (int(v) for v in grid_thw)
    return text.replace(IMAGE_PAD, IMAGE_PAD * (t * h * w // (merge_size**2)), 1)


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


class NanonetsEngine:
    def __init__(
        self,
        cache: ModelCache,
        repo_id: str,
        revision: str = "main",
        *,
        mode: CacheMode = "auto",
        read_options: ReadOptions | None = None,
        device: str | None = None,
        profile: ModelProfile | None = None,
        max_new_tokens: int | None = None,
        max_pixels: int | None = None,
        batch_size: int | None = None,
        dtype: Dtype = "auto",
        resolved: ResolvedModel | None = None,
    ) -> None:
        """``profile``: default the one for ``repo_id``. ``max_new_tokens``, ``max_pixels``: override the
        profile's. ``dtype`` auto: bfloat16 on a GPU that has it (else float16); on CPU the checkpoint's own (bf16
        for the Qwen2.5-VL models: half the memory of float32, and the parameters are the read buffers, one host
        copy). ``resolved``: a snapshot the caller already resolved (the service's model service), used as it is."""
        self._cache = cache
        self._given = resolved
        self._repo_id = repo_id
        self._revision = revision
        self._mode = mode
        self._read_options = read_options
        self._device = device
        self._profile = profile or profile_for(repo_id)
        self._max_new_tokens = max_new_tokens or self._profile.max_tokens
        self._max_pixels = max_pixels
        self._batch_size = batch_size
        self._dtype: Dtype = dtype
        self._lock = threading.Lock()  # one generation (or load, or close) at a time on the device
        self._closed = False
        self._model: Any = None
        self._tokenizer: Any = None
        self._image_processor: Any = None
        self._resolved: ResolvedModel | None = None

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            name="vlm",
            model=self._repo_id,
            revision=self._resolved.commit if self._resolved else None,
            device=self._device or ("cuda" if _cuda_available() else "cpu"),
            vlm=True,
            backend="transformers",
            profile=self._profile.name,
        )

    @property
    def profile(self) -> ModelProfile:
        return self._profile

    @property
    def batch_size(self) -> int:
        """Pages per generation: as given, else 4 on a GPU and 1 on CPU, for the device ``load`` will use (known
        before loading, so a caller sizing its batches before ``load`` gets the GPU's)."""
        if self._batch_size is not None:
            return self._batch_size
        device = self._device or ("cuda" if _cuda_available() else "cpu")
        return 4 if device.startswith("cuda") else 1

    def load(self) -> None:
        """Load the model (idempotent); after ``close``, load it again."""
        self._load(reopen=True)

    def _load(self, *, reopen: bool) -> None:
        if self._model is not None:
            return
        try:
            import torch
            from transformers import Qwen2_5_VLForConditionalGeneration
        except ImportError as exc:
            raise EngineUnavailableError(
                f"The nanonets engine needs torch and transformers: {exc}.",
                hint="Install them with `pip install 'gnosis-ocr[torch]'` (a CUDA build of torch on GPU hosts), "
                "or use `--engine tesseract`.",
            ) from exc
        from gnosis_ocr.modelcache.loader import ReadOptions, load_pretrained, load_processor_parts

        with self._lock:
            if self._model is not None or (self._closed and not reopen):
                return
            resolved = self._given or self._cache.resolve(self._repo_id, self._revision, mode=self._mode)
            device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = self._torch_dtype(torch, device)
            started = time.monotonic()
            model = load_pretrained(
                resolved,
                Qwen2_5_VLForConditionalGeneration,
                options=self._read_options or ReadOptions(),
                metrics=self._cache.metrics,
                dtype=dtype,
            )
            model.to(device)
            tokenizer, image_processor = load_processor_parts(resolved)
            tokenizer.padding_side = "left"
            self._model, self._tokenizer, self._image_processor = model, tokenizer, image_processor
            self._resolved, self._device, self._closed = resolved, device, False
        logger.info(
            "nanonets: %s@%s on %s (%s, profile %s) loaded in %.1f s",
            self._repo_id,
            resolved.commit[:7],
            device,
            str(model.dtype).removeprefix("torch."),
            self._profile.name,
            time.monotonic() - started,
        )

    def _torch_dtype(self, torch: Any, device: str) -> Any:
        """The dtype to load in; None: the checkpoint's own (auto on CPU)."""
        if self._dtype != "auto":
            return getattr(torch, self._dtype)
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None

    def recognize(self, pages: Sequence[Page], decoding: Decoding = GREEDY) -> list[PageText]:
        if not pages:
            return []
        self._load(reopen=False)
        failed: Exception | None = None
        with self._lock:
            if self._model is None:  # closed while this batch waited for the device
                return [PageText(p.number, "", 0.0, error=CLOSED) for p in pages]
            try:
                return self._generate(pages, decoding)
            except Exception as exc:  # e.g. out of memory on a big batch: one page at a time below
                failed = exc
                self._free_cached_memory()
        if len(pages) == 1:
            logger.warning("nanonets: page %d failed: %s", pages[0].number, failed)
            error = f"generation failed: {type(failed).__name__}: {failed}"
            return [PageText(pages[0].number, "", 0.0, error=error)]
        logger.warning("nanonets: batch of %d pages failed (%s); retrying page by page", len(pages), failed)
        return [result for page in pages for result in self.recognize([page], decoding)]

    def _generate(self, pages: Sequence[Page], decoding: Decoding) -> list[PageText]:
        import torch

        started = time.monotonic()
        profile = self._profile
        images = [profile.fit(_rgb(p.image), self._max_pixels) for p in pages]
        vision = self._image_processor(images=images, return_tensors="pt")
        merge = int(getattr(self._image_processor, "merge_size", 2))
        chat = profile.chat_text()
        texts = [expand_image_pads(chat, grid, merge) for grid in vision["image_grid_thw"].tolist()]
        tokens = self._tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = {**tokens, "pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}
        inputs = {k: v.to(self._device) for k, v in inputs.items()}
        max_tokens = decoding.max_tokens or self._max_new_tokens
        options: dict[str, Any] = {"max_new_tokens": max_tokens}
        if decoding.temperature > 0:
            options.update(do_sample=True, temperature=decoding.temperature, top_k=0, top_p=1.0)
            if decoding.seed is not None:
                torch.manual_seed(decoding.seed)
        else:
            options["do_sample"] = False
        if profile.ignore_eos:
            options["min_new_tokens"] = max_tokens  # end-of-sequence is masked until max_tokens
        with torch.inference_mode():
            generated = self._model.generate(**inputs, **options)
        new_tokens = generated[:, tokens["input_ids"].shape[1] :].tolist()
        eos = set(self._eos_ids())
        per_page = (time.monotonic() - started) / len(pages)
        out = []
        for page, row in zip(pages, new_tokens, strict=True):
            end = next((i for i, t in enumerate(row) if t in eos), None)
            kept = row if end is None else row[:end]
            raw = self._tokenizer.decode(kept, skip_special_tokens=True)
            truncated = end is None
            parsed = profile.parse(raw)
            meta: dict[str, object] = {
                **parsed.meta,
                "new_tokens": len(kept),
                "truncated": truncated,
                "finish_reason": "length" if truncated else "stop",
            }
            if parsed.rotate:
                meta["rotate"] = parsed.rotate
            if decoding.temperature > 0:
                meta["temperature"] = decoding.temperature
            out.append(PageText(page.number, parsed.markdown, per_page, meta=meta))
        return out

    def _eos_ids(self) -> list[int]:
        eos = self._model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        pad = self._tokenizer.pad_token_id
        return [int(i) for i in ids] + ([int(pad)] if pad is not None else [])

    def _free_cached_memory(self) -> None:
        if str(self._device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def close(self) -> None:
        """Free the model once the running generation, if any, has finished (waits for it; idempotent)."""
        self._closed = True
        with self._lock:
            self._model = self._tokenizer = self._image_processor = None
        self._free_cached_memory()
