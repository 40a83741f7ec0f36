"""The deterministic fake engine, for tests of everything above the engine (pipeline, CLI, service).

Its Markdown depends only on the page (number, size, a digest of the pixels), so results are repeatable.
``fail_pages`` makes chosen pages fail as a real engine's page would; ``delay`` slows each page down.

It is not part of gnosis-ocr: tests bring it through the production plugin seam (``engines/plugins.py``).
``tests/conftest.py`` sets ``GNOSIS_ENGINE_PLUGINS=fake=tests.support.fakeengine:fake_engine`` in the test
process, so ``engine="fake"`` in Settings, ``GNOSIS_ENGINE=fake`` in a subprocess that inherits the environment
(with this checkout on PYTHONPATH) and ``--engine fake`` all reach ``fake_engine`` below. Its seconds per page
come from ``fake_engine_delay`` (a field of ``FakeEngineSettings``, which ``make_settings`` builds) or, in a
subprocess, from ``GNOSIS_FAKE_ENGINE_DELAY``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from gnosis_ocr.documents.model import Page
from gnosis_ocr.engines.base import GREEDY, Decoding, EngineInfo, PageText
from gnosis_ocr.settings import Settings

PLUGIN = "fake=tests.support.fakeengine:fake_engine"  # the GNOSIS_ENGINE_PLUGINS entry


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


class FakeEngineSettings(Settings):
    """Settings plus the fake engine's own knob (GNOSIS_FAKE_ENGINE_DELAY), for tests that build Settings."""

    fake_engine_delay: float = Field(default=0.0, ge=0, le=60)  # seconds per page


class _DelayFromEnvironment(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GNOSIS_", extra="ignore")

    fake_engine_delay: float = Field(default=0.0, ge=0, le=60)


def fake_engine(settings: Settings) -> FakeEngine:
    """The plugin factory: a FakeEngine configured from ``settings`` (and GNOSIS_FAKE_ENGINE_DELAY)."""
    delay = (
        settings.fake_engine_delay
        if isinstance(settings, FakeEngineSettings)
        else _DelayFromEnvironment().fake_engine_delay
    )
    return FakeEngine(delay=delay, batch_size=settings.vlm_batch_size or 4)
