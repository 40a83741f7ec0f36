"""Bad inputs against one live server: each row is a request, the status it must get, the error ``type`` and the
words of the message that name the problem (docs/API.md). After the table: the server is still up, nothing was
left in staging or written outside the storage folder, and jobs around the bad requests finished ``done``.

The last test prints what the server answered as a Markdown table (run with ``-s`` or look at the terminal).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from gnosis_ocr.api import create_app
from gnosis_ocr.jobs.record import valid_job_id
from gnosis_ocr.modelcache.layout import TEMP_MARKER
from tests.api.conftest import make_settings, wait_for
from tests.api.jobclient import upload, wait_finished
from tests.documents import make

KEY = "k3y"
KiB = 1024
MAX_BYTES = 64 * KiB  # GNOSIS_MAX_BYTES
MAX_UPLOAD_BYTES = 160 * KiB  # GNOSIS_MAX_UPLOAD_BYTES
MAX_FILES = 3  # GNOSIS_MAX_FILES
MAX_PAGES = 5  # GNOSIS_MAX_PAGES
PAGE_DELAY = 0.2  # seconds per page of the fake engine: jobs take long enough to overlap the bad requests
UNKNOWN_ID = "AAAAAAAAAAAAAAAAAAAAAA"  # 22 URL-safe characters: a valid shape that names no job
BOUNDARY = "gnosis-bad-inputs-5e1f"
JOBS = "/api/v1/jobs"


def pdf(pages: int = 1) -> bytes:
    return make.text_pdf([[f"page {i + 1}"] for i in range(pages)])


@dataclass
class Server:
    client: httpx.Client  # sends the key
    anonymous: httpx.Client  # sends no key
    root: Path  # everything the server may write is under here
    storage: Path
    files_at_start: frozenset[Path]  # under root, outside storage, once the server was up
    before: str  # a slow job submitted before any bad request
    accepted: list[str] = field(default_factory=list)  # ids of every job the table created
    answers: list[tuple[str, httpx.Response]] = field(default_factory=list)
    first_bad_at: datetime | None = None  # when the first row was sent

    def post_raw(self, body: bytes, content_type: str = f"multipart/form-data; boundary={BOUNDARY}") -> httpx.Response:
        return self.client.post(JOBS, content=body, headers={"Content-Type": content_type})

    def submit(self, name: str, data: bytes, **fields: str) -> str:
        response = upload(self.client, [(name, data)], **fields)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        self.accepted.append(job_id)
        return job_id


def multipart(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart body written byte by byte, so names reach the server exactly as given (httpx would escape
    control characters). Each part: (field name, file name or None, content)."""
    out = bytearray()
    for name, filename, data in parts:
        out += f"--{BOUNDARY}\r\n".encode()
        disposition = f'Content-Disposition: form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += disposition.encode("utf-8", "surrogateescape") + b"\r\n"
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + data + b"\r\n"
    out += f"--{BOUNDARY}--\r\n".encode()
    return bytes(out)


def _files_outside(root: Path, storage: Path) -> frozenset[Path]:
    return frozenset(p for p in root.rglob("*") if p.is_file() and storage not in p.parents)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("bad-inputs")
    storage = root / "storage"
    settings = make_settings(
        root / "cache" / "huggingface",
        engine="fake",
        storage=str(storage),
        max_bytes=MAX_BYTES,
        max_pages=MAX_PAGES,
        max_files=MAX_FILES,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        api_key=KEY,
        fake_engine_delay=PAGE_DELAY,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(create_app(settings), log_config=None, log_level="warning", access_log=False)
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, kwargs={"sockets": [sock]}, name="bad-inputs-uvicorn", daemon=True)
    thread.start()
    wait_for(lambda: runner.started or not thread.is_alive(), 10, "uvicorn to start")
    assert runner.started, "uvicorn exited during start-up"
    client = httpx.Client(base_url=url, timeout=30, trust_env=False, headers={"X-API-Key": KEY})
    anonymous = httpx.Client(base_url=url, timeout=30, trust_env=False)
    try:
        wait_for(lambda: client.get("/readyz").status_code == 200, 30, "readyz")
        # three documents of five pages: about 3 s of work, queued before every bad request
        files = [(f"before-{i}.pdf", pdf(MAX_PAGES)) for i in range(MAX_FILES)]
        before = upload(client, files, text_layer="never")
        assert before.status_code == 202, before.text
        state = Server(client, anonymous, root, storage, _files_outside(root, storage), before.json()["id"])
        state.accepted.append(state.before)
        yield state
    finally:
        client.close()
        anonymous.close()
        runner.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "server did not stop within 15 s"


