"""``/api/v1/jobs``: upload documents, follow their pages, fetch results, cancel, delete (docs/API.md)."""

from __future__ import annotations

import asyncio
import errno
import html
import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any
from urllib.parse import quote

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException

from gnosis_ocr.api.auth import require_api_key
from gnosis_ocr.api.deps import Context, Jobs, Views
from gnosis_ocr.api.errors import BusyError, ConflictError, InvalidRequestError, StorageFullError
from gnosis_ocr.api.job_views import JobViews
from gnosis_ocr.api.render import markdown_to_html
from gnosis_ocr.api.schemas import ERROR_RESPONSES, ErrorResponse, JobOut, PageOut, job_out
from gnosis_ocr.api.uploads import (
    BadUploadError,
    ReceivedUpload,
    UploadLimits,
    UploadTooLargeError,
    receive_upload,
)
from gnosis_ocr.documents.model import DocumentLimits
from gnosis_ocr.documents.pages import parse_page_selection
from gnosis_ocr.documents.render import open_document
from gnosis_ocr.errors import ConfigError, JobNotFoundError
from gnosis_ocr.jobs.export import ascii_filename, document_stems, iter_zip, job_markdown
from gnosis_ocr.jobs.record import DocumentEntry, JobOptions, JobRecord, PageEntry, new_job_id, valid_job_id
from gnosis_ocr.jobs.searchable import PDF_MEDIA_TYPE, job_pages, pdf_file
from gnosis_ocr.jobs.store import JobStore
from gnosis_ocr.jobs.webhooks import check_callback_url

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"], dependencies=[Depends(require_api_key)])

PING_SECONDS = 15.0
POLL_SECONDS = 1.0
TEXT_LAYER_CHOICES = ("auto", "never", "only")

_JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: ERROR_RESPONSES[401],
    404: {"model": ErrorResponse, "description": "No such job (or it was deleted)."},
    422: ERROR_RESPONSES[422],
}

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "additionalProperties": False,
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "One document per part: PDF, PNG, JPEG, TIFF or WebP.",
                        },
                        "engine": {
                            "type": "string",
                            "enum": ["auto", "vlm", "nanonets", "tesseract", "layout"],
                            "default": "auto",
                        },
                        "pages": {"type": "string", "description": "Page selection for every document, e.g. 1-3,7."},
                        "text_layer": {"type": "string", "enum": list(TEXT_LAYER_CHOICES), "default": "auto"},
                        "callback_url": {
                            "type": "string",
                            "format": "uri",
                            "maxLength": 2048,
                            "description": "POSTed the job's summary, signed, when the job ends (docs/API.md).",
                        },
                    },
                },
                "encoding": {"file": {"contentType": "application/pdf, image/*"}},
            }
        },
    }
}


def job_id_param(job_id: Annotated[str, PathParam(description="The id POST /api/v1/jobs returned.")]) -> str:
    if not valid_job_id(job_id):
        raise JobNotFoundError(
            f"{job_id[:40]!r} is not a job id (22 URL-safe characters).", hint="Use the id POST /api/v1/jobs returned."
        )
    return job_id


JobId = Annotated[str, Depends(job_id_param)]


# -- create ------------------------------------------------------------------------------------------------


