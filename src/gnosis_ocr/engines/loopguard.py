"""The loop guard: is a page's output a loop (the same text over and over until max tokens)? Pure functions.

A VLM page can loop: greedy decoding that enters a cycle stays in it, so the output ends in an *exactly* periodic
run of characters, repeated until max tokens. ``looping`` looks for that at the tail: for every period up to
``MAX_PERIOD`` it measures how many of the last characters repeat with that period (one Z-function pass over the
reversed tail: O(``WINDOW``) work whatever the page's length, so a streaming engine can call it on partial output).
It also checks once more with the last line left out, so a loop the model closed (``</table>``) and stopped after
is still seen.

Thresholds (a page of real text repeats itself far less than this, a loop far more):

- a repeated run shorter than ``MIN_RUN`` (512) characters is never a loop: dot leaders, rules, short lists;
- a unit holding text (a letter or digit outside HTML tags): the repeated run is at least ``TEXT_RUN`` (1024)
  characters and at least ``TEXT_REPEATS`` (6) copies: a line of 37 characters 28 times, a paragraph of 200
  characters 6 times, ``0.00 `` 205 times;
- a unit of markup only (empty cells ``<td></td>``, empty rows, rules, punctuation): at least ``MARKUP_RUN`` (6144)
  characters and ``MARKUP_REPEATS`` (32) copies, because blank forms really do hold long grids of empty cells:
  219 empty 2-column rows (``<tr><td></td><td></td></tr>``, 28 characters a line) or 42 empty 15-column rows
  pass unflagged, unless the page also stops at max tokens;
- a unit of whitespace only: ``MIN_RUN`` characters.

A page that stops at max tokens is flagged whatever it holds ("stopped at max tokens"): as in olmOCR's pipeline, a
cut page is not taken for a whole one; the reason then also names the repetition, if any (>= 256 characters,
>= 3 copies). Loops whose repeats differ (a counter that goes up) are not exact and are caught only by max tokens.

The guard's retries decode at a rising temperature (``retry_temperatures``), each with its own seed so a retry is
repeatable, then the caller falls back (text layer, tesseract).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from gnosis_ocr.engines.base import Decoding

_Accept = Callable[[str, int, float], bool]  # (unit, run, repeats) -> is it a loop

WINDOW = 8192  # characters of the tail examined
MAX_PERIOD = 2048  # longest repeating unit looked for
MIN_RUN = 512
TEXT_RUN, TEXT_REPEATS = 1024, 6
MARKUP_RUN, MARKUP_REPEATS = 6144, 32
REPORT_RUN, REPORT_REPEATS = 256, 3  # what a truncated page's reason mentions
LAST_LINE = 200  # a final line up to this long is also left out for a second look

_TAG = re.compile(r"<[^<>]*>")
_EDGE_TAGS = re.compile(r"^[^<>]*>|<[^<>]*$")


def looping(text: str, *, truncated: bool) -> str | None:
    """Why ``text`` (a page's raw output) looks like a loop, or None. ``truncated``: generation stopped at max
    tokens rather than at the end-of-sequence token."""
    tail = text[-WINDOW:]
    if truncated:
        found = _repetition(tail, lambda unit, run, repeats: run >= REPORT_RUN and repeats >= REPORT_REPEATS)
        return f"stopped at max tokens; {found}" if found else "stopped at max tokens"
    if len(tail) <= MIN_RUN:
        return None
    found = _repetition(tail, _is_loop)
    if found is None:
        cut = tail.rstrip().rfind("\n")
        if cut > 0 and len(tail) - cut <= LAST_LINE:
            found = _repetition(tail[:cut], _is_loop)
    return found


def retry_temperatures(retries: int) -> tuple[float, ...]:
    """Temperatures for ``retries`` retries of a looping page, rising: 0.2, 0.5, 0.8, then 1.0, 1.2, ..."""
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, not {retries}")
    return tuple(round(0.2 + 0.3 * i if i < 3 else 0.8 + 0.2 * (i - 2), 2) for i in range(retries))


def retry_decodings(retries: int, *, max_tokens: int | None = None, seed: int = 0) -> tuple[Decoding, ...]:
    """One ``Decoding`` per retry: ``retry_temperatures``, seeds ``seed + 1``, ``seed + 2``, ... (repeatable)."""
    return tuple(
        Decoding(temperature=t, max_tokens=max_tokens, seed=seed + i + 1)
        for i, t in enumerate(retry_temperatures(retries))
    )


def _is_loop(unit: str, run: int, repeats: float) -> bool:
    if run < MIN_RUN:
        return False
    if not unit.strip():
        return True
    if _has_text(unit):
        return run >= TEXT_RUN and repeats >= TEXT_REPEATS
    return run >= MARKUP_RUN and repeats >= MARKUP_REPEATS


def _has_text(unit: str) -> bool:
    """A letter or digit outside HTML tags, in some rotation of ``unit`` (three copies: every tag whole once)."""
    stripped = _EDGE_TAGS.sub("", _TAG.sub("", unit * 3))
    return any(c.isalnum() for c in stripped)


def _repetition(tail: str, accept: _Accept) -> str | None:
    """The shortest period whose run at the end of ``tail`` ``accept`` takes, described; else None."""
    reversed_tail = tail[::-1]
    z = _z_function(reversed_tail)
    n = len(tail)
    for period in range(1, min(MAX_PERIOD, n // 2) + 1):
        run = min(n, z[period] + period)  # the last `run` characters repeat with this period
        if run < 2 * period:
            continue
        repeats = run / period
        if accept(tail[-period:], run, repeats):
            return f"the last {run} characters repeat a {period}-character pattern {repeats:.0f} times"
    return None


def _z_function(s: str) -> list[int]:
    """z[i]: length of the longest common prefix of ``s`` and ``s[i:]`` (z[0] = len(s)); O(len(s))."""
    n = len(s)
    z = [0] * n
    if n:
        z[0] = n
    left = right = 0
    for i in range(1, n):
        k = min(right - i, z[i - left]) if i < right else 0
        while i + k < n and s[k] == s[i + k]:
            k += 1
        z[i] = k
        if i + k > right:
            left, right = i, i + k
    return z
