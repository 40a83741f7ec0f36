"""PAGES -> TEXT. Engines are chosen by name; ``auto`` picks the VLM where it can run well and says why.

The VLM (``vlm``; ``nanonets`` is its older name) runs on one of two backends: vLLM (continuous batching, GPU) or
transformers (CPU, and the fallback), with the model profile of ``engines.profiles``. ``remote`` reads pages with
the same profiles on an OpenAI-compatible server elsewhere (``engines.remote``: a vLLM pool).

Importing this package imports neither torch nor tesserocr; engines import them in ``load``.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING, get_args

from gnosis_ocr.engines.base import Decoding, Engine, EngineInfo, PageText, StreamingEngine
from gnosis_ocr.engines.feeder import streaming, with_reason
from gnosis_ocr.errors import ConfigError, EngineUnavailableError

if TYPE_CHECKING:
    from gnosis_ocr.engines.profiles import ModelProfile
    from gnosis_ocr.modelcache import ModelCache, ResolvedModel
    from gnosis_ocr.settings import EngineName, Settings, VlmBackend

logger = logging.getLogger(__name__)

__all__ = [
    "Decoding",
    "Engine",
    "EngineInfo",
    "PageText",
    "StreamingEngine",
    "choose_backend",
    "choose_engine",
    "cpu_engine",
    "engine_from_settings",
    "gpu_available",
    "streaming",
]


def gpu_available() -> bool:
    """A CUDA device usable by torch (torch imported only if installed)."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def cpu_engine(settings: Settings) -> tuple[EngineName, str]:
    """(engine name, why) of the CPU engine ``auto`` takes: ``layout`` (tables, headings, reading order, running
    headers and footers) where its model file is installed, else ``tesseract``."""
    from gnosis_ocr.engines.layout import find_layout_model

    try:
        find_layout_model(settings.layout_model)
    except EngineUnavailableError as exc:
        return "tesseract", f"tesseract, as the layout engine is not installed: {exc.message.rstrip('.')}"
    return "layout", "the layout engine (tables, headings, reading order) on tesseract"


def choose_engine(settings: Settings, cache: ModelCache) -> tuple[EngineName, str]:
    """(engine name, reason) for ``auto``: the VLM with a GPU and the model complete in the cache, else the CPU
    engine (``cpu_engine``: layout where its model file is installed, else tesseract).

    ``auto`` takes what is ready and never starts a download: a model of several GB comes only when someone asks for
    it (``gnosis-ocr cache warm``, or the VLM named with ``--engine vlm`` / ``GNOSIS_ENGINE=vlm``)."""
    if not gpu_available():
        cpu, why = cpu_engine(settings)
        return (
            cpu,
            f"no CUDA GPU here, so {why}; the VLM would take minutes per page on CPU (force it with --engine vlm)",
        )
    if importlib.util.find_spec("transformers") is None:
        cpu, why = cpu_engine(settings)
        return cpu, f"a GPU is here but transformers is not installed (pip install 'gnosis-ocr[torch]'), so {why}"
    report = cache.status(settings.model_name, settings.model_revision)
    if report.complete:
        return "vlm", f"GPU and a complete cached {settings.model_name}@{(report.commit or '')[:7]}"
    cpu, why = cpu_engine(settings)
    return cpu, (
        f"a GPU is here but {settings.model_name} is {report.state} in the cache, and auto does not download it, so "
        f"{why}; run `gnosis-ocr cache warm {settings.model_name}` (or choose --engine vlm) to use the VLM"
    )


def choose_backend(settings: Settings) -> tuple[VlmBackend, str]:
    """(backend, reason) for the VLM: vLLM where it is installed and a GPU is present, else transformers."""
    if settings.vlm_backend != "auto":
        return settings.vlm_backend, f"GNOSIS_VLM_BACKEND={settings.vlm_backend}"
    if importlib.util.find_spec("vllm") is None:
        return "transformers", "vLLM is not installed (pip install 'gnosis-ocr[vllm]' on a GPU host)"
    if (settings.device or "cuda").startswith("cpu") or not gpu_available():
        return "transformers", "vLLM is installed but there is no CUDA GPU to run it on"
    return "vllm", "vLLM is installed and a CUDA GPU is present (continuous batching)"