@router.post(
    "",
    status_code=202,
    summary="Upload documents and start a job",
    openapi_extra=UPLOAD_BODY,
    responses={
        400: {"model": ErrorResponse, "description": "Not a multipart upload with `file` parts."},
        401: ERROR_RESPONSES[401],
        413: {"model": ErrorResponse, "description": "Over a size, file-count, page or pixel limit."},
        415: {"model": ErrorResponse, "description": "Not a PDF, PNG, JPEG, TIFF or WebP."},
        422: {"model": ErrorResponse, "description": "Encrypted, broken or empty document; bad option."},
        503: {"model": ErrorResponse, "description": "Queue full (Retry-After) or no engine."},
        507: {"model": ErrorResponse, "description": "The job storage is full (Retry-After); nothing was kept."},
    },
)
async def create_job(request: Request, ctx: Context, runner: Jobs) -> JobOut:
    """Streams the files to storage (never whole into memory), checks each document, then queues the job.

    A refused file creates no job and leaves nothing stored."""
    settings = ctx.settings
    runner.check_capacity()  # before reading the body: no point receiving 1 GiB to refuse it
    limits = UploadLimits(
        max_files=settings.max_files, max_file_bytes=settings.max_bytes, max_total_bytes=settings.max_upload_bytes
    )
    record: JobRecord | None = None
    try:
        with runner.store.staging() as staging:
            upload = await receive_upload(request, staging, limits)
            options = _options(upload, ctx)
            callback_url = await _callback_url(upload, ctx)
            record = await anyio.to_thread.run_sync(
                _new_record, upload, options, settings.limits(), limiter=ctx.document_checks
            )
            record.callback_url = callback_url
            await anyio.to_thread.run_sync(_store_inputs, runner.store, record, upload)
        submitted = runner.submit(record)
    except BaseException as exc:
        if record is not None:  # inputs stored, no job: remove them
            await anyio.to_thread.run_sync(runner.store.delete, record.id)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFullError(
                "The job storage has no space left; nothing of this upload was kept.",
                hint="Retry later; an operator frees space or raises the volume's size (GNOSIS_STORAGE).",
            ) from exc
        raise
    return job_out(submitted)


def _options(upload: ReceivedUpload, ctx: Context) -> JobOptions:
    fields = upload.fields
    engine = fields.get("engine", "auto").strip() or "auto"
    choices = ctx.engines.choices if ctx.engines is not None else ("auto",)
    if engine not in choices:
        raise InvalidRequestError(f"Unknown engine {engine[:40]!r}.", hint=f"Use one of: {', '.join(choices)}.")
    text_layer = fields.get("text_layer", "auto").strip() or "auto"
    if text_layer not in TEXT_LAYER_CHOICES:
        raise InvalidRequestError(
            f"text_layer must be one of {', '.join(TEXT_LAYER_CHOICES)}, not {text_layer[:40]!r}.",
            hint="auto uses a PDF's own text where it is usable and the engine is not the VLM.",
        )
    pages = fields.get("pages", "").strip() or None
    return JobOptions(engine=engine, pages=pages, text_layer=text_layer)  # type: ignore[arg-type]


async def _callback_url(upload: ReceivedUpload, ctx: Context) -> str | None:
    """The upload's callback_url once checked (scheme, credentials, public address; DNS in a thread)."""
    url = upload.fields.get("callback_url", "").strip()
    if not url:
        return None
    if ctx.settings.webhook_secret is None:
        raise InvalidRequestError(
            "This server sends no callbacks: callback_url needs GNOSIS_WEBHOOK_SECRET, which signs them.",
            hint="Leave callback_url out and follow the job (GET .../events), or ask the operator to set "
            "GNOSIS_WEBHOOK_SECRET.",
        )
    allowed = frozenset(ctx.settings.webhook_allowed_hosts)
    return await anyio.to_thread.run_sync(check_callback_url, url, allowed)


def _new_record(upload: ReceivedUpload, options: JobOptions, limits: DocumentLimits) -> JobRecord:
    """Open every document (type, encryption, damage, page and pixel limits) and list the pages to process."""
    if not upload.files:
        raise InvalidRequestError("The upload has no file.", hint="Send each document as a `file` part.")
    documents: list[DocumentEntry] = []
    pages: list[PageEntry] = []
    for item in upload.files:
        with open_document(item.path, limits=limits, name=item.name) as document:
            kind, count = document.kind, document.page_count
        try:
            numbers = parse_page_selection(options.pages, count)
        except ConfigError as exc:
            raise InvalidRequestError(f"{item.name}: {exc.message}", hint=exc.hint) from exc
        documents.append(
            DocumentEntry(
                index=item.index, name=item.name, size_bytes=item.size, kind=kind, page_count=count, pages=numbers
            )
        )
        offset = len(pages)
        pages.extend(PageEntry(n=offset + i + 1, document=item.index, page=p) for i, p in enumerate(numbers))
    return JobRecord(id=new_job_id(), options=options, documents=documents, pages=pages)


