"""The UI's own Server-Sent Events parser (static/sse.js), run in Chromium: line endings, chunking, comments."""

from __future__ import annotations

from collections.abc import Callable

from tests.api.conftest import Live
from tests.web.conftest import UiPage

STREAM = (
    ": a comment first\n\n"
    "event: job\r\n"
    'data: {"id": "x"}\r\n'
    "\r\n"
    ": ping\n\n"
    "data: line one\n"
    "data:line two\n"
    "\n"
    "event: page\r"
    "data: cr only\r"
    "\r"
    "id: 7\n"
    "event: end\n"
    'data: {"status": "done"}\n'
    "unknown: ignored\n"
    "\n"
    "event: no-data\n\n"
    "data: cut off before its blank line"
)
EXPECTED = [
    ["job", '{"id": "x"}', ""],
    ["message", "line one\nline two", ""],
    ["page", "cr only", ""],
    ["end", '{"status": "done"}', "7"],
]
PARSE = """async (chunks) => {
    const { SseParser } = await import("/static/sse.js");
    const seen = [];
    const parser = new SseParser((type, data, id) => seen.push([type, data, id]));
    for (const chunk of chunks) parser.push(chunk);
    parser.end();
    return seen;
}"""


CHUNKINGS = {
    "whole": [STREAM],
    "one character at a time": list(STREAM),
    "seven characters at a time": [STREAM[i : i + 7] for i in range(0, len(STREAM), 7)],
}


def test_events_survive_any_chunking_and_line_ending(
    ui_server: Callable[..., Live], open_page: Callable[..., UiPage]
) -> None:
    ui = open_page(ui_server())
    for name, chunks in CHUNKINGS.items():
        assert ui.page.evaluate(PARSE, chunks) == EXPECTED, name