def engine_from_settings(
    settings: Settings, cache: ModelCache, name: str | None = None, *, resolved: ResolvedModel | None = None
) -> StreamingEngine:
    """The engine ``name`` (default: GNOSIS_ENGINE) configured from settings, as a streaming engine (not loaded
    yet): a built-in one or a plugin (``engines.plugins``); ``auto`` resolved here. ``resolved``: the model
    snapshot, when the caller has resolved it already (the VLM then loads it as it is)."""
    wanted = name or settings.engine
    reason = None
    if wanted == "auto":
        wanted, reason = choose_engine(settings, cache)
        logger.info("engine auto: %s (%s)", wanted, reason)
    engine: Engine | StreamingEngine
    if wanted in ("vlm", "nanonets"):
        from gnosis_ocr.engines.profiles import profile_for

        profile = profile_for(settings.model_name, settings.vlm_profile)
        backend, why = choose_backend(settings)
        logger.info("VLM backend: %s (%s); profile %s", backend, why, profile.name)
        reason = f"{reason}; {backend}: {why}" if reason else None
        engine = _vlm(settings, cache, backend, profile, resolved)
    elif wanted == "remote":
        engine = remote_from_settings(settings)
    elif wanted == "tesseract":
        from gnosis_ocr.engines.tesseract import TesseractEngine

        engine = TesseractEngine(settings.tesseract_lang, workers=settings.ocr_workers)
    elif wanted == "layout":
        from gnosis_ocr.engines.layout import LayoutEngine

        engine = LayoutEngine(
            settings.tesseract_lang,
            workers=settings.ocr_workers,
            keep_furniture=settings.keep_furniture,
            model=settings.layout_model,
        )
    elif wanted in settings.engine_plugins:
        from gnosis_ocr.engines.plugins import plugin_engine

        engine = plugin_engine(settings, wanted)
    else:
        from gnosis_ocr.settings import EngineName as Builtin

        raise ConfigError(
            f"Unknown engine {wanted[:40]!r}.",
            hint=f"Use one of: {', '.join((*get_args(Builtin), *settings.engine_plugins))} "
            "(GNOSIS_ENGINE_PLUGINS adds engines).",
        )
    streamed = streaming(engine)
    return with_reason(streamed, reason) if reason else streamed


def remote_from_settings(settings: Settings) -> StreamingEngine:
    """The remote engine (GNOSIS_ENGINE=remote) on GNOSIS_VLM_URL with the model profile of MODEL_NAME."""
    from gnosis_ocr.engines.profiles import profile_for
    from gnosis_ocr.engines.remote import RemoteEngine

    if not settings.vlm_url:
        raise EngineUnavailableError(
            "GNOSIS_ENGINE=remote needs the model server's address, and GNOSIS_VLM_URL is not set.",
            hint="Set GNOSIS_VLM_URL to its OpenAI-compatible base URL, e.g. http://vlm-host:8000/v1.",
        )
    profile = profile_for(settings.model_name, settings.vlm_profile)
    model = settings.vlm_served_model
    if model is None:  # the model the profile is for: MODEL_NAME where the profile lists it
        listed = settings.model_name.lower() in (m.lower() for m in profile.models)
        model = settings.model_name if listed or not profile.models else profile.models[0]
    key = settings.vlm_api_key.get_secret_value() if settings.vlm_api_key is not None else None
    return RemoteEngine(
        settings.vlm_url,
        model=model,
        profile=profile,
        api_key=key,
        capacity=settings.vlm_concurrency,
        connect_timeout=settings.vlm_connect_timeout,
        read_timeout=settings.vlm_read_timeout,
        tries=settings.vlm_tries,
        startup_wait=settings.vlm_startup_wait_seconds,
        max_pixels=settings.vlm_max_pixels,
        max_tokens=settings.vlm_max_new_tokens,
        image_format=settings.vlm_image_format,
    )


def _vlm(
    settings: Settings,
    cache: ModelCache,
    backend: VlmBackend,
    profile: ModelProfile,
    resolved: ResolvedModel | None,
) -> Engine | StreamingEngine:
    from gnosis_ocr.modelcache import read_options_from_settings

    if backend == "vllm":
        from gnosis_ocr.engines.vllm import VllmEngine

        return VllmEngine(
            cache,
            settings.model_name,
            settings.model_revision,
            mode=settings.cache_mode,
            profile=profile,
            resolved=resolved,
            dtype=settings.vlm_dtype,
            gpu_memory_utilization=settings.vlm_gpu_memory_utilization,
            max_model_len=settings.vlm_max_model_len,
            max_num_seqs=settings.vlm_max_num_seqs,
            max_pixels=settings.vlm_max_pixels,
            max_tokens=settings.vlm_max_new_tokens,
            device=settings.device,
        )
    from gnosis_ocr.engines.nanonets import NanonetsEngine

    return NanonetsEngine(
        cache,
        settings.model_name,
        settings.model_revision,
        mode=settings.cache_mode,
        read_options=read_options_from_settings(settings),
        device=settings.device,
        max_new_tokens=settings.vlm_max_new_tokens,
        max_pixels=settings.vlm_max_pixels,
        batch_size=settings.vlm_batch_size,
        dtype=settings.vlm_dtype,
        profile=profile,
        resolved=resolved,
    )