def _store_inputs(store: JobStore, record: JobRecord, upload: ReceivedUpload) -> None:
    try:
        for item in upload.files:
            store.put_input(record.id, item.index, item.path)
    except BaseException:
        store.delete(record.id)
        raise


# -- read --------------------------------------------------------------------------------------------------


async def _snapshot(views: JobViews, job_id: str) -> JobRecord:
    """The job, shared between readers (never modify it); from memory on the loop, from the store in a thread."""
    if views.held(job_id):
        return views.record(job_id)
    return await anyio.to_thread.run_sync(views.record, job_id)


@router.get(
    "/{job_id}",
    summary="A job's status, pages and partial results",
    response_model=JobOut,
    responses=_JOB_RESPONSES,
)
async def get_job(
    job_id: JobId,
    views: Views,
    text: Annotated[bool, Query(description="Include each page's Markdown (false: lighter polling).")] = True,
) -> Response:
    """One JSON body per job version is built and shared, so polling an unchanged job costs next to nothing."""
    if views.held(job_id):
        body = views.json(job_id, text=text)
    else:
        body = await anyio.to_thread.run_sync(lambda: views.json(job_id, text=text))
    return Response(body, media_type="application/json")


def _sse(event: str, data: str, seq: int) -> bytes:
    return f"event: {event}\nid: {seq}\ndata: {data}\n\n".encode()


def _page_key(page: PageEntry) -> tuple[object, ...]:
    """A finished page is sent again when it is marked for a re-reading and when the new reading lands."""
    return (page.status, page.rerun, len(page.history))


def _state_key(record: JobRecord) -> tuple[object, ...]:
    return (record.status, record.engine is not None, tuple(d.status for d in record.documents))


@router.get(
    "/{job_id}/events",
    summary="Live progress as Server-Sent Events",
    response_class=StreamingResponse,
    responses={**_JOB_RESPONSES, 200: {"content": {"text/event-stream": {}}, "description": "job, page, end events"}},
)
async def job_events(job_id: JobId, runner: Jobs, views: Views) -> StreamingResponse:
    """`job` (the whole job) first, then `page` for each finished page (again when it is read again) and `job`
    (without pages) when the status changes; `end` when the job has finished, then the stream closes."""
    first = await _snapshot(views, job_id)

    async def stream() -> AsyncIterator[bytes]:
        record = first
        seq = 1
        yield _sse("job", job_out(record).model_dump_json(), seq)
        sent = {p.n: _page_key(p) for p in record.pages if p.status != "pending"}
        key = _state_key(record)
        event: asyncio.Event | None = runner.watch(job_id) if runner.owns(job_id) else None
        try:
            while not record.finished:
                if event is not None:
                    try:
                        await asyncio.wait_for(event.wait(), PING_SECONDS)
                    except TimeoutError:
                        yield b": ping\n\n"
                        continue
                    event.clear()
                else:
                    await asyncio.sleep(POLL_SECONDS)
                try:
                    record = await _snapshot(views, job_id)
                except JobNotFoundError:
                    seq += 1
                    yield _sse("end", json.dumps({"status": "deleted"}), seq)
                    return
                for page in record.pages:
                    if page.status != "pending" and sent.get(page.n) != _page_key(page):
                        sent[page.n] = _page_key(page)
                        seq += 1
                        yield _sse("page", page.model_dump_json(), seq)
                if _state_key(record) != key:
                    key = _state_key(record)
                    seq += 1
                    yield _sse("job", job_out(record, pages=False).model_dump_json(), seq)
                if event is None and runner.owns(job_id):
                    event = runner.watch(job_id)
            seq += 1
            yield _sse("end", json.dumps({"status": record.status}), seq)
        finally:
            if event is not None:
                runner.unwatch(job_id, event)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


