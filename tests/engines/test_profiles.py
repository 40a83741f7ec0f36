"""Model profiles: prompts in the models' chat format, page image budgets, and parsing of each model's answer."""

from __future__ import annotations

import dataclasses
import logging
import random

import pytest
from PIL import Image, ImageDraw

from gnosis_ocr.engines.profiles import (
    GENERIC_QWEN25_VL,
    NANONETS_OCR2_3B,
    NANONETS_OCR_S,
    NANONETS_PROMPT,
    OLMOCR_2,
    OLMOCR_2_FP8,
    PROFILES,
    ModelProfile,
    ParsedPage,
    parse_nanonets,
    parse_olmocr,
    profile_for,
    upright,
)
from gnosis_ocr.errors import ConfigError
from gnosis_ocr.modelcache import ModelCache
from tests.conftest import REPO
from tests.support.hubserver import LocalHub

OLMOCR_ANSWER = """---
primary_language: en
is_rotation_valid: True
rotation_correction: 0
is_table: False
is_diagram: False
---
# Annual report

Revenue rose 12%."""


def test_every_shipped_model_finds_its_profile() -> None:
    assert profile_for("nanonets/Nanonets-OCR-s") is NANONETS_OCR_S
    assert profile_for("nanonets/Nanonets-OCR2-3B") is NANONETS_OCR2_3B
    assert profile_for("allenai/olmOCR-2-7B-1025") is OLMOCR_2
    assert profile_for("allenai/olmOCR-2-7B-1025-FP8") is OLMOCR_2_FP8
    assert profile_for("ALLENAI/olmocr-2-7b-1025") is OLMOCR_2  # the hub matches ids case-insensitively
    assert NANONETS_OCR2_3B.prompt == NANONETS_PROMPT
    assert {p.name for p in PROFILES.values()} == set(PROFILES)


def test_an_unknown_model_gets_the_generic_profile_and_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gnosis_ocr.engines.profiles"):
        assert profile_for("someone/other-qwen2.5-vl") is GENERIC_QWEN25_VL
    assert "someone/other-qwen2.5-vl has no profile of its own" in caplog.text


def test_a_profile_named_wins_over_the_model_and_an_unknown_name_says_which_exist() -> None:
    assert profile_for("nanonets/Nanonets-OCR-s", "olmocr-2") is OLMOCR_2
    with pytest.raises(ConfigError, match="Unknown model profile 'nope'") as caught:
        profile_for("nanonets/Nanonets-OCR-s", "nope")
    assert "olmocr-2" in (caught.value.hint or "")


def test_every_profile_states_its_limits_licence_and_source() -> None:
    for profile in PROFILES.values():
        assert profile.max_tokens > 0 and profile.max_pixels >= 10_000
        assert profile.licence and profile.parameters and profile.source
        assert profile.size_bytes >= 0 and not profile.ignore_eos
    assert OLMOCR_2.max_side == 1288 and OLMOCR_2.max_tokens == 8000
    assert NANONETS_OCR2_3B.max_tokens == 15_000
    assert OLMOCR_2.licence.startswith("apache-2.0")


@pytest.mark.parametrize("profile", [NANONETS_OCR_S, OLMOCR_2], ids=lambda p: p.name)
def test_chat_text_matches_the_chat_template_with_the_image_where_the_model_expects_it(
    profile: ModelProfile, cache: ModelCache, hub: LocalHub
) -> None:
    from gnosis_ocr.modelcache.loader import load_processor_parts

    tokenizer, _ = load_processor_parts(cache.resolve(REPO, mode="auto"))
    image, text = {"type": "image"}, {"type": "text", "text": profile.prompt}
    content = [image, text] if profile.image_first else [text, image]
    messages = [{"role": "user", "content": content}]
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert profile.chat_text() == expected


def test_olmocr_asks_with_the_prompt_before_the_image() -> None:
    chat = OLMOCR_2.chat_text()
    assert chat.index("Attached is one page") < chat.index("<|vision_start|>")
    assert "front matter" in chat and chat.endswith("<|im_start|>assistant\n")
    assert NANONETS_OCR_S.chat_text().index("<|vision_end|>Extract the text") > 0


def test_pages_are_scaled_down_to_the_pixel_budget_and_olmocrs_longest_side() -> None:
    letter = (2550, 3300)  # US letter at 300 DPI
    w, h = NANONETS_OCR_S.scaled_size(*letter)
    assert w * h <= NANONETS_OCR_S.max_pixels and abs(w / h - 2550 / 3300) < 0.01
    assert max(OLMOCR_2.scaled_size(*letter)) == 1288
    assert NANONETS_OCR_S.scaled_size(800, 600) == (800, 600)  # never scaled up
    assert NANONETS_OCR_S.scaled_size(*letter, max_pixels=100_000)[0] * 100 < 2550 * 35
    small = Image.new("RGB", (300, 200))
    assert NANONETS_OCR_S.fit(small) is small
    assert OLMOCR_2.fit(Image.new("RGB", (2000, 1000))).size == (1288, 644)


