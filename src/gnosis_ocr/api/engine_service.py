"""The service's engines: the default one chosen and loaded at start-up in the background, others on first use.

No FastAPI here. ``auto`` picks the VLM where a CUDA GPU is and the model is complete in the cache, else
tesseract, and says why. With the VLM as default, the model service resolves the model first (warming it when the
cache policy allows) and the engine loads from the resolved snapshot; with tesseract the model is left alone, so
a CPU box does not download a VLM that nobody asked for (POST /api/v1/cache/warm still fills the cache).

``/readyz`` is "the default engine is loaded" (and, for the VLM, "its model is resolved and unbroken").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gnosis_ocr.api.model_service import ModelService
from gnosis_ocr.engines import Engine, EngineInfo, StreamingEngine, choose_engine, engine_from_settings, streaming
from gnosis_ocr.errors import CacheError, ConfigError, EngineUnavailableError, GnosisError
from gnosis_ocr.jobs.metrics import JobMetrics
from gnosis_ocr.modelcache import ModelCache, ResolvedModel
from gnosis_ocr.settings import EngineName, Settings

logger = logging.getLogger(__name__)

EngineState = Literal["choosing", "waiting for the model", "loading", "ready", "failed", "stopped"]
Factory = Callable[[Settings, ModelCache, str], Engine | StreamingEngine]
# nanonets: vlm's older name
PUBLIC_ENGINES: tuple[EngineName, ...] = ("auto", "vlm", "nanonets", "tesseract", "layout")


def canonical(name: str) -> str:
    return "vlm" if name == "nanonets" else name


@dataclass(frozen=True)
class EngineStatus:
    name: str | None  # the default engine, once chosen
    state: EngineState
    reason: str  # why this engine (auto), or why it is not ready
    device: str | None = None
    info: EngineInfo | None = None  # once loaded: backend, model, commit, profile

    @property
    def ready(self) -> bool:
        return self.state == "ready"


class EngineService:
    def __init__(
        self,
        settings: Settings,
        cache: ModelCache,
        model: ModelService,
        *,
        factory: Factory | None = None,
        metrics: JobMetrics | None = None,
    ) -> None:
        self.settings = settings
        self._metrics = metrics
        self.cache = cache
        self.model = model
        self._factory = factory
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # one engine loads at a time
        self._engines: dict[str, StreamingEngine] = {}
        self._status = EngineStatus(None, "choosing", "choosing the engine")
        self._settled = threading.Event()  # the default engine is loaded or failed
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def choices(self) -> tuple[str, ...]:
        """Engine names an upload may ask for (``remote`` where GNOSIS_VLM_URL names a server; the operator's
        plugins, GNOSIS_ENGINE_PLUGINS)."""
        remote: tuple[EngineName, ...] = ("remote",) if self.settings.vlm_url else ()
        return (*PUBLIC_ENGINES, *remote, *self.settings.engine_plugins)

    def status(self) -> EngineStatus:
        with self._lock:
            return self._status

    def _set(self, status: EngineStatus) -> None:
        with self._lock:
            self._status = status

    # -- start-up ----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._start, name="gnosis-engine-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            name, reason = self._choose()
            self._set(EngineStatus(name, "choosing", reason))
            if name == "vlm":
                self.model.start()
                self._set(EngineStatus(name, "waiting for the model", reason))
                while self.model.resolved is None:
                    if self._stopping.wait(0.2):
                        return
            else:
                self.model.status()  # the cache state for /readyz, without resolving anything
            self._set(EngineStatus(name, "loading", reason))
            engine = self._load(name)
            self._set(EngineStatus(name, "ready", reason, engine.info.device, engine.info))
            logger.info("engine %s ready on %s (%s)", name, engine.info.device, reason)
        except GnosisError as exc:
            current = self.status()
            message = f"{exc.message} {exc.hint or ''}".strip()
            self._set(EngineStatus(current.name, "failed", message))
            logger.error("engine %s could not load: %s", current.name, message)
        except Exception as exc:
            current = self.status()
            self._set(EngineStatus(current.name, "failed", f"{type(exc).__name__}: {exc}"))
            logger.exception("engine %s could not load", current.name)
        finally:
            self._settled.set()

    def _choose(self) -> tuple[str, str]:
        wanted = self.settings.engine
        if wanted == "auto":
            name, reason = choose_engine(self.settings, self.cache)
            return canonical(name), f"auto: {reason}"
        return canonical(wanted), f"GNOSIS_ENGINE={wanted}"

    def _load(self, name: str) -> StreamingEngine:
        name = canonical(name)
        with self._load_lock:
            engine = self._engines.get(name)
            if engine is not None:
                return engine
            if self._stopping.is_set():
                raise EngineUnavailableError("The service is stopping.")
            engine = self._build(name)
            engine.load()
            self._engines[name] = engine
            if self._metrics is not None:
                self._metrics.engine_loaded(engine.info)
            return engine

    def _build(self, name: str) -> StreamingEngine:
        if self._factory is not None:
            return streaming(self._factory(self.settings, self.cache, name))
        resolved = self._model_for_a_job() if name == "vlm" else None
        return engine_from_settings(self.settings, self.cache, name, resolved=resolved)

    def _model_for_a_job(self) -> ResolvedModel:
        """The VLM's snapshot: as the model service resolved it (no second lookup), else complete in the cache
        already. A job never downloads a model: warming is an operator's step, visible in /readyz."""
        if self.model.resolved is not None:
            return self.model.resolved
        try:
            return self.cache.resolve(self.settings.model_name, self.settings.model_revision, mode="offline")
        except CacheError as exc:
            raise EngineUnavailableError(
                f"The VLM's model {self.settings.model_name} is not ready in the cache, and a job never downloads "
                f"it: {exc.message}",
                hint="Warm it first (POST /api/v1/cache/warm, or `gnosis-ocr cache warm`), then upload again.",
            ) from exc

    # -- use ---------------------------------------------------------------------------------------------

    def get(self, name: str) -> StreamingEngine:
        """A loaded engine (``auto``: the default). Blocks while the default engine starts."""
        if name not in self.choices:
            raise ConfigError(f"Unknown engine {name!r}.", hint=f"Use one of: {', '.join(self.choices)}.")
        if name == "auto":
            while not self._settled.wait(0.2):
                if self._stopping.is_set():
                    raise EngineUnavailableError("The service is stopping.")
                waiting = self._model_failure()
                if waiting is not None:  # the model will not come by itself: fail the job, do not hang it
                    raise EngineUnavailableError(waiting, hint="GET /readyz says what the server needs.")
            status = self.status()
            if status.state != "ready" or status.name is None:
                raise EngineUnavailableError(
                    f"The default engine {status.name} is not available: {status.reason}",
                    hint="GET /readyz says what the server is waiting for.",
                )
            name = status.name
        return self._load(name)

    def _model_failure(self) -> str | None:
        """Why the default engine's model cannot arrive without an operator (None while it still may)."""
        status = self.status()
        if status.state != "waiting for the model":
            return None
        warm = self.model.warm_state()
        if warm.running or warm.error is None:
            return None
        return f"The default engine {status.name} is waiting for its model, which is not available: {warm.error}"

    def loaded(self, name: str) -> StreamingEngine | None:
        """The engine ``name`` if it is loaded already (never loads, never blocks on a load)."""
        return self._engines.get(canonical(name))

    def close(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._load_lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            try:
                engine.close()
            except Exception:
                logger.exception("closing engine %s", engine.info.name)
        current = self.status()
        self._set(EngineStatus(current.name, "stopped", "the service is stopping", current.device))