# -- the rows ----------------------------------------------------------------------------------------------


Send = Callable[[Server], httpx.Response]
Check = Callable[[Server, httpx.Response], None]


@dataclass(frozen=True)
class Row:
    id: str
    send: Send
    status: int
    kind: str | None  # the error type; None for an accepted upload
    says: str = ""  # in the message (case-insensitive)
    hint: str | None = None  # in the hint, where the hint names the fix
    check: Check | None = None


def files(*items: tuple[str, bytes], **fields: str) -> Send:
    return lambda s: upload(s.client, list(items), **fields)


def raw(*parts: tuple[str, str | None, bytes]) -> Send:
    return lambda s: s.post_raw(multipart(*parts))


def _chunked_over_the_total(s: Server) -> httpx.Response:
    """No Content-Length (chunked): the server must count while it reads. Two files under GNOSIS_MAX_BYTES each,
    together over GNOSIS_MAX_UPLOAD_BYTES."""
    body = multipart(*[("file", f"part{i}.pdf", pdf() + b"%" * (60 * KiB)) for i in range(3)])
    assert MAX_UPLOAD_BYTES < len(body) < 2 * MAX_UPLOAD_BYTES

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 16 * KiB):
            yield body[start : start + 16 * KiB]

    return s.client.post(JOBS, content=chunks(), headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})


def _no_image_yet(s: Server) -> httpx.Response:
    """A job queued behind a five-page one (1 s at PAGE_DELAY): its page 1 has not been rendered yet."""
    s.submit("blocker.pdf", pdf(MAX_PAGES), text_layer="never")
    queued = s.submit("queued.pdf", pdf(), text_layer="never")
    return s.client.get(f"{JOBS}/{queued}/pages/1/image")


def _cancel_finished(s: Server) -> httpx.Response:
    job_id = s.submit("short.pdf", pdf(), text_layer="never")
    assert wait_finished(s.client, job_id, timeout=30)["status"] == "done"
    return s.client.post(f"{JOBS}/{job_id}/cancel")


def _display_name(expected: str) -> Check:
    def check(s: Server, response: httpx.Response) -> None:
        name = response.json()["documents"][0]["name"]
        assert name == expected
        assert "/" not in name and "\\" not in name and name.isprintable()

    return check


def _asks_for_a_key(s: Server, response: httpx.Response) -> None:
    assert response.headers["www-authenticate"].startswith("Bearer")


def _allows_post(s: Server, response: httpx.Response) -> None:
    assert "POST" in response.headers.get("allow", "")