def test_nanonets_answer_keeps_its_tags_and_names_the_printed_page_number() -> None:
    raw = "\n <watermark>DRAFT</watermark>\nTotal: 42 ☑\n<page_number>9/22</page_number>\n\n"
    parsed = parse_nanonets(raw)
    assert parsed.markdown == "<watermark>DRAFT</watermark>\nTotal: 42 ☑\n<page_number>9/22</page_number>"
    assert parsed.meta == {"page_number": "9/22"} and parsed.rotate == 0
    assert parse_nanonets("<page_number>ii</page_number> x <page_number>14</page_number>").meta["page_number"] == "14"
    assert parse_nanonets("no number <page_number></page_number>").meta == {}


def test_olmocr_front_matter_becomes_page_metadata_and_the_body_markdown() -> None:
    parsed = parse_olmocr(OLMOCR_ANSWER)
    assert parsed.markdown == "# Annual report\n\nRevenue rose 12%."
    assert parsed.meta == {
        "language": "en",
        "rotation_valid": True,
        "rotation_correction": 0,
        "is_table": False,
        "is_diagram": False,
        "front_matter": "ok",
    }
    assert parsed.rotate == 0


def test_olmocr_says_how_to_turn_a_page_it_reads_as_turned() -> None:
    turned = OLMOCR_ANSWER.replace("is_rotation_valid: True", "is_rotation_valid: false").replace(
        "rotation_correction: 0", "rotation_correction: 90"
    )
    assert parse_olmocr(turned).rotate == 90
    valid_anyway = OLMOCR_ANSWER.replace("rotation_correction: 0", "rotation_correction: 180")
    assert parse_olmocr(valid_anyway).rotate == 0  # olmOCR applies the correction only when rotation is invalid


def test_upright_turns_as_olmocr_does() -> None:
    image = Image.new("RGB", (40, 20), "white")
    ImageDraw.Draw(image).rectangle((0, 0, 9, 9), fill="black")  # a mark top left
    turned = upright(image, 90)  # counter-clockwise: the top-left corner goes to the bottom left
    assert turned.size == (20, 40)
    assert turned.getpixel((2, 37)) == (0, 0, 0) and turned.getpixel((2, 2)) == (255, 255, 255)
    assert upright(image, 0) is image
    assert upright(image, 45) is image


def test_olmocr_page_without_text_and_null_language() -> None:
    parsed = parse_olmocr(OLMOCR_ANSWER.split("---\n# Annual", maxsplit=1)[0].replace("en", "null") + "---\n")
    assert parsed.markdown == "" and parsed.meta["language"] is None and parsed.meta["front_matter"] == "ok"


@pytest.mark.parametrize(
    ("raw", "state", "markdown"),
    [
        ("Just text, no front matter.", "missing", "Just text, no front matter."),
        ("---\n\nA rule, then text\n\n---\nmore", "missing", "---\n\nA rule, then text\n\n---\nmore"),
        ("---\nprimary_language: en\nis_table: maybe\n---\nBody", "garbled", "Body"),
        ("---\nprimary_language: en\nrotation_correction: 45\n---\nBody", "garbled", "Body"),
        ("---\nprimary_language: de\nis_table: true\nDer Text", "unclosed", "Der Text"),
        ("---\nprimary_language: en\nis_rotation_valid: Tr", "unclosed", ""),
        ("", "missing", ""),
        ("---", "missing", "---"),
    ],
)
def test_olmocr_parsing_survives_missing_or_garbled_front_matter(raw: str, state: str, markdown: str) -> None:
    parsed = parse_olmocr(raw)
    assert parsed.meta["front_matter"] == state
    assert parsed.markdown == markdown


def test_olmocr_parsing_never_raises_on_random_output() -> None:
    rng = random.Random(7)  # noqa: S311 (test data, not a secret)
    alphabet = "---\n:abc yes no true 90 180 primary_language is_rotation_valid rotation_correction ☑ 中文 \ufeff"
    pieces = alphabet.split(" ")
    for _ in range(500):
        raw = " ".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        if rng.random() < 0.5:
            raw = "---\n" + raw
        parsed = parse_olmocr(raw)
        assert isinstance(parsed, ParsedPage) and parsed.rotate in (0, 90, 180, 270)


def test_a_looping_profile_is_a_replace_away() -> None:
    looping = dataclasses.replace(NANONETS_OCR_S, ignore_eos=True, max_tokens=12)
    assert looping.ignore_eos and looping.max_tokens == 12 and looping.prompt == NANONETS_OCR_S.prompt
    assert not NANONETS_OCR_S.ignore_eos
