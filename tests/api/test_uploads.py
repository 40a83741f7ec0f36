"""The streamed upload receiver over real HTTP: a tiny app on a live uvicorn, bodies sent by httpx and raw sockets.

Every refusal must leave nothing in the staging directory, and memory must not grow with the upload's size.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import psutil
import pytest
import uvicorn
from fastapi import FastAPI, Request

from gnosis_ocr.api.handlers import install_error_handlers
from gnosis_ocr.api.uploads import (
    BadUploadError,
    UploadLimits,
    UploadTooLargeError,
    receive_upload,
    safe_display_name,
)
from gnosis_ocr.errors import GnosisError
from tests.api.conftest import wait_for

KiB = 1024
MiB = 1024 * KiB
LIMITS = UploadLimits(max_files=3, max_file_bytes=4 * MiB, max_total_bytes=8 * MiB, max_field_bytes=64)
BOUNDARY = "gnosis-test-boundary-7f3a"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


@dataclass
class Server:
    url: str
    staging: Path  # request n stages into staging / str(n)
    errors: list[GnosisError]
    client: httpx.Client
    uvicorn: uvicorn.Server = field(repr=False)
    thread: threading.Thread = field(repr=False)

    def post(self, content: bytes | Iterator[bytes], content_type: str = MULTIPART) -> httpx.Response:
        return self.client.post("/upload", content=content, headers={"Content-Type": content_type})

    def files_left(self) -> list[Path]:
        return sorted(p for p in self.staging.rglob("*") if p.is_file())


def _app(staging: Path, limits: UploadLimits, errors: list[GnosisError]) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    numbers = itertools.count()

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, Any]:
        try:
            received = await receive_upload(request, staging / str(next(numbers)), limits)
        except GnosisError as exc:
            errors.append(exc)
            raise
        files = [
            {"index": f.index, "name": f.name, "path": str(f.path), "size": f.size, "content_type": f.content_type}
            for f in received.files
        ]
        return {"files": files, "fields": received.fields}

    return app


class Serve(Protocol):
    def __call__(self, limits: UploadLimits = LIMITS) -> Server: ...


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """``serve(limits)`` starts the upload app on 127.0.0.1; each one is stopped after the test."""
    servers: list[Server] = []

    def start(limits: UploadLimits = LIMITS) -> Server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        staging = tmp_path / f"staging-{len(servers)}"
        staging.mkdir()
        errors: list[GnosisError] = []
        config = uvicorn.Config(
            _app(staging, limits, errors), log_config=None, log_level="warning", access_log=False, lifespan="off"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="upload-uvicorn", daemon=True)
        thread.start()
        wait_for(lambda: server.started or not thread.is_alive(), 10, "uvicorn to start")
        assert server.started, "uvicorn exited during start-up"
        url = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=url, timeout=20, trust_env=False)
        servers.append(Server(url, staging, errors, client, server, thread))
        return servers[-1]

    yield start
    for s in servers:
        s.client.close()
        s.uvicorn.should_exit = True
        s.thread.join(15)


# -- building bodies by hand, so every byte of a header is ours to choose --


def part(name: str, body: bytes, filename: bytes | str | None = None, content_type: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'.encode()
    if filename is not None:
        disposition += b'; filename="' + (filename.encode() if isinstance(filename, str) else filename) + b'"'
    head = b"Content-Disposition: " + disposition + b"\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n".encode()
    return head + b"\r\n" + body


def multipart(*parts: bytes, closed: bool = True) -> bytes:
    out = b"".join(b"--" + BOUNDARY.encode() + b"\r\n" + p + b"\r\n" for p in parts)
    return out + (b"--" + BOUNDARY.encode() + b"--\r\n" if closed else b"")


def chunked(data: bytes, size: int = 64 * KiB) -> Iterator[bytes]:
    """A generator body: httpx sends it with Transfer-Encoding: chunked, so no Content-Length warns the server."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def payload(size: int, seed: int = 0) -> bytes:
    """Incompressible bytes that also hold a would-be delimiter, to prove the parser does not cut files at it."""
    trap = b"\r\n--" + BOUNDARY.encode()[:-1] + b"\r\n"
    block = hashlib.sha256(seed.to_bytes(4, "big")).digest() * (size // 32 + 1)
    return (trap + block)[:size]


def error_of(response: httpx.Response) -> dict[str, str]:
    error: dict[str, str] = response.json()["error"]
    return error


def raw_request(server: Server, content_length: int, content_type: str = MULTIPART) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = (
        f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock


def read_response(sock: socket.socket) -> str:
    """The whole response on a raw socket, read until its Content-Length is in or the server closes."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            if len(body) >= length:
                return data.decode("latin-1")
        chunk = sock.recv(65536)
        if not chunk:
            return data.decode("latin-1")
        data += chunk


# -- what a good upload gives --


def test_files_arrive_byte_identical_with_their_fields(serve: Serve) -> None:
    server = serve()
    documents = [("scan.pdf", payload(3 * MiB + 17, 1), "application/pdf"), ("a.png", payload(1), "image/png")]
    documents.append(("empty.tiff", b"", "image/tiff"))  # a named zero-byte file is a file; documents/ refuses it
    response = server.client.post(
        "/upload",
        files=[("file", d) for d in documents],
        data={"engine": "tesseract", "pages": "1-3,7", "text_layer": "never"},
    )
    assert response.status_code == 200, response.text
    got = response.json()
    assert got["fields"] == {"engine": "tesseract", "pages": "1-3,7", "text_layer": "never"}
    assert [(f["index"], f["name"], f["size"], f["content_type"]) for f in got["files"]] == [
        (i, name, len(data), ctype) for i, (name, data, ctype) in enumerate(documents)
    ]
    for i, (_, data, _) in enumerate(documents):
        path = Path(got["files"][i]["path"])
        assert path == server.staging / "0" / f"{i}.upload"
        assert path.read_bytes() == data
    assert server.errors == []


def test_an_empty_browser_file_input_is_skipped(serve: Serve) -> None:
    server = serve()
    body = multipart(
        part("file", b"", filename="", content_type="application/octet-stream"),
        part("file", b"%PDF-1.7 tiny", filename="real.pdf", content_type="application/pdf"),
        part("pages", b"2"),
    )
    got = server.post(body).json()
    assert [(f["index"], f["name"], f["size"]) for f in got["files"]] == [(0, "real.pdf", 13)]
    assert got["fields"] == {"pages": "2"}
    assert [p.name for p in server.files_left()] == ["0.upload"]

    only_empty = server.post(multipart(part("file", b"", filename="", content_type="application/octet-stream")))
    assert only_empty.status_code == 400
    assert "no `file` field" in error_of(only_empty)["message"]


def test_hostile_file_names_are_only_displayed(serve: Serve) -> None:
    names: list[tuple[bytes, str]] = [
        (b"../../etc/passwd", "passwd"),
        (b"..\\..\\win.ini", "win.ini"),
        (b"C:\\x\\y.pdf", "y.pdf"),
        (b"in\x00voice\nmay\xe2\x80\xae.pdf", "invoice may.pdf"),  # NUL, a bare LF, a right-to-left override
        (b"x" * 300 + b".pdf", "x" * 116 + ".pdf"),
        (b"..", "document-6"),
        ("r\u00e9sum\u00e9 \u65e5\u672c.pdf".encode(), "r\u00e9sum\u00e9 \u65e5\u672c.pdf"),  # UTF-8, as browsers send
        (b"\xff\xfe.pdf", "\ufffd\ufffd.pdf"),  # not UTF-8: shown, not refused
    ]
    server = serve(UploadLimits(max_files=10, max_file_bytes=MiB, max_total_bytes=4 * MiB))
    body = multipart(*(part("file", b"%d" % i, filename=raw) for i, (raw, _) in enumerate(names)))
    response = server.post(body)
    assert response.status_code == 200, response.text
    assert [f["name"] for f in response.json()["files"]] == [shown for _, shown in names]
    staged = server.staging / "0"
    assert server.files_left() == [staged / f"{i}.upload" for i in range(len(names))]
    assert [p.name for p in server.staging.parent.iterdir()] == ["staging-0"]  # nothing climbed out


@pytest.mark.parametrize(
    ("raw", "index", "shown"),
    [
        ("scan.pdf", 0, "scan.pdf"),
        (None, 0, "document-1"),
        ("", 4, "document-5"),
        ("/", 0, "document-1"),
        ("...", 1, "document-2"),
        ("  .hidden  report .pdf ", 0, "hidden report .pdf"),
        ("a\tb\r\nc.pdf", 0, "a b c.pdf"),
        ("e\u0301t\u00e9.pdf", 0, "\u00e9t\u00e9.pdf"),  # NFC
        ("zero\u200bwidth\u202eexe.pdf", 0, "zerowidthexe.pdf"),  # format characters dropped
        ("\ud800lone.pdf", 0, "lone.pdf"),  # a lone surrogate could not be encoded later
        ("dir/sub\\" + "n" * 200 + ".tar.gz", 0, "n" * 117 + ".gz"),
        ("y" * 130 + ".averyveryverylongextension", 0, "y" * 120),
    ],
)
def test_safe_display_name(raw: str | None, index: int, shown: str) -> None:
    assert safe_display_name(raw, index) == shown
    assert len(shown) <= 120


# -- limits: 413, and nothing left behind --


def test_a_file_over_its_limit_is_refused_and_cleaned_up(serve: Serve) -> None:
    server = serve(UploadLimits(max_files=3, max_file_bytes=2 * MiB, max_total_bytes=8 * MiB))
    body = multipart(part("file", payload(3 * MiB // 2), filename="ok.pdf"), part("file", payload(3 * MiB), "big.pdf"))
    response = server.post(body)
    assert response.status_code == 413
    assert error_of(response) == {
        "type": "UploadTooLargeError",
        "message": "big.pdf is larger than the 2 MiB a file may be (GNOSIS_MAX_BYTES).",
        "hint": "Split the document, or raise GNOSIS_MAX_BYTES on the server.",
    }
    assert (server.staging / "0").is_dir()  # ok.pdf had been written to disk ...
    assert server.files_left() == []  # ... and is gone


def test_a_body_over_the_total_is_refused_while_it_streams(serve: Serve) -> None:
    server = serve(UploadLimits(max_files=3, max_file_bytes=2 * MiB, max_total_bytes=3 * MiB))
    body = multipart(*(part("file", payload(3 * MiB // 2, i), filename=f"{i}.pdf") for i in range(3)))
    response = server.post(chunked(body))  # no Content-Length: only the running count can catch it
    assert response.status_code == 413
    assert (
        error_of(response)["message"]
        == "The upload is larger than the 3 MiB a request may be (GNOSIS_MAX_UPLOAD_BYTES)."
    )
    assert server.files_left() == []


def test_too_many_files_are_refused(serve: Serve) -> None:
    server = serve(UploadLimits(max_files=2, max_file_bytes=2 * MiB, max_total_bytes=8 * MiB))
    body = multipart(*(part("file", payload(5 * MiB // 4, i), filename=f"{i}.pdf") for i in range(3)))
    response = server.post(body)
    assert response.status_code == 413
    assert (
        error_of(response)["message"] == "The upload has more than the 2 files a request may carry (GNOSIS_MAX_FILES)."
    )
    assert server.files_left() == []


def test_a_long_field_is_refused(serve: Serve) -> None:
    server = serve()
    body = multipart(part("file", payload(3 * MiB // 2), filename="a.pdf"), part("pages", b"1," * 40))
    response = server.post(body)
    assert response.status_code == 413
    assert error_of(response)["message"] == "The field `pages` is longer than the 64 bytes a form field may be."
    assert server.files_left() == []


def test_a_declared_length_over_the_total_is_refused_before_the_body(serve: Serve) -> None:
    server = serve()
    with raw_request(server, content_length=10 * 1024 * MiB) as sock:  # headers only: no body is ever sent
        answer = read_response(sock)
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "(Content-Length)" in answer and "10 GiB" in answer
    assert [type(e) for e in server.errors] == [UploadTooLargeError]
    assert server.files_left() == []


# -- malformed requests: 400, and nothing left behind --

BIG = part("file", payload(3 * MiB // 2), filename="first.pdf")  # flushed to disk before the fault comes


@pytest.mark.parametrize(
    ("content_type", "body", "says"),
    [
        ("application/json", b'{"file": 1}', "(application/json) is not multipart/form-data"),
        ("multipart/form-data", multipart(BIG), "(multipart/form-data) has no boundary"),
        ("multipart/form-data; boundary=" + "b" * 300, b"", "The multipart boundary is not usable"),
        (MULTIPART, b"hello, this is not multipart", "The multipart body is malformed"),
        (MULTIPART, b"\r\n\r\n", "ended before its closing boundary"),
        (MULTIPART, b"", "ended before its closing boundary"),
        (MULTIPART, multipart(BIG, closed=False), "ended before its closing boundary"),
        (MULTIPART, multipart(BIG)[: 3 * MiB // 2], "ended before its closing boundary"),
        (MULTIPART, multipart(BIG, b"Content-Type: text/plain\r\n\r\nx"), "no `Content-Disposition: form-data`"),
        (MULTIPART, multipart(BIG, b"Content-Disposition: form-data\r\n\r\nx"), "no `Content-Disposition: form-data`"),
        (MULTIPART, multipart(BIG, b"Bad Header: x\r\n\r\n"), "The multipart body is malformed"),
        (MULTIPART, multipart(part("engine", b"auto")), "The upload has no `file` field with a document."),
        (MULTIPART, multipart(BIG, part("colour", b"red")), "a field `colour` that is not taken here"),
        (MULTIPART, multipart(BIG, part("engine", b"a"), part("engine", b"b")), "`engine` appears more than once"),
        (MULTIPART, multipart(BIG, part("pages", b"\xff\xfe1")), "The field `pages` is not UTF-8 text."),
    ],
    ids=[
        "not-multipart",
        "no-boundary",
        "boundary-too-long",
        "garbage",
        "only-newlines",
        "empty",
        "no-closing-boundary",
        "cut-mid-file",
        "no-disposition",
        "no-name",
        "bad-header",
        "no-file-part",
        "unknown-field",
        "repeated-field",
        "field-not-utf8",
    ],
)
def test_malformed_uploads_are_refused(serve: Serve, content_type: str, body: bytes, says: str) -> None:
    server = serve()
    response = server.post(body, content_type)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["type"] == "BadUploadError"
    assert says in error["message"], error["message"]
    assert error["hint"]
    assert server.files_left() == []


def test_unknown_field_message_lists_the_fields(serve: Serve) -> None:
    server = serve()
    response = server.post(multipart(part("colour\n", b"red"), part("file", b"x", filename="a.pdf")))
    assert error_of(response)["message"] == (
        "The upload has a field `colour?` that is not taken here; "
        "the fields are `file`, `callback_url`, `engine`, `pages`, `text_layer`."
    )


def test_a_client_that_goes_away_leaves_nothing(serve: Serve) -> None:
    server = serve()
    body = multipart(part("file", payload(3 * MiB), filename="a.pdf"))
    with raw_request(server, content_length=len(body)) as sock:
        sock.sendall(body[: 5 * MiB // 2])
        wait_for(server.files_left, 5, "the first MiB to reach the disk")
    wait_for(lambda: server.errors, 5, "the server to notice the disconnect")
    assert [type(e) for e in server.errors] == [BadUploadError]
    assert "disconnected" in server.errors[0].message
    wait_for(lambda: not server.files_left(), 5, "the staged file to be deleted")


# -- memory --


def test_memory_stays_flat_while_a_large_file_streams(serve: Serve) -> None:
    size = 64 * MiB
    server = serve(UploadLimits(max_files=1, max_file_bytes=size, max_total_bytes=size + MiB))
    block = os.urandom(MiB)
    head = b"--" + BOUNDARY.encode() + b"\r\n" + part("file", b"", filename="big.pdf")
    tail = b"\r\n--" + BOUNDARY.encode() + b"--\r\n"
    assert server.post(multipart(part("file", block, filename="warm.pdf"))).status_code == 200  # warm the paths

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(size // MiB):
            yield block  # the same object every time: the client adds nothing to the count
        yield tail

    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        response = server.post(body())
    finally:
        done.set()
        sampler.join()
    assert response.status_code == 200, response.text
    (uploaded,) = response.json()["files"]
    assert uploaded["size"] == size
    growth = peak - baseline
    print(f"RSS growth while {size // MiB} MiB streamed: {growth / MiB:.1f} MiB")
    assert growth < 16 * MiB, f"RSS grew {growth / MiB:.1f} MiB"
    expected = hashlib.sha256(block * (size // MiB)).hexdigest()
    assert hashlib.sha256(Path(uploaded["path"]).read_bytes()).hexdigest() == expected