def _healthy(s: Server, response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("application/json")


def _broken_xref_repaired(s: Server, response: httpx.Response) -> None:
    document = response.json()["documents"][0]
    assert document["kind"] == "pdf" and document["page_count"] == 2


TRAVERSAL = "../../etc/passwd.pdf"
SIX_PAGES = pdf(MAX_PAGES + 1)
ROWS = [
    # -- what the file is
    Row("zero-byte-file", files(("empty.pdf", b"")), 422, "EmptyDocumentError", "empty.pdf is empty (0 bytes)"),
    Row(
        "zip-docx-named-pdf",
        files(("report.pdf", make.docx_like_zip())),
        415,
        "UnsupportedDocumentError",
        "report.pdf is not a document gnosis-ocr reads: it looks like a ZIP/DOCX",
        hint="libreoffice --headless --convert-to pdf",
    ),
    Row("gif", files(("cat.gif", make.gif())), 415, "UnsupportedDocumentError", "GIF is not supported", hint="PNG"),
    Row(
        "plain-text-named-png",
        files(("scan.png", b"Dear customer,\nyour invoice is attached.\n")),
        415,
        "UnsupportedDocumentError",
        "scan.png is not a document gnosis-ocr reads: it looks like plain text",
    ),
    Row(
        "html-error-page-named-pdf",
        files(("download.pdf", make.HTML)),
        415,
        "UnsupportedDocumentError",
        "it looks like HTML",
    ),
    Row(
        "file-part-without-filename",
        raw(("file", None, b"just some words")),
        415,
        "UnsupportedDocumentError",
        "document-1 is not a document",
    ),
    # -- PDFs that cannot be read
    Row(
        "encrypted-pdf",
        files(("locked.pdf", make.encrypted_pdf())),
        422,
        "EncryptedDocumentError",
        "locked.pdf is password-protected",
        hint="qpdf --decrypt",
    ),
    Row(
        "aes-256-encrypted-pdf",
        files(("locked-aes.pdf", make.aes_encrypted_pdf())),
        422,
        "EncryptedDocumentError",
        "locked-aes.pdf is password-protected",
        hint="qpdf --decrypt",
    ),
    Row(
        "truncated-pdf",
        files(("half.pdf", make.truncated_pdf())),
        422,
        "BrokenDocumentError",
        "half.pdf is a damaged PDF",
        hint="qpdf",
    ),
    Row(
        "header-only-pdf",
        files(("junk.pdf", make.hopeless_pdf())),
        422,
        "BrokenDocumentError",
        "junk.pdf is a damaged PDF",
        hint="qpdf",
    ),
    # PDFium rebuilds a garbage xref table from the objects (tests/documents/test_pdf.py): accepted, 2 pages
    Row(
        "broken-xref-pdf-is-repaired",
        files(("xref.pdf", make.broken_xref_pdf())),
        202,
        None,
        check=_broken_xref_repaired,
    ),
    Row(
        "zero-page-pdf",
        files(("none.pdf", make.zero_page_pdf())),
        422,
        "EmptyDocumentError",
        "none.pdf is a PDF without pages",
    ),
    # -- limits
    Row(
        "too-many-pages",
        files(("six.pdf", SIX_PAGES)),
        413,
        "DocumentLimitError",
        "six.pdf has 6 pages, over the limit of 5 (GNOSIS_MAX_PAGES)",
        hint="GNOSIS_MAX_PAGES",
    ),
    Row(
        "png-pixel-bomb",
        files(("bomb.png", make.png_bomb(30_000, 30_000))),
        413,
        "DocumentLimitError",
        "bomb.png",
        hint="GNOSIS_MAX_PAGE_PIXELS",
    ),
    Row(
        "file-over-max-bytes",
        files(("big.pdf", pdf() + b"%" * (MAX_BYTES + 1))),
        413,
        "UploadTooLargeError",
        "big.pdf is larger than the 64 KiB a file may be (GNOSIS_MAX_BYTES)",
        hint="GNOSIS_MAX_BYTES",
    ),
    Row(
        "request-over-max-upload-bytes-declared",
        files(*[(f"part{i}.pdf", pdf() + b"%" * (60 * KiB)) for i in range(3)]),
        413,
        "UploadTooLargeError",
        "(Content-Length), larger than the 160 KiB a request may be (GNOSIS_MAX_UPLOAD_BYTES)",
        hint="GNOSIS_MAX_UPLOAD_BYTES",
    ),
    Row(
        "request-over-max-upload-bytes-chunked",
        _chunked_over_the_total,
        413,
        "UploadTooLargeError",
        "larger than the 160 KiB a request may be (GNOSIS_MAX_UPLOAD_BYTES)",
        hint="GNOSIS_MAX_UPLOAD_BYTES",
    ),
    Row(
        "too-many-files",
        files(*[(f"doc{i}.pdf", pdf()) for i in range(MAX_FILES + 1)]),
        413,
        "UploadTooLargeError",
        "more than the 3 files a request may carry (GNOSIS_MAX_FILES)",
        hint="GNOSIS_MAX_FILES",
    ),
    Row(
        "form-field-too-long",
        files(("a.pdf", pdf()), pages="1," * 3000),
        413,
        "UploadTooLargeError",
        "field `pages` is longer than",
    ),
    # -- file names: only ever displayed
    Row(
        "traversal-filename",
        files((TRAVERSAL, pdf())),
        202,
        None,
        check=_display_name("passwd.pdf"),
    ),
    Row(
        "windows-traversal-filename",
        raw(("file", "..\\..\\Windows\\win.pdf", pdf())),
        202,
        None,
        check=_display_name("win.pdf"),
    ),
    Row(
        "filename-with-nul-and-bell",
        raw(("file", "scan\x00\x07.pdf", pdf())),
        202,
        None,
        check=_display_name("scan.pdf"),
    ),
    Row(
        "filename-with-escaped-newline",  # httpx (like browsers) sends a newline in a name as %0A
        files(("two\nlines.pdf", pdf())),
        202,
        None,
        check=_display_name("two%0Alines.pdf"),
    ),
    Row(
        "filename-with-raw-newline",  # a bare LF inside the quoted name: only CRLF ends a header line
        raw(("file", "two\nlines.pdf", pdf())),
        202,
        None,
        check=_display_name("two lines.pdf"),
    ),
    # -- the request's shape
    Row(
        "json-body-not-multipart",
        lambda s: s.client.post(JOBS, json={"file": "scan.pdf"}),
        400,
        "BadUploadError",
        "(application/json) is not multipart/form-data",
        hint="multipart/form-data",
    ),
    Row(
        "multipart-without-boundary",
        lambda s: s.post_raw(b"", content_type="multipart/form-data"),
        400,
        "BadUploadError",
        "has no boundary",
    ),
    Row(
        "multipart-without-file",
        raw(("engine", None, b"auto")),
        400,
        "BadUploadError",
        "has no `file` field",
    ),
    Row(
        "multipart-cut-short",
        lambda s: s.post_raw(multipart(("file", "a.pdf", pdf()))[:-40]),
        400,
        "BadUploadError",
        "ended before its closing boundary",
    ),
    Row(
        "unknown-field",
        files(("a.pdf", pdf()), colour="blue"),
        400,
        "BadUploadError",
        "has a field `colour` that is not taken here",
        hint="spelling",
    ),
    Row(
        "field-twice",
        raw(("file", "a.pdf", pdf()), ("engine", None, b"auto"), ("engine", None, b"fake")),
        400,
        "BadUploadError",
        "`engine` appears more than once",
    ),
    # -- option values
    Row(
        "bad-engine",
        files(("a.pdf", pdf()), engine="gpt-4o"),
        422,
        "InvalidRequestError",
        "Unknown engine 'gpt-4o'",
        hint="auto, vlm, nanonets, tesseract",
    ),
    Row(
        "pages-0-2",
        files(("two.pdf", pdf(2)), pages="0-2"),
        422,
        "InvalidRequestError",
        "two.pdf: Page 0 in '0-2' does not exist",
    ),
    Row("pages-abc", files(("two.pdf", pdf(2)), pages="abc"), 422, "InvalidRequestError", "two.pdf: Cannot read"),
    Row(
        "pages-out-of-range",
        files(("two.pdf", pdf(2)), pages="1,9"),
        422,
        "InvalidRequestError",
        "two.pdf: The page selection '1,9' asks for page 9, but the document has 2 pages",
    ),
    Row(
        "bad-text-layer",
        files(("a.pdf", pdf()), text_layer="sometimes"),
        422,
        "InvalidRequestError",
        "text_layer must be one of auto, never, only, not 'sometimes'",
    ),
    # -- jobs and pages that are not there
    Row(
        "unknown-job-id",
        lambda s: s.client.get(f"{JOBS}/{UNKNOWN_ID}"),
        404,
        "JobNotFoundError",
        f"No job '{UNKNOWN_ID}'",
    ),
    Row(
        "malformed-job-id",
        lambda s: s.client.get(f"{JOBS}/not-a-job"),
        404,
        "JobNotFoundError",
        "'not-a-job' is not a job id",
    ),
    Row(
        "delete-unknown-job",
        lambda s: s.client.delete(f"{JOBS}/{UNKNOWN_ID}"),
        404,
        "JobNotFoundError",
        UNKNOWN_ID,
    ),
    Row(
        "page-0",  # the path parameter is declared ge=1: FastAPI's validation answers, as JSON in our shape
        lambda s: s.client.get(f"{JOBS}/{s.before}/pages/0"),
        422,
        "ValidationError",
        "path/n: Input should be greater than or equal to 1",
    ),
    Row(
        "page-beyond-the-job",
        lambda s: s.client.get(f"{JOBS}/{s.before}/pages/16"),
        404,
        "JobNotFoundError",
        "has no page 16: it has 15",
    ),
    Row(
        "page-not-a-number",
        lambda s: s.client.get(f"{JOBS}/{s.before}/pages/two"),
        422,
        "ValidationError",
        "path/n",
    ),
    Row("image-not-rendered-yet", _no_image_yet, 404, "JobNotFoundError", "has no image yet", hint="retry"),
    Row("cancel-finished-job", _cancel_finished, 409, "JobFinishedError", "has already finished (done)"),
    # -- the key
    Row(
        "missing-api-key",
        lambda s: s.anonymous.get(f"{JOBS}/{s.before}"),
        401,
        "UnauthorizedError",
        "This route needs the API key",
        hint="X-API-Key",
        check=_asks_for_a_key,
    ),
    Row(
        "wrong-api-key",
        lambda s: s.anonymous.get(f"{JOBS}/{s.before}", headers={"Authorization": "Bearer k3y-not"}),
        401,
        "UnauthorizedError",
        "The API key is wrong",
        check=_asks_for_a_key,
    ),
    Row(
        "api-key-in-query-string",
        lambda s: s.anonymous.get(
            f"{JOBS}/{s.before}", params={n: KEY for n in ("api_key", "key", "token", "access_token", "X-API-Key")}
        ),
        401,
        "UnauthorizedError",
        "needs the API key",
        check=_asks_for_a_key,
    ),
    Row(
        "upload-without-api-key",
        lambda s: upload(s.anonymous, [("a.pdf", pdf())]),
        401,
        "UnauthorizedError",
        "needs the API key",
        check=_asks_for_a_key,
    ),
    Row("healthz-without-key", lambda s: s.anonymous.get("/healthz"), 200, None, check=_healthy),
    # -- routes
    Row(
        "put-jobs",
        lambda s: s.client.put(JOBS, content=b"{}"),
        405,
        "MethodNotAllowed",
        "PUT is not allowed on /api/v1/jobs; it takes POST.",
        hint="/docs",
        check=_allows_post,
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input(server: Server, row: Row) -> None:
    server.first_bad_at = server.first_bad_at or datetime.now(UTC)
    response = row.send(server)
    server.answers.append((row.id, response))
    assert response.status_code == row.status, response.text
    if response.status_code == 202:
        server.accepted.append(response.json()["id"])
    if row.kind is not None:
        assert response.headers["content-type"].startswith("application/json")
        body: dict[str, Any] = response.json()
        assert list(body) == ["error"] and set(body["error"]) == {"type", "message", "hint"}, body
        error = body["error"]
        assert error["type"] == row.kind, error
        assert row.says.lower() in error["message"].lower(), error
        if row.hint is not None:
            assert row.hint.lower() in (error["hint"] or "").lower(), error
    if row.check is not None:
        row.check(server, response)


def test_afterwards_nothing_is_left_over_and_jobs_still_run(server: Server) -> None:
    assert server.anonymous.get("/healthz").status_code == 200
    staging = server.storage / "staging"
    assert sorted(staging.rglob("*")) == [], "an upload left staging files behind"

    # every file the server wrote is a job's (or its heartbeat); no name came from a client
    job_dirs = {p.name for p in (server.storage / "jobs").iterdir()}
    assert job_dirs == set(server.accepted), "one job folder per accepted upload, and no other"
    for path in server.storage.rglob("*"):
        if path.is_dir():
            continue
        parts = path.relative_to(server.storage).parts
        if parts[0] == "instances":
            assert len(parts) == 2 and parts[1].endswith(".json"), path
            continue
        assert parts[0] == "jobs" and valid_job_id(parts[1]), path
        rest = parts[2:]
        assert (
            rest == ("job.json",)
            or (len(rest) == 2 and rest[0] == "inputs" and rest[1].isdigit())
            or (len(rest) == 2 and rest[0] == "pages" and _page_file(rest[1]).isdigit())
        ), path
    assert _files_outside(server.root, server.storage) == server.files_at_start
    assert not any("passwd" in p.name or p.name.endswith(".upload") for p in server.root.rglob("*"))
    assert not Path("/etc/passwd.pdf").exists()

    before = wait_finished(server.client, server.before, timeout=60)
    assert before["status"] == "done" and before["progress"]["pages_done"] == 3 * MAX_PAGES, before["progress"]
    assert before["progress"]["pages_failed"] == 0
    if server.first_bad_at is not None:  # it was still at work when the bad requests began
        assert datetime.fromisoformat(before["finished_at"]) > server.first_bad_at, before["finished_at"]
    for job_id in server.accepted:
        assert wait_finished(server.client, job_id, timeout=60)["status"] == "done", job_id
    after = server.submit("after.pdf", pdf(2), text_layer="never")
    final = wait_finished(server.client, after, timeout=30)
    assert final["status"] == "done" and [p["status"] for p in final["pages"]] == ["done", "done"]


def _page_file(name: str) -> str:
    """The page number in a page's image (``3.webp``) or word boxes (``3.words.json``), also while the atomic
    writer has it under its temporary name (``3.webp<TEMP_MARKER>host-pid-random``: the first job still runs)."""
    return name.split(TEMP_MARKER, 1)[0].removesuffix(".webp").removesuffix(".words.json")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def test_print_what_the_server_answered(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    lines = ["| case | status | error type | message |", "|---|---|---|---|"]
    for case, response in server.answers:
        kind = message = ""
        if response.headers.get("content-type", "").startswith("application/json"):
            body = response.json()
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                kind, message = body["error"]["type"], body["error"]["message"]
            elif isinstance(body, dict) and "documents" in body:
                message = "accepted as " + ", ".join(repr(d["name"]) for d in body["documents"])
            else:
                message = _cell(response.text[:80])
        lines.append(f"| {case} | {response.status_code} | {kind} | {_cell(message)} |")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert len(server.answers) <= len(ROWS)
