"""``create_app(settings)``: the FastAPI app. A factory; nothing here runs at import.

The lifespan builds the model cache (its metrics on the app's own registry) and starts resolving the configured
model in a background thread, so ``/healthz`` answers at once and ``/readyz`` turns 200 when the model is
resolved. Shutdown stops a running warm at its next chunk and waits a bounded time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from gnosis_ocr import __version__
from gnosis_ocr.api.auth import key_digests
from gnosis_ocr.api.deps import AppContext
from gnosis_ocr.api.engine_service import EngineService, Factory
from gnosis_ocr.api.guards import CloseUnreadBody, SiteGuard
from gnosis_ocr.api.handlers import install_error_handlers
from gnosis_ocr.api.job_views import JobViews
from gnosis_ocr.api.metrics import HttpMetrics, MetricsMiddleware
from gnosis_ocr.api.model_service import ModelService
from gnosis_ocr.api.routes import cache as cache_routes
from gnosis_ocr.api.routes import health, jobs, web
from gnosis_ocr.api.routes.docs import install_docs
from gnosis_ocr.api.schemas import job_out
from gnosis_ocr.jobs.metrics import JobMetrics
from gnosis_ocr.jobs.record import JobRecord
from gnosis_ocr.jobs.runner import JobRunner, RunnerOptions
from gnosis_ocr.jobs.store import JobStore
from gnosis_ocr.jobs.webhooks import WebhookOptions
from gnosis_ocr.modelcache import CacheMetrics, ModelCache, cache_from_settings
from gnosis_ocr.settings import Settings

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 3.0  # seconds the lifespan waits for a running warm or an engine to stop

DESCRIPTION = """Documents to Markdown with a vision-language OCR model, served from a model cache that loads with
zero network calls once it is complete.

When the server has an API key (GNOSIS_API_KEY), every route but `/healthz`, `/readyz` and these docs needs it as
`Authorization: Bearer <key>` or `X-API-Key: <key>`. Errors are `{"error": {"type", "message", "hint"}}`."""


def create_app(
    settings: Settings,
    *,
    cache: ModelCache | None = None,
    store: JobStore | None = None,
    engine_factory: Factory | None = None,
) -> FastAPI:
    """The app for ``settings``. ``cache``/``store``: use these instead of building them from the settings
    (tests hand in emulator-backed ones); ``engine_factory``: how engines are built (tests inject faults)."""
    registry = CollectorRegistry()
    if cache is None:
        cache_metrics = CacheMetrics(registry)
    else:
        cache_metrics = cache.metrics
        if cache_metrics.registry is not registry:
            registry.register(cache_metrics.registry)
    ctx = AppContext(
        settings=settings,
        registry=registry,
        cache_metrics=cache_metrics,
        http_metrics=HttpMetrics(registry),
        job_metrics=JobMetrics(registry),
        api_key_digests=key_digests(settings.api_key.get_secret_value() if settings.api_key else None),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        model_cache = cache if cache is not None else cache_from_settings(settings, cache_metrics)
        service = ModelService(
            model_cache, model=settings.model_name, revision=settings.model_revision, mode=settings.cache_mode
        )
        logger.info(
            "gnosis-ocr %s: model %s@%s, cache %s, mode %s, network guard %s, hub %s, API key %s",
            __version__,
            settings.model_name,
            settings.model_revision,
            model_cache.root,
            settings.cache_mode,
            "strict" if settings.strict_offline else "count",
            model_cache.endpoint,
            f"required ({len(ctx.api_key_digests)} key(s))" if ctx.api_key_digests else "off",
        )
        engines = EngineService(settings, model_cache, service, factory=engine_factory, metrics=ctx.job_metrics)
        job_store = store if store is not None else await anyio.to_thread.run_sync(JobStore, settings.storage)
        runner = JobRunner(
            job_store,
            engines,
            RunnerOptions(
                limits=settings.limits(),
                ttl_seconds=settings.job_ttl_seconds,
                stale_seconds=settings.job_stale_seconds,
                max_queued=settings.max_queued_jobs,
                max_running=settings.max_running_jobs,
                max_inflight=settings.max_inflight_pages,
                loop_guard=settings.vlm_loop_guard,
                loop_retries=settings.vlm_loop_retries,
                shutdown_grace=settings.shutdown_grace_seconds,
                webhooks=_webhook_options(settings),
            ),
            metrics=ctx.job_metrics,
            summary=_callback_summary,
        )
        logger.info("jobs: storage %s, instance %s", job_store.url, runner.instance)
        ctx.model, ctx.engines, ctx.jobs, ctx.views = service, engines, runner, JobViews(runner)
        engines.start()  # chooses and loads the default engine; starts the model service when that is the VLM
        await anyio.to_thread.run_sync(runner.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(runner.close)  # pages in flight get GNOSIS_SHUTDOWN_GRACE_SECONDS
            await anyio.to_thread.run_sync(engines.close, SHUTDOWN_TIMEOUT)
            await anyio.to_thread.run_sync(service.close, SHUTDOWN_TIMEOUT)

    app = FastAPI(
        title="gnosis-ocr",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,  # install_docs serves Swagger UI from the package, not a CDN
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.gnosis = ctx
    install_error_handlers(app)
    app.add_middleware(SiteGuard, allowed_origins=settings.allowed_origins, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(CloseUnreadBody)  # outside every refusal, so each one closes a connection with an unread body
    app.add_middleware(MetricsMiddleware, metrics=ctx.http_metrics)  # outermost: sees every final status
    app.include_router(health.probes)
    app.include_router(health.metrics)
    app.include_router(cache_routes.router)
    app.include_router(jobs.router)
    app.include_router(web.router)
    install_docs(app)
    return app


def _webhook_options(settings: Settings) -> WebhookOptions | None:
    if settings.webhook_secret is None:
        return None
    return WebhookOptions(
        secret=settings.webhook_secret.get_secret_value().encode(),
        allowed_hosts=frozenset(settings.webhook_allowed_hosts),
        max_attempts=settings.webhook_max_attempts,
        backoff=settings.webhook_backoff_seconds,
        timeout=settings.webhook_timeout_seconds,
    )


def _callback_summary(record: JobRecord) -> dict[str, object]:
    """A callback carries the job as GET /api/v1/jobs/{id} shows it, without its pages."""
    summary: dict[str, object] = job_out(record, pages=False).model_dump(mode="json", exclude={"pages"})
    return summary
