"""A deterministic engine for tests of everything above the engine (pipeline, CLI, service).

Its Markdown depends only on the page (number, size, a digest of the pixels, the text layer), so results are
repeatable. ``fail_pages`` makes chosen pages fail as a real engine's page would; ``delay`` slows each page down.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

from gnosis_ocr.documents.model import Page
from gnosis_ocr.engines.base import GREEDY, Decoding, EngineInfo, PageText


class FakeEngine:
    def __init__(self, *, fail_pages: frozenset[int] = frozenset(), delay: float = 0.0, batch_size: int = 4) -> None:
        self._fail = fail_pages
        self._delay = delay
        self._batch = batch_size
        self.loaded = False
        self.calls: list[list[int]] = []

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(name="fake", model="fake", revision="0", device="cpu")

    @property
    def batch_size(self) -> int:
        return self._batch

    def load(self) -> None:
        self.loaded = True

    def recognize(self, pages: Sequence[Page], decoding: Decoding = GREEDY) -> list[PageText]:
        self.calls.append([p.number for p in pages])
        out = []
        for page in pages:
            started = time.monotonic()
            if self._delay:
                time.sleep(self._delay)
            if page.number in self._fail:
                out.append(PageText(page.number, "", time.monotonic() - started, error="fake engine failed here"))
                continue
            digest = hashlib.sha256(page.image.tobytes()).hexdigest()[:12]
            width, height = page.image.size
            text = f"# Page {page.number}\n\nfake text of a {width}x{height} page, pixels {digest}"
            out.append(PageText(page.number, text, time.monotonic() - started, meta={"digest": digest}))
        return out

    def close(self) -> None:
        self.loaded = False
