"""``/healthz`` (alive), ``/readyz`` (model resolved, with the cache state) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gnosis_ocr.api.auth import require_api_key
from gnosis_ocr.api.deps import Context, Engines, Jobs, Model
from gnosis_ocr.api.schemas import ERROR_RESPONSES, Health, ReadinessOut, readiness_out

probes = APIRouter(tags=["health"])
metrics = APIRouter(tags=["health"], dependencies=[Depends(require_api_key)])


@probes.get("/healthz", summary="The process is alive")
async def healthz() -> Health:
    """200 whenever the process answers; says nothing about the model (that is /readyz)."""
    return Health()


@probes.get(
    "/readyz",
    summary="The model is resolved and the service can take work",
    responses={503: {"model": ReadinessOut, "description": "Not ready; `reason` says why and what next."}},
)
async def readyz(model: Model, engines: Engines, jobs: Jobs, response: Response) -> ReadinessOut:
    """200 once the default engine is loaded (the VLM: from a complete cache, a hit at start-up or warmed), the
    job runner takes jobs and the job storage takes writes, else 503.

    The body carries the cache state and policy, the background warm's progress, and the reason in words.
    """
    out = readiness_out(model.readiness(), model, engines.status())
    if out.ready and not jobs.alive:
        out.ready, out.reason = False, "the job runner is not running: uploaded jobs would not start"
    elif out.ready and jobs.storage_error is not None:
        out.ready, out.reason = False, f"the job storage is failing ({jobs.storage_error}); saves are retried"
    response.status_code = 200 if out.ready else 503
    return out


@metrics.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, 401: ERROR_RESPONSES[401]},
)
async def prometheus_metrics(ctx: Context) -> Response:
    """Cache hits and misses, downloaded bytes, phase seconds, verify results, network attempts, lease waits,
    and HTTP requests by route template and status."""
    return Response(ctx.http_metrics.render(), media_type=CONTENT_TYPE_LATEST)
