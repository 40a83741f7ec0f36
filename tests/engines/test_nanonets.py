"""The transformers VLM engine end to end on the tiny random Qwen2.5-VL: real load from the cache, each profile's
prompt, generation (greedy, sampled, forced to max tokens), output parsing, and closing under a running batch."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from gnosis_ocr.documents.model import Page
from gnosis_ocr.engines.base import Decoding, PageText
from gnosis_ocr.engines.nanonets import CLOSED, NanonetsEngine, expand_image_pads
from gnosis_ocr.engines.profiles import NANONETS_OCR_S, NANONETS_PROMPT, OLMOCR_2, PROFILES, ModelProfile
from gnosis_ocr.errors import ModelNotCachedError
from gnosis_ocr.modelcache import ModelCache
from tests.conftest import REPO
from tests.support.hubserver import LocalHub
from tests.support.tinymodel import build_generation_inputs


def _page(number: int, text: str, size: tuple[int, int] = (140, 100)) -> Page:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((10, 40), text, fill="black")
    return Page(number=number, image=image)


@pytest.fixture
def warm(cache: ModelCache) -> ModelCache:
    cache.warm(REPO)
    return cache


def _engine(cache: ModelCache, **options: object) -> NanonetsEngine:
    return NanonetsEngine(cache, REPO, mode="offline", device="cpu", **options)  # type: ignore[arg-type]


def test_our_prompt_matches_the_models_chat_template(cache: ModelCache, hub: LocalHub) -> None:
    from gnosis_ocr.modelcache.loader import load_processor_parts

    tokenizer, image_processor = load_processor_parts(cache.resolve(REPO, mode="auto"))
    page = _page(1, "Total: 42")
    reference = build_generation_inputs(tokenizer, image_processor, page.image, NANONETS_PROMPT)
    grid = image_processor(images=[page.image], return_tensors="pt")["image_grid_thw"][0].tolist()
    ours = tokenizer(expand_image_pads(NANONETS_OCR_S.chat_text(), grid, image_processor.merge_size))
    assert ours["input_ids"] == reference["input_ids"][0].tolist()


def test_generates_for_a_batch_of_pages_with_zero_network(warm: ModelCache, hub: LocalHub) -> None:
    hub.reset_counters()
    attempts = warm.guard.total  # the guard is per process: count from here
    engine = _engine(warm, max_new_tokens=6, batch_size=2, profile=NANONETS_OCR_S)
    engine.load()
    pages = [_page(1, "Invoice 17"), _page(2, "Total: 42", size=(200, 90)), _page(3, "Thanks")]
    results = engine.recognize(pages[:2]) + engine.recognize(pages[2:])
    assert [r.number for r in results] == [1, 2, 3]
    assert all(r.ok and isinstance(r.markdown, str) for r in results)
    for r in results:
        tokens = r.meta["new_tokens"]
        assert isinstance(tokens, int) and 0 <= tokens <= 6
        assert r.meta["finish_reason"] == ("length" if r.meta["truncated"] else "stop")
        assert r.meta["truncated"] == (tokens == 6)
    info = engine.info
    assert info.revision == warm.status(REPO).commit and info.vlm
    assert (info.backend, info.profile, info.name, info.device) == ("transformers", "nanonets-ocr-s", "vlm", "cpu")
    assert hub.request_count == 0 and warm.guard.total == attempts
    engine.close()


def test_the_profile_defaults_to_the_models_own(warm: ModelCache) -> None:
    assert _engine(warm).profile.name == "generic-qwen2.5-vl"  # the tiny model has no profile of its own
    assert NanonetsEngine(warm, "allenai/olmOCR-2-7B-1025").profile is OLMOCR_2


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=lambda p: p.name)
def test_every_profile_reads_pages_and_parses_even_garbage(warm: ModelCache, profile: ModelProfile) -> None:
    engine = _engine(warm, profile=profile, max_new_tokens=8, batch_size=2)
    results = engine.recognize([_page(1, "Page one"), _page(2, "Seite zwei", size=(2400, 3000))])
    assert all(r.ok for r in results) and engine.info.profile == profile.name
    if profile.name.startswith("olmocr"):
        assert all(r.meta["front_matter"] in ("ok", "garbled", "unclosed", "missing") for r in results)
    engine.close()


def test_a_profile_that_ignores_eos_generates_exactly_its_max_tokens(warm: ModelCache) -> None:
    looping = dataclasses.replace(NANONETS_OCR_S, ignore_eos=True, max_tokens=12)
    engine = _engine(warm, profile=looping, batch_size=2)
    results = engine.recognize([_page(1, "a"), _page(2, "b")])
    assert [r.meta["new_tokens"] for r in results] == [12, 12]
    assert all(r.meta["truncated"] is True and r.meta["finish_reason"] == "length" for r in results)
    shorter = engine.recognize([_page(3, "c")], Decoding(max_tokens=5))
    assert shorter[0].meta["new_tokens"] == 5  # Decoding.max_tokens overrides the profile's
    engine.close()


def test_sampling_at_a_temperature_is_repeatable_with_its_seed(warm: ModelCache) -> None:
    engine = _engine(warm, profile=dataclasses.replace(NANONETS_OCR_S, ignore_eos=True, max_tokens=16))
    page = _page(1, "Invoice 17")
    first = engine.recognize([page], Decoding(temperature=0.8, seed=5))[0]
    again = engine.recognize([page], Decoding(temperature=0.8, seed=5))[0]
    assert first.ok and first.markdown == again.markdown and first.meta["temperature"] == 0.8
    outputs = {engine.recognize([page], Decoding(temperature=1.2, seed=s))[0].markdown for s in range(6)}
    assert len(outputs) > 1  # it samples: six seeds do not all give the greedy answer
    engine.close()


def test_batch_size_follows_the_device_that_will_be_used_before_loading(cache: ModelCache) -> None:
    import torch

    assert NanonetsEngine(cache, REPO, device="cuda:0").batch_size == 4
    assert NanonetsEngine(cache, REPO, device="cpu").batch_size == 1
    assert NanonetsEngine(cache, REPO).batch_size == (4 if torch.cuda.is_available() else 1)
    assert NanonetsEngine(cache, REPO, batch_size=3).batch_size == 3


def test_close_waits_for_the_running_generation_then_later_pages_fail_cleanly(warm: ModelCache) -> None:
    """The defect: shutdown freed the model under a running batch ("AttributeError ... batch_decode")."""
    engine = _engine(warm, profile=dataclasses.replace(NANONETS_OCR_S, ignore_eos=True, max_tokens=400))
    engine.load()
    results: list[PageText] = []
    reader = threading.Thread(target=lambda: results.extend(engine.recognize([_page(1, "slow")])))
    reader.start()
    deadline = time.monotonic() + 30
    while not engine._lock.locked() and time.monotonic() < deadline:  # the generation holds the device
        time.sleep(0.001)
    engine.close()  # returns only once the batch is done
    assert not reader.is_alive()
    reader.join()
    assert results[0].ok and results[0].meta["new_tokens"] == 400
    after = engine.recognize([_page(2, "late"), _page(3, "later")])
    assert [(r.number, r.error) for r in after] == [(2, CLOSED), (3, CLOSED)]
    engine.load()  # an explicit load opens it again
    assert engine.recognize([_page(4, "again")], Decoding(max_tokens=2))[0].ok
    engine.close()
    engine.close()  # idempotent


def test_offline_engine_without_the_model_says_what_to_do(cache_root: Path, hub: LocalHub) -> None:
    cache = ModelCache(cache_root, endpoint=hub.endpoint)
    with pytest.raises(ModelNotCachedError, match="gnosis-ocr cache warm"):
        NanonetsEngine(cache, REPO, mode="offline", device="cpu").load()
