from __future__ import annotations

import pytest

from gnosis_ocr.documents import parse_page_selection
from gnosis_ocr.errors import ConfigError


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
        ("all", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
        (" ALL ", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
        ("1-3,7", [1, 2, 3, 7]),
        ("7, 1 - 3", [1, 2, 3, 7]),
        ("5-", [5, 6, 7, 8, 9, 10]),
        ("-2", [1, 2]),
        ("3", [3]),
        ("2,2,1-2", [1, 2]),
        ("10", [10]),
        ("4-4", [4]),
    ],
)
def test_selections(spec: str | None, expected: list[int]) -> None:
    assert parse_page_selection(spec, 10) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("abc", "'abc' is not a page or a range"),
        ("1-3,,7", "'' is not a page or a range"),
        ("-", "'-' is not a page or a range"),
        ("1-2-3", "not a page or a range"),
        ("0", "pages count from 1"),
        ("0-3", "pages count from 1"),
        ("5-3", "runs backwards; write it as 3-5"),
        ("1.5", "not a page or a range"),
        ("3 4", "'3 4' is not a page or a range"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_page_selection(spec, 10)
    assert info.value.hint is not None
    assert "1-3,7" in info.value.hint


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("11", "asks for page 11, but the document has 10 pages"),
        ("12-", "asks for page 12, but the document has 10 pages"),
        ("8-12", "asks for pages up to 12, but the document has 10 pages"),
        ("-11", "asks for pages up to 11, but the document has 10 pages"),
    ],
)
def test_pages_past_the_end_say_how_many_there_are(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_page_selection(spec, 10)


def test_one_page_document_says_page_not_pages() -> None:
    with pytest.raises(ConfigError, match="the document has 1 page\\."):
        parse_page_selection("2", 1)
