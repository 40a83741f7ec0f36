"""A service job as stored: one JSON document per job (``jobs/<id>/job.json``), the same shape the API returns.

A job is one upload of one or more documents. Every page it will process is listed from the start (``pages``,
numbered ``n`` = 1, 2, ... across documents in upload order), so progress has a known total and a resumed job
knows exactly which pages are left.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

JobStatus = Literal["queued", "processing", "done", "failed", "cancelled"]
DocumentStatus = Literal["queued", "processing", "done", "failed", "cancelled"]
PageStatus = Literal["pending", "done", "failed"]
CallbackState = Literal["pending", "delivered", "failed"]
FINISHED: frozenset[str] = frozenset({"done", "failed", "cancelled"})

JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{22}$"
_JOB_ID = re.compile(JOB_ID_PATTERN)


def new_job_id() -> str:
    """128 random bits, URL-safe base64 without padding: 22 characters."""
    return secrets.token_urlsafe(16)


def valid_job_id(value: str) -> bool:
    return bool(_JOB_ID.fullmatch(value))


def utcnow() -> datetime:
    return datetime.now(UTC)


class ErrorInfo(BaseModel):
    type: str
    message: str
    hint: str | None = None


class EngineUsed(BaseModel):
    requested: str = Field(description="What the upload asked for (auto: the server's default engine).")
    name: str
    backend: str | None = Field(default=None, description="How the VLM runs: vllm or transformers.")
    model: str | None = None
    revision: str | None = None
    profile: str | None = Field(default=None, description="The model profile: prompt, limits, output parsing.")
    device: str | None = None


class JobOptions(BaseModel):
    engine: str = "auto"
    pages: str | None = Field(default=None, description="Page selection applied to every document, e.g. 1-3,7.")
    text_layer: Literal["auto", "never", "only"] = "auto"


class DocumentEntry(BaseModel):
    index: int
    name: str = Field(description="The uploaded file's name, cleaned for display; never a path on the server.")
    size_bytes: int
    kind: str | None = Field(default=None, description="pdf, png, jpeg, tiff or webp.")
    page_count: int | None = Field(default=None, description="Pages in the document (not only those selected).")
    pages: list[int] = Field(default_factory=list, description="The selected page numbers inside the document.")
    status: DocumentStatus = "queued"
    error: ErrorInfo | None = None


class PageReading(BaseModel):
    """An earlier reading of a page, kept when the page was read again (POST .../pages/{n}/retry)."""

    status: PageStatus
    engine: str | None = Field(default=None, description="The engine that made this reading.")
    source: Literal["ocr", "text-layer"] | None = None
    markdown: str | None = None
    error: str | None = None
    seconds: float | None = None
    meta: dict[str, object] | None = None
    replaced_at: datetime = Field(description="When a new reading took this one's place.")


class PageEntry(BaseModel):
    n: int = Field(description="Page number across the whole job, 1-based.")
    document: int = Field(description="Index into documents.")
    page: int = Field(description="Page number inside its document.")
    status: PageStatus = "pending"
    source: Literal["ocr", "text-layer"] | None = None
    seconds: float | None = None
    error: str | None = None
    width: int | None = None
    height: int | None = None
    markdown: str | None = None
    image: bool = Field(default=False, description="A page image is stored (GET .../pages/{n}/image).")
    meta: dict[str, object] | None = Field(
        default=None,
        description="What the engine said about the page: e.g. new_tokens, truncated, language, rotation; and "
        "what the loop guard did: loops (why), attempts, fallback (text-layer or tesseract).",
    )
    engine: str | None = Field(default=None, description="The engine that read the page (null: not read yet).")
    rerun: str | None = Field(
        default=None, description="While the page is being read again: the engine asked for (auto: the job's)."
    )
    history: list[PageReading] = Field(default_factory=list, description="Earlier readings, oldest first.")


class CallbackStatus(BaseModel):
    """Where the job's callback (``callback_url``) stands: one delivery each time the job ends."""

    state: CallbackState = Field(description="pending (being sent or retried), delivered, failed (gave up).")
    delivery: int = Field(description="Which end of the job this is: 1, then 2 after a page was read again, ...")
    attempts: int = Field(default=0, description="POSTs made for this delivery.")
    last_status: int | None = Field(default=None, description="The receiver's last HTTP status.")
    error: str | None = Field(default=None, description="Why the last attempt did not deliver.")
    at: datetime | None = Field(default=None, description="When the state last changed.")


class Progress(BaseModel):
    pages_total: int
    pages_done: int
    pages_failed: int
    fraction: float


class JobRecord(BaseModel):
    id: str
    status: JobStatus = "queued"
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    engine: EngineUsed | None = None
    options: JobOptions = Field(default_factory=JobOptions)
    error: ErrorInfo | None = None
    documents: list[DocumentEntry] = Field(default_factory=list)
    pages: list[PageEntry] = Field(default_factory=list)
    callback: CallbackStatus | None = None
    # bookkeeping, not shown by the API
    callback_url: str | None = None  # may carry the receiver's token in its query: never logged whole
    owner: str | None = None
    attempts: int = 0

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def progress(self) -> Progress:
        total = len(self.pages)
        done = sum(1 for p in self.pages if p.status != "pending")
        failed = sum(1 for p in self.pages if p.status == "failed")
        return Progress(
            pages_total=total, pages_done=done, pages_failed=failed, fraction=round(done / total, 3) if total else 0.0
        )

    def page(self, n: int) -> PageEntry | None:
        return self.pages[n - 1] if 1 <= n <= len(self.pages) else None

    def document_pages(self, index: int) -> list[PageEntry]:
        return [p for p in self.pages if p.document == index]

    @property
    def rereading(self) -> bool:
        """Some pages wait to be read again: this run reads those only (the other pending pages stay)."""
        return any(p.rerun is not None for p in self.pages)
