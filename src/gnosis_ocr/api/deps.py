"""What routes get from the app: its context and the model service, as FastAPI dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry

from gnosis_ocr.api.errors import UnavailableError
from gnosis_ocr.api.metrics import HttpMetrics
from gnosis_ocr.api.model_service import ModelService
from gnosis_ocr.modelcache import CacheMetrics
from gnosis_ocr.settings import Settings


@dataclass
class AppContext:
    """Everything one app instance owns (no globals: two apps in one process do not share state)."""

    settings: Settings
    registry: CollectorRegistry
    cache_metrics: CacheMetrics
    http_metrics: HttpMetrics
    api_key_sha256: bytes | None
    model: ModelService | None = None  # set by the lifespan while the app runs


def app_context(request: Request) -> AppContext:
    ctx = request.app.state.gnosis
    if not isinstance(ctx, AppContext):  # pragma: no cover - create_app always sets it
        raise TypeError("app.state.gnosis is not set; build the app with create_app()")
    return ctx


def model_service(ctx: Annotated[AppContext, Depends(app_context)]) -> ModelService:
    if ctx.model is None:
        raise UnavailableError("The service is starting or stopping.", hint="Retry in a moment.")
    return ctx.model


Context = Annotated[AppContext, Depends(app_context)]
Model = Annotated[ModelService, Depends(model_service)]