def _disposition(name: str) -> str:
    """RFC 6266: the name in full as UTF-8 in ``filename*`` (RFC 5987), and an ASCII ``filename`` for old clients."""
    stem, _, ext = name.rpartition(".")
    fallback = f"{ascii_filename(stem, 'result')}.{ascii_filename(ext, 'bin')}"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


_NOT_IN_FILE_NAMES = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]+')  # control characters and what Windows refuses


def _result_name(record: JobRecord, ext: str) -> str:
    """The document's own name (Unicode kept: ``报告📄.png`` gives ``报告📄.md``) for a one-document job."""
    stems = document_stems(record)
    if len(stems) != 1:
        return f"gnosis-{record.id}.{ext}"
    name = record.documents[0].name  # safe_display_name made it: one path component, printable
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{_NOT_IN_FILE_NAMES.sub('_', stem).strip(' ._') or stems[0]}.{ext}"


@router.get(
    "/{job_id}/result.md",
    summary="The Markdown of every page so far",
    response_class=Response,
    responses={**_JOB_RESPONSES, 200: {"content": {"text/markdown": {}}}},
)
async def result_md(job_id: JobId, views: Views) -> Response:
    record = await _snapshot(views, job_id)
    headers = {"X-Job-Status": record.status, "Content-Disposition": _disposition(_result_name(record, "md"))}
    return Response(job_markdown(record), media_type="text/markdown; charset=utf-8", headers=headers)


@router.get("/{job_id}/result.json", summary="The job with every page's text", responses=_JOB_RESPONSES)
async def result_json(job_id: JobId, views: Views, response: Response) -> JobOut:
    record = await _snapshot(views, job_id)
    response.headers["X-Job-Status"] = record.status
    response.headers["Content-Disposition"] = _disposition(_result_name(record, "json"))
    return job_out(record)


@router.get(
    "/{job_id}/result.zip",
    summary="Markdown per document, the JSON, and the page images",
    response_class=StreamingResponse,
    responses={**_JOB_RESPONSES, 200: {"content": {"application/zip": {}}}},
)
async def result_zip(job_id: JobId, runner: Jobs, views: Views) -> StreamingResponse:
    """Made as it is sent (chunked): one page image in memory at a time, nothing spooled to disk."""
    record = await _snapshot(views, job_id)
    body = job_out(record).model_dump_json(indent=2).encode()
    headers = {"X-Job-Status": record.status, "Content-Disposition": _disposition(_result_name(record, "zip"))}
    # a plain iterator: Starlette runs it in a worker thread, so the store's reads never block the event loop
    return StreamingResponse(iter_zip(record, runner.store, body), media_type="application/zip", headers=headers)


PDF_CHUNK = 1024 * 1024


