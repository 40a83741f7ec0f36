"""Page selections as people type them: ``1-3,7``, ``5-`` (to the end), ``-2`` (the first two), ``all``."""

from __future__ import annotations

import re
from collections.abc import Iterable

from gnosis_ocr.errors import ConfigError

_ITEM = re.compile(r"^(?P<start>\d+)?\s*(?P<dash>-)?\s*(?P<end>\d+)?$")
_HINT = "Write pages as in `1-3,7`, `5-` (page 5 to the end), `-2` (the first two) or `all`; pages count from 1."


def parse_page_selection(spec: str | None, page_count: int) -> list[int]:
    """The 1-based page numbers ``spec`` selects in a document of ``page_count`` pages, ascending, each once.

    ``None`` and ``"all"`` select every page. A page past the end is an error (not silently dropped) that says how
    many pages the document has; open ranges (``5-``, ``-2``) stop at the end. Raises ``ConfigError``.
    """
    if spec is None or spec.strip().lower() == "all":
        return list(range(1, page_count + 1))
    if not spec.strip():
        raise ConfigError("The page selection is empty.", hint=_HINT)
    selected: set[int] = set()
    for raw in spec.split(","):
        start, end = _parse_item(raw.strip(), spec, page_count)
        selected.update(range(start, end + 1))
    return sorted(selected)


def check_page_numbers(numbers: Iterable[int], page_count: int) -> list[int]:
    """``numbers`` as a list, each checked to be a page of a ``page_count``-page document (else ``ConfigError``)."""
    checked = list(numbers)
    for number in checked:
        if not 1 <= number <= page_count:
            raise ConfigError(f"There is no page {number}: {_pages(page_count)}.", hint=_HINT)
    return checked


def _parse_item(item: str, spec: str, page_count: int) -> tuple[int, int]:
    match = _ITEM.match(item)
    if (
        not item
        or match is None
        or (match["start"] is None and match["end"] is None)
        or (match["dash"] is None and match["end"] is not None)  # "3 4": two numbers without a dash
    ):
        raise ConfigError(f"Cannot read the page selection {spec!r}: {item!r} is not a page or a range.", hint=_HINT)
    if match["dash"] is None:
        start = end = int(match["start"])
    else:
        start = int(match["start"]) if match["start"] is not None else 1
        end = int(match["end"]) if match["end"] is not None else page_count
    if start < 1 or end < 1:
        raise ConfigError(f"Page {min(start, end)} in {spec!r} does not exist: pages count from 1.", hint=_HINT)
    if start > page_count:
        raise ConfigError(f"The page selection {spec!r} asks for page {start}, but {_pages(page_count)}.", hint=_HINT)
    if end > page_count:
        raise ConfigError(
            f"The page selection {spec!r} asks for pages up to {end}, but {_pages(page_count)}.",
            hint=f"Write `{start}-` for page {start} to the end.",
        )
    if start > end:
        raise ConfigError(f"The range {item!r} in {spec!r} runs backwards; write it as {end}-{start}.", hint=_HINT)
    return start, end


def _pages(page_count: int) -> str:
    return f"the document has {page_count} page{'s' if page_count != 1 else ''}"
