"""PAGES -> TEXT. Engines are chosen by name; ``auto`` picks the VLM where it can run well and says why.

Importing this package imports neither torch nor tesserocr; engines import them in ``load``.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from gnosis_ocr.documents.model import Page
from gnosis_ocr.engines.base import Engine, EngineInfo, PageText
from gnosis_ocr.errors import EngineUnavailableError

if TYPE_CHECKING:
    from gnosis_ocr.modelcache import ModelCache, ResolvedModel
    from gnosis_ocr.settings import EngineName, Settings

logger = logging.getLogger(__name__)

__all__ = ["Engine", "EngineInfo", "PageText", "choose_engine", "engine_from_settings", "gpu_available"]


def gpu_available() -> bool:
    """A CUDA device usable by torch (torch imported only if installed)."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def choose_engine(settings: Settings, cache: ModelCache) -> tuple[EngineName, str]:
    """(engine name, reason) for ``auto``: the VLM with a GPU and a complete or warmable model, else tesseract."""
    if not gpu_available():
        return (
            "tesseract",
            "no CUDA GPU here; the VLM would take minutes per page on CPU (force it with --engine nanonets)",
        )
    if importlib.util.find_spec("transformers") is None:
        return "tesseract", "a GPU is here but transformers is not installed (pip install 'gnosis-ocr[torch]')"
    report = cache.status(settings.model_name, settings.model_revision)
    if report.complete:
        return "nanonets", f"GPU and a complete cached {settings.model_name}@{(report.commit or '')[:7]}"
    if settings.cache_mode == "offline":
        return "tesseract", (
            f"a GPU is here but {settings.model_name} is {report.state} in the cache and "
            "GNOSIS_CACHE_MODE=offline forbids downloading it"
        )
    return "nanonets", f"GPU; {settings.model_name} is {report.state} in the cache and will be warmed first"


def engine_from_settings(
    settings: Settings, cache: ModelCache, name: EngineName | None = None, *, resolved: ResolvedModel | None = None
) -> Engine:
    """The engine ``name`` (default: GNOSIS_ENGINE) configured from settings; ``auto`` resolved here.

    ``resolved``: the model snapshot, when the caller has resolved it already (the VLM then loads it as it is)."""
    wanted = name or settings.engine
    reason = None
    if wanted == "auto":
        wanted, reason = choose_engine(settings, cache)
        logger.info("engine auto: %s (%s)", wanted, reason)
    engine: Engine
    if wanted == "nanonets":
        from gnosis_ocr.engines.nanonets import NanonetsEngine
        from gnosis_ocr.modelcache import read_options_from_settings

        engine = NanonetsEngine(
            cache,
            settings.model_name,
            settings.model_revision,
            mode=settings.cache_mode,
            read_options=read_options_from_settings(settings),
            device=settings.device,
            max_new_tokens=settings.vlm_max_new_tokens,
            batch_size=settings.vlm_batch_size,
            resolved=resolved,
        )
    elif wanted == "tesseract":
        from gnosis_ocr.engines.tesseract import TesseractEngine

        engine = TesseractEngine(settings.tesseract_lang, workers=settings.ocr_workers)
    elif wanted == "fake":
        from gnosis_ocr.engines.fake import FakeEngine

        engine = FakeEngine(delay=settings.fake_engine_delay, batch_size=settings.vlm_batch_size or 4)
    else:  # pragma: no cover - Literal keeps this unreachable
        raise EngineUnavailableError(f"Unknown engine {wanted!r}.", hint="Use auto, nanonets or tesseract.")
    return _WithReason(engine, reason) if reason else engine


class _WithReason:
    """An engine chosen by ``auto``: same engine, its info carries the reason."""

    def __init__(self, engine: Engine, reason: str) -> None:
        self._engine = engine
        self._reason = reason

    @property
    def info(self) -> EngineInfo:
        return replace(self._engine.info, reason=self._reason)

    @property
    def batch_size(self) -> int:
        return self._engine.batch_size

    def load(self) -> None:
        self._engine.load()

    def recognize(self, pages: Sequence[Page]) -> list[PageText]:
        return self._engine.recognize(pages)

    def close(self) -> None:
        self._engine.close()