@router.get(
    "/{job_id}/result.pdf",
    summary="A searchable PDF: the page images with their text as an invisible layer",
    response_class=StreamingResponse,
    responses={
        **_JOB_RESPONSES,
        200: {"content": {PDF_MEDIA_TYPE: {}}},
        409: {"model": ErrorResponse, "description": "No page is rendered or read yet."},
        503: {"model": ErrorResponse, "description": "GNOSIS_MAX_PDF_BUILDS PDFs are being built already."},
    },
)
async def result_pdf(
    job_id: JobId,
    runner: Jobs,
    views: Views,
    ctx: Context,
    document: Annotated[
        int | None, Query(ge=0, le=10_000, description="Only this document (its index in documents).")
    ] = None,
) -> StreamingResponse:
    """One PDF page per job page, in order (documents one after another), so PDF page n is job page n. Built into a
    temporary file (page images one at a time, docs/API.md), then sent in chunks; while the job runs, pages not
    read yet are their image alone (or blank), and X-Job-Status says so."""
    record = await _snapshot(views, job_id)
    if document is not None and not any(d.index == document for d in record.documents):
        raise JobNotFoundError(
            f"Job {job_id} has no document {document}: it has {len(record.documents)}.",
            hint="Documents are numbered from 0, in upload order (documents[].index).",
        )
    pages = [p for p in record.pages if document is None or p.document == document]
    if not any(p.image or p.status == "done" for p in pages):
        what = "has no pages" if not pages else "has no page rendered or read yet"
        raise ConflictError(
            f"Job {job_id} {what}: there is nothing to put in a PDF (status {record.status}).",
            hint="Pages appear as the job runs: retry when GET /api/v1/jobs/{id} shows a page done."
            if not record.finished
            else "The job's documents could not be read; see its error.",
        )
    name = _result_name(record, "pdf")
    if document is not None and len(record.documents) > 1:
        stem = document_stems(record)[[d.index for d in record.documents].index(document)]
        name = f"{stem}.pdf"
    if not ctx.pdf_builds.acquire(blocking=False):  # each build takes a core, memory and a file until it is sent
        raise BusyError(
            f"{ctx.settings.max_pdf_builds} searchable PDF(s) are being built or sent already.",
            hint="Retry in a few seconds (Retry-After); GNOSIS_MAX_PDF_BUILDS sets how many at once.",
        )
    try:
        spool = runner.store.staging_root
        opened = pdf_file(job_pages(record, runner.store, document), spool_dir=spool)
        out, _ = await anyio.to_thread.run_sync(opened.__enter__)
    except BaseException:
        ctx.pdf_builds.release()
        raise

    def chunks() -> Iterator[bytes]:  # a plain iterator: Starlette reads it in a worker thread
        try:
            while chunk := out.read(PDF_CHUNK):
                yield chunk
        finally:
            opened.__exit__(None, None, None)
            ctx.pdf_builds.release()

    size = os.fstat(out.fileno()).st_size
    headers = {
        "X-Job-Status": record.status,
        "Content-Disposition": _disposition(name),
        "Content-Length": str(size),
    }
    return StreamingResponse(chunks(), media_type=PDF_MEDIA_TYPE, headers=headers)


def _page(record: JobRecord, n: int) -> PageEntry:
    page = record.page(n)
    if page is None:
        raise JobNotFoundError(
            f"Job {record.id} has no page {n}: it has {len(record.pages)}.", hint="Pages are numbered from 1."
        )
    return page


RENDER_LIMIT = 256 * 1024  # characters; longer pages are shown as plain text (rendering is ~1-10 s per MB)


def _page_html(markdown: str) -> str:
    if len(markdown) > RENDER_LIMIT:
        return f'<pre class="ocr-plain">{html.escape(markdown)}</pre>'
    return markdown_to_html(markdown)


PageNumber = Annotated[int, PathParam(ge=1, le=1_000_000, description="Page number across the job, from 1.")]


@router.get("/{job_id}/pages/{n}", summary="One page: Markdown and sanitised HTML", responses=_JOB_RESPONSES)
async def get_page(job_id: JobId, n: PageNumber, views: Views) -> PageOut:
    record = await _snapshot(views, job_id)
    page = _page(record, n)
    html = await anyio.to_thread.run_sync(_page_html, page.markdown) if page.markdown else None
    image_url = f"/api/v1/jobs/{job_id}/pages/{n}/image" if page.image else None
    return PageOut(**page.model_dump(), html=html, image_url=image_url)


@router.get(
    "/{job_id}/pages/{n}/image",
    summary="The page image the engine saw",
    response_class=Response,
    responses={**_JOB_RESPONSES, 200: {"content": {"image/webp": {}}}},
)
async def get_page_image(job_id: JobId, n: PageNumber, runner: Jobs, views: Views) -> Response:
    """The page as rendered, scaled for display (WebP, at most 2 MP; the engine read the full render)."""
    record = await _snapshot(views, job_id)
    page = _page(record, n)
    image = await anyio.to_thread.run_sync(runner.store.image, job_id, n) if page.image else None
    if image is None:
        raise JobNotFoundError(
            f"Page {n} of job {job_id} has no image yet.", hint="Images appear as pages render; retry shortly."
        )
    data, media_type = image
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})


# -- change ------------------------------------------------------------------------------------------------


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    summary="Stop a job at its next page",
    responses={**_JOB_RESPONSES, 409: {"model": ErrorResponse, "description": "Already finished."}},
)
async def cancel_job(job_id: JobId, runner: Jobs) -> JobOut:
    return job_out(await anyio.to_thread.run_sync(runner.cancel, job_id), text=False)


