"""The VLM engine: Nanonets-OCR-s (or any Qwen2.5-VL model) through transformers, loaded only from the cache.

The model is resolved by ``ModelCache.resolve`` to a local snapshot proven complete; weights are read by the
cache's parallel sequential reader (hashes checked) and everything else is loaded from the snapshot path, so no
call here reaches the network. Decoding is greedy with a max-new-tokens bound; pages are batched on a GPU.

Inputs are built without ``AutoProcessor`` (which needs torchvision in transformers 5.x for Qwen2.5-VL): the chat
prompt is written in the Qwen2-VL format and each ``<|image_pad|>`` is repeated once per merged vision patch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gnosis_ocr.documents.model import Page
from gnosis_ocr.engines.base import EngineInfo, PageText
from gnosis_ocr.errors import EngineUnavailableError
from gnosis_ocr.modelcache.cache import CacheMode, ModelCache, ResolvedModel

if TYPE_CHECKING:
    from gnosis_ocr.modelcache.loader import ReadOptions

logger = logging.getLogger(__name__)

# The prompt published with Nanonets-OCR-s (its model card): tables as HTML, equations as LaTeX, tagged images,
# watermarks and page numbers, check boxes as ☐/☑.
NANONETS_PROMPT = (
    "Extract the text from the above document as if you were reading it naturally. Return the tables in html "
    "format. Return the equations in LaTeX representation. If there is an image in the document and image caption "
    "is not present, add a small description of the image inside the <img></img> tag; otherwise, add the image "
    "caption inside <img></img>. Watermarks should be wrapped in brackets. Ex: <watermark>OFFICIAL "
    "COPY</watermark>. Page numbers should be wrapped in brackets. Ex: <page_number>14</page_number> or "
    "<page_number>9/22</page_number>. Prefer using ☐ and ☑ for check boxes."
)
SYSTEM_PROMPT = "You are a helpful assistant."
IMAGE_PAD = "<|image_pad|>"


def chat_text(prompt: str) -> str:
    """One user turn holding one image and ``prompt``, in the Qwen2-VL chat format, ready for generation."""
    return (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n<|vision_start|>{IMAGE_PAD}<|vision_end|>{prompt}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def expand_image_pads(text: str, grid_thw: Sequence[int], merge_size: int) -> str:
    t, h, w = (int(v) for v in grid_thw)
    return text.replace(IMAGE_PAD, IMAGE_PAD * (t * h * w // (merge_size**2)), 1)


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
        max_new_tokens: int = 4096,
        batch_size: int | None = None,
        prompt: str = NANONETS_PROMPT,
        resolved: ResolvedModel | None = None,
    ) -> None:
        """``resolved``: a snapshot the caller already resolved (the service's model service), used as it is."""
        self._cache = cache
        self._given = resolved
        self._repo_id = repo_id
        self._revision = revision
        self._mode = mode
        self._read_options = read_options
        self._device = device
        self._max_new_tokens = max_new_tokens
        self._batch_size = batch_size
        self._prompt = prompt
        self._lock = threading.Lock()  # one generation at a time on the device
        self._model: Any = None
        self._tokenizer: Any = None
        self._image_processor: Any = None
        self._resolved: ResolvedModel | None = None

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            name="nanonets",
            model=self._repo_id,
            revision=self._resolved.commit if self._resolved else None,
            device=self._device or "auto",
            vlm=True,
        )

    @property
    def batch_size(self) -> int:
        if self._batch_size is not None:
            return self._batch_size
        return 4 if (self._device or "").startswith("cuda") else 1

    def load(self) -> None:
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

        resolved = self._given or self._cache.resolve(self._repo_id, self._revision, mode=self._mode)
        device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
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
        self._resolved, self._device = resolved, device
        logger.info(
            "nanonets: %s@%s on %s (%s) loaded in %.1f s",
            self._repo_id,
            resolved.commit[:7],
            device,
            str(dtype).removeprefix("torch."),
            time.monotonic() - started,
        )

    def recognize(self, pages: Sequence[Page]) -> list[PageText]:
        self.load()
        with self._lock:
            try:
                return self._generate(pages)
            except Exception as exc:  # e.g. out of memory on a big batch: fall back to one page at a time
                if len(pages) == 1:
                    logger.warning("nanonets: page %d failed: %s", pages[0].number, exc)
                    return [PageText(pages[0].number, "", 0.0, error=f"generation failed: {type(exc).__name__}: {exc}")]
                logger.warning("nanonets: batch of %d failed (%s); retrying page by page", len(pages), exc)
        out: list[PageText] = []
        for page in pages:
            out.extend(self.recognize([page]))
        return out

    def _generate(self, pages: Sequence[Page]) -> list[PageText]:
        import torch

        started = time.monotonic()
        vision = self._image_processor(images=[p.image for p in pages], return_tensors="pt")
        merge = int(getattr(self._image_processor, "merge_size", 2))
        texts = [expand_image_pads(chat_text(self._prompt), grid, merge) for grid in vision["image_grid_thw"].tolist()]
        tokens = self._tokenizer(texts, return_tensors="pt", padding=True)
        inputs = {**tokens, "pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}
        inputs = {k: v.to(self._device) for k, v in inputs.items()}
        with torch.inference_mode():
            generated = self._model.generate(**inputs, max_new_tokens=self._max_new_tokens, do_sample=False)
        new_tokens = generated[:, tokens["input_ids"].shape[1] :]
        decoded = self._tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        per_page = (time.monotonic() - started) / len(pages)
        eos = set(self._eos_ids())
        out = []
        for page, text, row in zip(pages, decoded, new_tokens.tolist(), strict=True):
            finished = any(t in eos for t in row)
            meta: dict[str, object] = {"new_tokens": sum(1 for t in row if t not in eos)}
            if not finished:
                meta["truncated"] = True  # hit max_new_tokens
            out.append(PageText(page.number, text.strip(), per_page, meta=meta))
        return out

    def _eos_ids(self) -> list[int]:
        eos = self._model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        pad = self._tokenizer.pad_token_id
        return [int(i) for i in ids] + ([int(pad)] if pad is not None else [])

    def close(self) -> None:
        self._model = self._tokenizer = self._image_processor = None
