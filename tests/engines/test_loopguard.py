"""The loop guard on real loops, on pages that repeat themselves legitimately, and on unicode."""

from __future__ import annotations

import random

import pytest

from gnosis_ocr.engines.base import Decoding
from gnosis_ocr.engines.loopguard import looping, retry_decodings, retry_temperatures

PROSE = (
    "Minutes of the meeting held on 3 March. The committee reviewed the budget for the coming year and agreed to "
    "postpone the purchase of new equipment until the audit is complete. Ms Okafor raised the question of the "
    "library's opening hours; a survey of members will be sent in April. "
)


def _empty_rows(rows: int, columns: int) -> str:
    return "<table>\n" + ("<tr>" + "<td></td>" * columns + "</tr>\n") * rows


# --- loops -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "period"),
    [
        (PROSE + "The patient was discharged in good condition.\n" * 60, 46),  # one line over and over
        (PROSE + "<tr><td>1.</td><td>Lorem ipsum</td></tr>\n" * 300, 41),  # a table row
        (PROSE + "$$x = " + "\\quad " * 400, 6),  # LaTeX spacing
        (PROSE + "这是一个测试。" * 200, 7),  # CJK: counted in characters, not bytes
        ("Résumé 📄 " * 150, 9),  # accents and an emoji
        (PROSE * 8, len(PROSE)),  # a whole paragraph, eight times
        (PROSE + "\n" * 600, 1),  # blank lines
    ],
    ids=["line", "table-row", "latex", "cjk", "emoji", "paragraph", "blank"],
)
def test_real_loops_are_found_with_their_pattern(text: str, period: int) -> None:
    reason = looping(text, truncated=False)
    assert reason is not None and f"a {period}-character pattern" in reason


def test_a_loop_the_model_closed_before_stopping_is_still_found() -> None:
    text = PROSE + "<tr><td>x</td><td>0.00</td></tr>\n" * 300 + "</table>"
    assert looping(text, truncated=False) is not None


def test_an_endless_grid_of_empty_cells_is_a_loop() -> None:
    assert looping(_empty_rows(400, 2), truncated=False) is not None
    assert looping(_empty_rows(43, 15), truncated=False) is not None


def test_the_reason_says_how_long_and_how_often() -> None:
    reason = looping("abc:" + "Total due\n" * 200, truncated=False)
    assert reason == "the last 2000 characters repeat a 10-character pattern 200 times"


def test_only_the_tail_is_examined_whatever_the_length() -> None:
    huge = PROSE * 5000  # about 1.3 MB of repeating prose: a 263-character unit, hundreds of times
    assert looping(huge, truncated=False) is not None
    varied = "".join(f"Row {i}: value {i * 7919 % 1000}\n" for i in range(50_000))
    assert looping(varied, truncated=False) is None


# --- what a page may legitimately repeat ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        PROSE * 2,  # a paragraph quoted twice
        _empty_rows(60, 2) + "</table>",  # a blank form: 60 empty rows
        _empty_rows(42, 15) + "</table>",  # a wide blank grid, just under the markup threshold
        PROSE + ("_" * 80 + "\n") * 25,  # answer lines on a form
        PROSE + "Signature: ____________  Date: ________\n" * 5,  # signature blocks
        "".join(f"Chapter {i} {'.' * 80} {i * 12}\n" for i in range(1, 30)),  # dot leaders in a contents page
        "".join(f"<tr><td>{i}</td><td>Item {i}</td><td>0.00</td></tr>\n" for i in range(1, 300)),  # numbered rows
        PROSE + "-" * 500,  # a long rule, under MIN_RUN
        PROSE + "<tr><td>N/A</td><td>N/A</td></tr>\n" * 12,  # a few identical rows
        "ok " * 100,  # short output
        "",
    ],
    ids=[
        "quoted-twice",
        "blank-form",
        "wide-blank-grid",
        "answer-lines",
        "signatures",
        "dot-leaders",
        "numbered-rows",
        "rule",
        "identical-rows",
        "short",
        "empty",
    ],
)
def test_legitimate_repetition_is_left_alone(text: str) -> None:
    assert looping(text, truncated=False) is None


def test_random_text_is_not_a_loop() -> None:
    rng = random.Random(3)  # noqa: S311 (test data, not a secret)
    words = ["alpha", "beta", "gamma", "<td>", "</td>", "0.00", "中文", "☑", "\n"]
    for _ in range(50):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 3000)))
        assert looping(text, truncated=False) is None


# --- max tokens ----------------------------------------------------------------------------------------------------


def test_a_page_stopped_at_max_tokens_is_flagged_and_its_repetition_named() -> None:
    assert looping(PROSE, truncated=True) == "stopped at max tokens"
    assert looping("", truncated=True) == "stopped at max tokens"
    reason = looping(PROSE + "<td></td>" * 100, truncated=True)
    assert reason is not None and reason.startswith("stopped at max tokens; the last 900 characters repeat a 9-")


# --- retries -------------------------------------------------------------------------------------------------------


def test_retry_temperatures_rise() -> None:
    assert retry_temperatures(0) == ()
    assert retry_temperatures(3) == (0.2, 0.5, 0.8)
    ladder = retry_temperatures(6)
    assert list(ladder) == sorted(set(ladder)) and ladder[:3] == (0.2, 0.5, 0.8)
    with pytest.raises(ValueError, match="0 or more"):
        retry_temperatures(-1)


def test_retry_decodings_sample_with_a_seed_each() -> None:
    decodings = retry_decodings(2, max_tokens=512, seed=10)
    assert decodings == (Decoding(0.2, 512, 11), Decoding(0.5, 512, 12))
