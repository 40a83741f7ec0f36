"""``/api/v1/cache``: status, warm (in the background, one at a time) and full verify of the served model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Response

from gnosis_ocr.api.auth import require_api_key
from gnosis_ocr.api.deps import Model
from gnosis_ocr.api.schemas import (
    ERROR_RESPONSES,
    REVISION_MAX,
    REVISION_PATTERN,
    CacheReport,
    VerifyRequest,
    WarmAccepted,
    WarmRequest,
    cache_report,
    warm_out,
)

router = APIRouter(
    prefix="/api/v1/cache", tags=["cache"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES
)
STATUS_URL = "/api/v1/cache"


@router.get("", summary="Is the model complete in the cache?")
def cache_status(
    model: Model,
    revision: Annotated[
        str | None,
        Query(pattern=REVISION_PATTERN, max_length=REVISION_MAX, description="Default: the served revision."),
    ] = None,
) -> CacheReport:
    """The fast check (names and sizes against the ready-manifest, no network), as `gnosis-ocr cache status
    --json` prints it, plus the progress of the background warm."""
    return cache_report(model.status(revision), model)


@router.post("/warm", status_code=202, summary="Download what is missing, in the background")
def cache_warm(model: Model, response: Response, body: Annotated[WarmRequest | None, Body()] = None) -> WarmAccepted:
    """Starts a warm (or, with `repair`, a re-hash that fetches bad files again) and answers at once; GET
    /api/v1/cache and /readyz show its progress. One at a time (409 while one runs). 409 as well when the server
    must not download: GNOSIS_CACHE_MODE=offline or a strict network guard; a read-only cache is 409 too."""
    request = body or WarmRequest()
    state = model.start_warm(request.revision, refresh=request.refresh, repair=request.repair)
    response.headers["Location"] = STATUS_URL
    return WarmAccepted(
        model=model.model,
        revision=state.revision or model.revision,
        status_url=STATUS_URL,
        warm=warm_out(state),
    )


@router.post("/verify", summary="Re-hash every file (sha256) against the manifest")
def cache_verify(model: Model, body: Annotated[VerifyRequest | None, Body()] = None) -> CacheReport:
    """Runs in a worker thread and answers when done: time grows with the model's size (~1 GB/s). Faults in
    the served snapshot make /readyz 503 until a warm repairs them."""
    request = body or VerifyRequest()
    return cache_report(model.verify(request.revision), model)
