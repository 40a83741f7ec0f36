"""The VLM engine end to end on the tiny random Qwen2.5-VL: real load from the cache, prompt, generation, output."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from gnosis_ocr.documents.model import Page
from gnosis_ocr.engines.nanonets import NANONETS_PROMPT, NanonetsEngine, chat_text, expand_image_pads
from gnosis_ocr.errors import ModelNotCachedError
from gnosis_ocr.modelcache import ModelCache
from tests.conftest import REPO
from tests.support.hubserver import LocalHub
from tests.support.tinymodel import build_generation_inputs


def _page(number: int, text: str, size: tuple[int, int] = (140, 100)) -> Page:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((10, 40), text, fill="black")
    return Page(number=number, image=image)


def test_our_prompt_matches_the_models_chat_template(cache: ModelCache, hub: LocalHub) -> None:
    from gnosis_ocr.modelcache.loader import load_processor_parts

    tokenizer, image_processor = load_processor_parts(cache.resolve(REPO, mode="auto"))
    page = _page(1, "Total: 42")
    reference = build_generation_inputs(tokenizer, image_processor, page.image, NANONETS_PROMPT)
    grid = image_processor(images=[page.image], return_tensors="pt")["image_grid_thw"][0].tolist()
    ours = tokenizer(expand_image_pads(chat_text(NANONETS_PROMPT), grid, image_processor.merge_size))
    assert ours["input_ids"] == reference["input_ids"][0].tolist()


def test_generates_for_a_batch_of_pages_with_zero_network(cache: ModelCache, hub: LocalHub) -> None:
    cache.warm(REPO)
    hub.reset_counters()
    attempts = cache.guard.total  # the guard is per process: count from here
    engine = NanonetsEngine(cache, REPO, mode="offline", max_new_tokens=6, batch_size=2, device="cpu")
    engine.load()
    pages = [_page(1, "Invoice 17"), _page(2, "Total: 42", size=(200, 90)), _page(3, "Thanks")]
    results = engine.recognize(pages[:2]) + engine.recognize(pages[2:])
    assert [r.number for r in results] == [1, 2, 3]
    assert all(r.ok and isinstance(r.markdown, str) for r in results)
    assert all(0 < int(r.meta["new_tokens"]) <= 6 for r in results)  # type: ignore[call-overload]
    assert engine.info.revision == cache.status(REPO).commit and engine.info.vlm
    assert hub.request_count == 0 and cache.guard.total == attempts
    engine.close()


def test_offline_engine_without_the_model_says_what_to_do(cache_root: Path, hub: LocalHub) -> None:
    cache = ModelCache(cache_root, endpoint=hub.endpoint)
    with pytest.raises(ModelNotCachedError, match="gnosis-ocr cache warm"):
        NanonetsEngine(cache, REPO, mode="offline", device="cpu").load()