RETRY_BODY_BYTES = 4096
RETRY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {
            media: {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "engine": {
                            "type": "string",
                            "default": "auto",
                            "description": "The engine to read it with; auto: the job's own.",
                        }
                    },
                }
            }
            for media in ("application/json", "application/x-www-form-urlencoded", "multipart/form-data")
        },
    }
}


@router.post(
    "/{job_id}/pages/{n}/retry",
    status_code=202,
    summary="Read one page again",
    openapi_extra=RETRY_BODY,
    responses={
        **_JOB_RESPONSES,
        409: {
            "model": ErrorResponse,
            "description": "The job still runs or was cancelled; the page is not read yet or is being read again.",
        },
        400: {"model": ErrorResponse, "description": "A malformed form body."},
        413: {"model": ErrorResponse, "description": f"A body over {RETRY_BODY_BYTES} bytes."},
    },
)
async def retry_page(job_id: JobId, n: PageNumber, request: Request, ctx: Context, runner: Jobs) -> JobOut:
    """The page is read again by the job's runner (the same engine slots as every page, never its text layer); its
    reading stays until the new one takes its place and then moves to the page's `history`. The job goes back to
    `queued`, then ends again as `done` (or `failed` when every document failed): a `page` event carries the new
    reading, and the callback, if any, is sent again."""
    engine = await _retry_engine(request, ctx)
    record = await anyio.to_thread.run_sync(runner.retry_page, job_id, n, engine)
    return job_out(record, text=False)


async def _retry_engine(request: Request, ctx: Context) -> str:
    """``engine`` from an optional JSON or form body of at most RETRY_BODY_BYTES."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > RETRY_BODY_BYTES:
            raise UploadTooLargeError(
                f"The body is over the {RETRY_BODY_BYTES} bytes a retry takes.", hint='Send {"engine": "..."} only.'
            )
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    fields: dict[str, object] = {}
    if body.strip() and kind == "application/json":
        try:
            parsed = json.loads(bytes(body))
        except ValueError as exc:
            raise InvalidRequestError(f"The body is not JSON: {exc}.", hint='Send {"engine": "tesseract"}.') from exc
        if not isinstance(parsed, dict):
            raise InvalidRequestError("The body must be a JSON object.", hint='Send {"engine": "tesseract"}.')
        fields = parsed
    elif body.strip() and kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        data = bytes(body)

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": data, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=0, max_fields=4)
        except HTTPException as exc:  # starlette's word for a malformed or oversized form
            raise BadUploadError(
                f"The form is not usable: {exc.detail}.", hint='Send engine=tesseract, or {"engine": "tesseract"}.'
            ) from exc
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
    elif body.strip():
        raise InvalidRequestError(
            f"A retry's body is JSON or a form, not {kind[:60] or 'untyped bytes'}.",
            hint='Send {"engine": "tesseract"} as application/json, or engine=tesseract as a form.',
        )
    unknown = sorted(set(fields) - {"engine"})
    if unknown:
        raise InvalidRequestError(f"Unknown field {unknown[0][:40]!r}.", hint="A retry takes `engine` only.")
    engine = fields.get("engine", "auto")
    engine = engine.strip() if isinstance(engine, str) else engine
    choices = ctx.engines.choices if ctx.engines is not None else ("auto",)
    if engine == "":
        engine = "auto"
    if not isinstance(engine, str) or engine not in choices:
        shown = engine[:40] if isinstance(engine, str) else type(engine).__name__
        raise InvalidRequestError(f"Unknown engine {shown!r}.", hint=f"Use one of: {', '.join(choices)}.")
    return engine


@router.delete("/{job_id}", status_code=204, summary="Delete a job and its files", responses=_JOB_RESPONSES)
async def delete_job(job_id: JobId, runner: Jobs) -> Response:
    await anyio.to_thread.run_sync(runner.delete, job_id)
    return Response(status_code=204)
