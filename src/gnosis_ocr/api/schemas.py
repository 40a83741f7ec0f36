"""The JSON the API speaks, as pydantic models, and the functions that build them from the core's dataclasses."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gnosis_ocr.api.engine_service import EngineStatus
from gnosis_ocr.api.model_service import ModelService, Readiness, WarmState
from gnosis_ocr.jobs.record import (
    CallbackStatus,
    DocumentEntry,
    EngineUsed,
    ErrorInfo,
    JobOptions,
    JobRecord,
    JobStatus,
    PageEntry,
    Progress,
)
from gnosis_ocr.modelcache import Fault, SnapshotReport
from gnosis_ocr.settings import CacheMode

# Branch, tag or commit as the hub names them: "/"-separated segments that start with a letter or digit, so never
# "." or ".."; the cache's own path checks still apply behind this.
REVISION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$"
REVISION_MAX = 200


class ErrorDetail(BaseModel):
    type: str = Field(description="Error class, e.g. ModelNotCachedError.")
    message: str = Field(description="What happened and why.")
    hint: str | None = Field(default=None, description="What to do next.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorResponse, "description": "GNOSIS_API_KEY is set and the request lacks it."},
    409: {"model": ErrorResponse, "description": "Busy, or not allowed by the server's configuration."},
    422: {"model": ErrorResponse, "description": "The request is not valid."},
    503: {"model": ErrorResponse, "description": "The service is starting, stopping or lacks the model."},
}


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class FaultOut(BaseModel):
    path: str
    kind: str = Field(description="missing, size, hash, not_regular, unexpected or manifest.")
    detail: str


class WarmOut(BaseModel):
    running: bool
    kind: Literal["startup", "warm", "repair"] | None = Field(
        description="startup: the resolve at start-up (warms when GNOSIS_CACHE_MODE allows); warm or repair: "
        "started by POST /api/v1/cache/warm."
    )
    revision: str | None
    bytes_done: int
    bytes_total: int
    error: str | None = Field(description="Why the last operation failed, with the next step.")
    started_at: datetime | None
    finished_at: datetime | None


class CacheBrief(BaseModel):
    state: Literal["complete", "incomplete", "absent", "unknown"]
    root: str
    mode: CacheMode
    faults: list[FaultOut]


class EngineOut(BaseModel):
    name: str | None = Field(description="The default engine (what `engine=auto` uploads get); null while chosen.")
    state: str = Field(description="choosing, waiting for the model, loading, ready, failed or stopped.")
    reason: str = Field(description="Why this engine (auto picks by GPU and cache), or why it is not ready.")
    device: str | None = None
    backend: str | None = Field(default=None, description="How the VLM runs once loaded: vllm or transformers.")
    model: str | None = Field(default=None, description="The model it reads with (tesseract: its languages).")
    revision: str | None = Field(default=None, description="The model's commit (tesseract: its version).")
    profile: str | None = Field(default=None, description="The VLM's model profile (gnosis-ocr models lists them).")
    endpoint: str | None = Field(default=None, description="The remote engine's model server (GNOSIS_VLM_URL).")


class ReadinessOut(BaseModel):
    ready: bool
    model: str
    revision: str
    commit: str | None = Field(description="The resolved commit, or the cached one while not resolved.")
    cache: CacheBrief
    warm: WarmOut
    engine: EngineOut
    reason: str


class CacheReport(BaseModel):
    """What `gnosis-ocr cache status --json` prints, plus the background warm."""

    model: str
    revision: str
    commit: str | None
    state: Literal["complete", "incomplete", "absent"]
    check: Literal["fast", "full"]
    path: str | None
    files: int | None
    size_bytes: int
    expected_bytes: int | None
    faults: list[FaultOut]
    leftovers: list[str]
    stale_lease: str | None = Field(default=None, description="A writer's lease that expired (prune removes it).")
    fix: str | None = Field(default=None, description="The command that fixes what this report found, if any.")
    cache_root: str
    policy: CacheMode
    warm: WarmOut


class WarmRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revision: str | None = Field(
        default=None,
        pattern=REVISION_PATTERN,
        max_length=REVISION_MAX,
        description="Branch, tag or commit. Default: the served one.",
    )
    refresh: bool = Field(
        default=False, description="Ask the hub for a newer commit even when the cached one is complete."
    )
    repair: bool = Field(default=False, description="Re-hash every file and fetch again the bad ones.")


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revision: str | None = Field(default=None, pattern=REVISION_PATTERN, max_length=REVISION_MAX)


class WarmAccepted(BaseModel):
    model: str
    revision: str
    status_url: str
    warm: WarmOut


def _time(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


def warm_out(state: WarmState) -> WarmOut:
    return WarmOut(
        running=state.running,
        kind=state.kind,
        revision=state.revision,
        bytes_done=state.bytes_done,
        bytes_total=state.bytes_total,
        error=state.error,
        started_at=_time(state.started_at),
        finished_at=_time(state.finished_at),
    )


def faults_out(faults: tuple[Fault, ...]) -> list[FaultOut]:
    return [FaultOut(path=f.path, kind=f.kind, detail=f.detail) for f in faults]


def cache_report(report: SnapshotReport, service: ModelService) -> CacheReport:
    return CacheReport.model_validate(
        {
            **report.to_dict(),
            "cache_root": str(service.cache.root),
            "policy": service.mode,
            "warm": warm_out(service.warm_state()),
        }
    )


def readiness_out(readiness: Readiness, service: ModelService, engine: EngineStatus) -> ReadinessOut:
    """Ready when the default engine is loaded and, if that engine is the VLM, its model is resolved and sound."""
    uses_model = service.started
    if uses_model and not readiness.ready:
        ready, reason = False, readiness.reason
    elif not engine.ready:
        ready, reason = False, f"engine {engine.name or '(choosing)'}: {engine.state}: {engine.reason}"
    elif uses_model:
        ready, reason = True, f"engine {engine.name} is loaded on {engine.device}; {readiness.reason}"
    elif engine.info is not None and engine.info.endpoint:  # remote: what its server answered at start
        commit = f" (commit {engine.info.revision[:7]})" if engine.info.revision else ""
        found = f"{engine.info.endpoint} serves {engine.info.model}{commit}"
        ready, reason = True, f"engine {engine.name} is loaded ({engine.reason}): {found}"
    else:
        ready, reason = True, f"engine {engine.name} is loaded ({engine.reason}); the VLM model is not in use"
    report = readiness.report
    resolved = readiness.resolved
    return ReadinessOut(
        ready=ready,
        model=service.model,
        revision=service.revision,
        commit=resolved.commit if resolved else (report.commit if report else None),
        cache=CacheBrief(
            state=report.state if report else "unknown",
            root=str(service.cache.root),
            mode=service.mode,
            faults=faults_out(report.faults) if report else [],
        ),
        warm=warm_out(readiness.warm),
        engine=EngineOut(
            name=engine.name,
            state=engine.state,
            reason=engine.reason,
            device=engine.device,
            backend=engine.info.backend if engine.info else None,
            model=engine.info.model if engine.info else None,
            revision=engine.info.revision if engine.info else None,
            profile=engine.info.profile if engine.info else None,
            endpoint=engine.info.endpoint if engine.info else None,
        ),
        reason=reason,
    )


# -- jobs ---------------------------------------------------------------------------------------------------


class JobUrls(BaseModel):
    self: str
    events: str
    result_md: str
    result_json: str
    result_zip: str
    result_pdf: str
    cancel: str


class JobOut(BaseModel):
    """A job: its status, its documents, and every page it processes (with text unless ``text=false``)."""

    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    engine: EngineUsed | None = Field(description="The engine that runs the job; null until it starts.")
    options: JobOptions
    error: ErrorInfo | None = Field(description="Why the whole job failed or stopped.")
    progress: Progress
    documents: list[DocumentEntry]
    pages: list[PageEntry] | None = Field(description="Every page of the job; left out of some events.")
    callback: CallbackStatus | None = Field(
        default=None,
        description="The callback's delivery, when the upload gave a callback_url (the URL itself is never shown).",
    )
    urls: JobUrls


class PageOut(PageEntry):
    html: str | None = Field(
        default=None, description="The Markdown rendered to sanitised HTML (tables, MathML); null until done."
    )
    image_url: str | None = Field(default=None, description="The page image, once stored.")


def job_urls(job_id: str) -> JobUrls:
    base = f"/api/v1/jobs/{job_id}"
    return JobUrls(
        self=base,
        events=f"{base}/events",
        result_md=f"{base}/result.md",
        result_json=f"{base}/result.json",
        result_zip=f"{base}/result.zip",
        result_pdf=f"{base}/result.pdf",
        cancel=f"{base}/cancel",
    )


def job_out(record: JobRecord, *, text: bool = True, pages: bool = True) -> JobOut:
    entries: list[PageEntry] | None = None
    if pages:
        entries = record.pages if text else [p.model_copy(update={"markdown": None}) for p in record.pages]
    return JobOut(
        id=record.id,
        status=record.status,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        engine=record.engine,
        options=record.options,
        error=record.error,
        progress=record.progress(),
        documents=record.documents,
        pages=entries,
        callback=record.callback,
        urls=job_urls(record.id),
    )
