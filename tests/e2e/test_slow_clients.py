"""Slow and oversized clients against a real ``gnosis-ocr serve``: a slowloris head, a silent connection, a huge
header line, an idle keep-alive connection and too many connections are all closed after a bounded time or size,
and a refused upload (401, 413, 503) ends its connection instead of being read to its end. The server serves a
normal job during and after each."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.conftest import wait_for
from tests.api.jobclient import submit, wait_finished
from tests.documents import make
from tests.e2e.serveproc import ServeProcess, header_of, read_until_closed, status_of

pytestmark = pytest.mark.slow

KEY = "slow-clients-test-key"
HEADER_TIMEOUT = 2
KEEPALIVE = 1
MAX_CONNECTIONS = 24
MAX_HEADER_BYTES = 16 * 1024
GiB = 1 << 30
MiB = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    env = {
        "GNOSIS_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "GNOSIS_HTTP_KEEPALIVE_TIMEOUT": str(KEEPALIVE),
        "GNOSIS_HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "GNOSIS_HTTP_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
        "GNOSIS_API_KEY": KEY,
        "GNOSIS_MAX_UPLOAD_BYTES": str(MiB),
        "GNOSIS_MAX_QUEUED_JOBS": "1",
        "GNOSIS_MAX_RUNNING_JOBS": "1",
        "GNOSIS_FAKE_ENGINE_DELAY": "0.2",
    }
    proc = ServeProcess(tmp_path_factory.mktemp("slow-clients"), env, headers={"X-API-Key": KEY})
    yield proc
    proc.close()


def test_a_slowloris_head_is_closed_after_the_header_timeout(server: ServeProcess) -> None:
    slow = server.connect()
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    began = time.monotonic()
    stop = threading.Event()

    def drip() -> None:  # one header byte a second, for as long as the server takes them
        while not stop.wait(1.0):
            try:
                slow.send(b"a")
            except OSError:
                return

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        server.normal_job()  # during
        answer, closed = read_until_closed(slow, 15 - (time.monotonic() - began))
    finally:
        stop.set()
        dripper.join(5)
        slow.close()
    assert closed is not None, "the slow connection is still open after 15 s"
    assert time.monotonic() - began < HEADER_TIMEOUT + 3
    assert status_of(answer) == 408 and b"RequestTimeoutError" in answer
    server.normal_job()  # after


def test_a_connection_that_sends_nothing_is_closed(server: ServeProcess) -> None:
    silent = server.connect()
    try:
        answer, closed = read_until_closed(silent, 10)
    finally:
        silent.close()
    assert closed is not None and closed < HEADER_TIMEOUT + 2, closed
    assert answer == b""  # nothing was asked, nothing is answered
    server.normal_job()


def test_a_huge_header_line_is_refused_early_and_stalls_nothing(server: ServeProcess) -> None:
    big = server.connect()
    big.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
    sent = 0

    def push() -> None:  # 64 MiB of one header line, as fast as the server takes it
        nonlocal sent
        chunk = b"a" * (256 * 1024)
        try:
            while sent < 64 * MiB:
                big.sendall(chunk)
                sent += len(chunk)
        except OSError:
            return

    pusher = threading.Thread(target=push, daemon=True)
    pusher.start()
    slowest = 0.0
    for _ in range(5):  # the event loop keeps answering meanwhile
        began = time.monotonic()
        assert server.client.get("/healthz").status_code == 200
        slowest = max(slowest, time.monotonic() - began)
    try:
        answer, closed = read_until_closed(big, 10)
    finally:
        pusher.join(20)
        big.close()
    assert status_of(answer) == 431 and b"GNOSIS_HTTP_MAX_HEADER_BYTES" in answer
    assert closed is not None
    assert sent < 32 * MiB, f"the server took {sent / MiB:.0f} MiB of header"
    assert slowest < 1.0, f"/healthz took {slowest:.1f} s during the flood"
    server.normal_job()


def test_an_idle_keepalive_connection_is_closed(server: ServeProcess) -> None:
    sock = server.connect()
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer, closed = read_until_closed(sock, 10)
    finally:
        sock.close()
    assert status_of(answer) == 200
    assert closed is not None and closed < KEEPALIVE + 1.5, closed


def test_connections_over_the_limit_are_refused_at_once(server: ServeProcess) -> None:
    time.sleep(KEEPALIVE + 0.5)  # the client's own idle connection has been closed: only ours count
    socks = [server.connect() for _ in range(MAX_CONNECTIONS + 16)]
    try:
        time.sleep(0.7)  # well inside the header timeout: only the limit can have closed any
        refused, answers = 0, []
        for sock in socks:
            sock.setblocking(False)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue  # open and waiting for a request
            except ConnectionResetError:
                data = b""
            refused += 1
            answers.append(data)
        assert refused >= 16, f"only {refused} of {len(socks)} connections were refused"
        assert any(status_of(a) == 503 and header_of(a, "retry-after") for a in answers), answers[:3]
    finally:
        for sock in socks:
            sock.close()
    time.sleep(0.2)
    server.normal_job()  # once they are gone, the server serves again


def _refused_upload(server: ServeProcess, extra_headers: str, length: int | None = GiB) -> tuple[bytes, bool, int]:
    """Start a 1 GiB upload by hand, keep sending while the server reads; the answer, whether the server closed
    the connection, and how many bytes the client got to send."""
    sock = server.connect()
    declared = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    sock.sendall(
        (
            f"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra_headers}"
            f"Content-Type: multipart/form-data; boundary=xyz\r\n{declared}\r\n"
        ).encode()
    )
    part = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.pdf"\r\n\r\n%PDF-1.4\n'
    sent = 0

    def push() -> None:
        nonlocal sent
        chunk = b"0" * (256 * 1024)
        if length is None:
            chunk = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
        try:
            sock.sendall(part if length is not None else b"%x\r\n" % len(part) + part + b"\r\n")
            while sent < 256 * MiB:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            return

    pusher = threading.Thread(target=push, daemon=True)
    pusher.start()
    try:
        answer, closed = read_until_closed(sock, 20)
    finally:
        pusher.join(30)
        sock.close()
    return answer, closed is not None, sent


@pytest.mark.parametrize(
    ("why", "headers", "length", "status"),
    [
        ("no API key", "", GiB, 401),
        ("declared over GNOSIS_MAX_UPLOAD_BYTES", f"X-API-Key: {KEY}\r\n", GiB, 413),
        ("streamed past GNOSIS_MAX_UPLOAD_BYTES", f"X-API-Key: {KEY}\r\n", None, 413),
    ],
)
def test_a_refused_upload_ends_its_connection(
    server: ServeProcess, why: str, headers: str, length: int | None, status: int
) -> None:
    answer, closed, sent = _refused_upload(server, headers, length)
    assert status_of(answer) == status, (why, answer[:300])
    assert (header_of(answer, "connection") or "").lower() == "close", (why, answer[:300])
    assert closed, f"{why}: the server kept the connection open"
    assert sent < 64 * MiB, f"{why}: the server read {sent / MiB:.0f} MiB after refusing the upload"
    server.normal_job()


def test_an_upload_refused_for_a_full_queue_ends_its_connection(server: ServeProcess) -> None:
    long_pdf = make.text_pdf([[f"page {i}"] for i in range(1, 16)])
    running = submit(server.client, [("long.pdf", long_pdf)])  # 15 pages x 0.2 s
    wait_for(lambda: server.client.get(f"/api/v1/jobs/{running['id']}").json()["status"] == "processing", 30, "run")
    queued = submit(server.client, [("queued.pdf", make.text_pdf([["queued"]]))])  # the one place in the queue
    answer, closed, sent = _refused_upload(server, f"X-API-Key: {KEY}\r\n")
    assert status_of(answer) == 503 and header_of(answer, "retry-after"), answer[:300]
    assert (header_of(answer, "connection") or "").lower() == "close"
    assert closed and sent < 64 * MiB, (closed, sent)
    for job in (running, queued):
        assert wait_finished(server.client, job["id"], timeout=60)["status"] == "done"
    server.normal_job()


def test_the_settings_are_in_the_docs() -> None:
    root = Path(__file__).resolve().parents[2]
    operations = (root / "docs" / "OPERATIONS.md").read_text()
    for name in (
        "GNOSIS_HTTP_HEADER_TIMEOUT",
        "GNOSIS_HTTP_MAX_HEADER_BYTES",
        "GNOSIS_HTTP_KEEPALIVE_TIMEOUT",
        "GNOSIS_HTTP_MAX_CONNECTIONS",
        "Cloud Run",
    ):
        assert name in operations, name
