"""What routes get from the app: its context and the model service, as FastAPI dependencies."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Request
from prometheus_client import CollectorRegistry

from gnosis_ocr.api.engine_service import EngineService
from gnosis_ocr.api.errors import UnavailableError
from gnosis_ocr.api.job_views import JobViews
from gnosis_ocr.api.metrics import HttpMetrics
from gnosis_ocr.api.model_service import ModelService
from gnosis_ocr.jobs.metrics import JobMetrics
from gnosis_ocr.jobs.runner import JobRunner
from gnosis_ocr.modelcache import CacheMetrics
from gnosis_ocr.settings import Settings

T = TypeVar("T")


@dataclass
class AppContext:
    """Everything one app instance owns (no globals: two apps in one process do not share state)."""

    settings: Settings
    registry: CollectorRegistry
    cache_metrics: CacheMetrics
    http_metrics: HttpMetrics
    api_key_digests: tuple[bytes, ...]  # empty: no key needed
    job_metrics: JobMetrics
    model: ModelService | None = None  # these three are set by the lifespan while the app runs
    engines: EngineService | None = None
    jobs: JobRunner | None = None
    views: JobViews | None = None
    # upload checks (open each document in an open worker) waiting at once; the rest wait here, not in threads
    document_checks: anyio.CapacityLimiter = field(init=False)
    # searchable PDFs being built or sent (result.pdf): taken without waiting, given back when the body is sent
    pdf_builds: threading.BoundedSemaphore = field(init=False)

    def __post_init__(self) -> None:
        self.document_checks = anyio.CapacityLimiter(max(1, self.settings.render_workers))
        self.pdf_builds = threading.BoundedSemaphore(self.settings.max_pdf_builds)


def app_context(request: Request) -> AppContext:
    ctx = request.app.state.gnosis
    if not isinstance(ctx, AppContext):  # pragma: no cover - create_app always sets it
        raise TypeError("app.state.gnosis is not set; build the app with create_app()")
    return ctx


def _started(value: T | None) -> T:
    """The lifespan's object, or 503 while the app is starting or stopping."""
    if value is None:
        raise UnavailableError("The service is starting or stopping.", hint="Retry in a moment.")
    return value


def model_service(ctx: Annotated[AppContext, Depends(app_context)]) -> ModelService:
    return _started(ctx.model)


def job_runner(ctx: Annotated[AppContext, Depends(app_context)]) -> JobRunner:
    return _started(ctx.jobs)


def job_views(ctx: Annotated[AppContext, Depends(app_context)]) -> JobViews:
    return _started(ctx.views)


def engine_service(ctx: Annotated[AppContext, Depends(app_context)]) -> EngineService:
    return _started(ctx.engines)


Context = Annotated[AppContext, Depends(app_context)]
Model = Annotated[ModelService, Depends(model_service)]
Jobs = Annotated[JobRunner, Depends(job_runner)]
Views = Annotated[JobViews, Depends(job_views)]
Engines = Annotated[EngineService, Depends(engine_service)]
