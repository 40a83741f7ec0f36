"""Service benchmark: the server's memory while a large upload streams in, and status latency under a steady load
while a job runs (issue 4). Medians and percentiles are printed as a table; ``--json-out`` keeps them.

    .venv/bin/python -m bench.service_bench [--size-mb 500] [--rate 200] [--seconds 10] [--subscribers 50]
                                            [--quick] [--json-out FILE]

The real server runs as a child process (``python -m gnosis_ocr serve``) on 127.0.0.1 with the fake engine slowed
to GNOSIS_FAKE_ENGINE_DELAY seconds per page, its storage and model cache in a temporary folder, and a hub address
where nothing listens. Nothing leaves loopback. Goals and verdicts are in the note column.

Upload memory. A real PDF of ``--size-mb`` MB (a few text pages plus one unreferenced stream of random bytes, so
that PDFium opens it without reading the padding) is written to disk in chunks, then POSTed to /api/v1/jobs as a
multipart body generated chunk by chunk (with its Content-Length): neither side ever needs the file in memory. A
thread samples the RSS of the server and its children every 10 ms. After one small warm-up upload (first-use
imports are not the upload's cost), each repeat reports the RSS just before, the peak while the body streams and
until the response, the growth, and the time and rate. The job each upload creates is cancelled and deleted, and
the worker is idle again, before the next repeat.

Status latency. While a job of 60+ pages runs, GET /api/v1/jobs/{id} (with page text, then ``?text=false``) and
GET /readyz are sent open-loop: request i is due at start + i / rate whatever happened to the others, and its
latency counts from that due time, so a stalled server shows as queueing instead of as a lower rate. The client is
a plain HTTP/1.1 client on asyncio streams over ``--connections`` keep-alive connections (tens of microseconds a
request, so that on a small machine the client is not what is measured); its CPU and its lag are reported, with
the CPU the server and everything else on the machine took meanwhile, and the server's CPU on the job alone just
before, so that the server's CPU per request can be told apart. Requests unanswered DRAIN_SECONDS after the last
one was due count as errors. Before the load, GETs one at a time on one connection give the service time with no
queueing. The load runs on a new job of its own; every job is cancelled after its measurement.

SSE fan-out. ``--subscribers`` clients follow /api/v1/jobs/{id}/events on a running job while the status load runs
again; the job is then cancelled and each subscriber's pages are compared with the job's finished pages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.report import Report, print_facts_and_rows

ROOT = Path(__file__).resolve().parents[1]
MB = 1000 * 1000  # sizes and rates of bytes on the wire
MIB = 1024 * 1024  # memory
CHUNK = 1024 * 1024  # what the client reads from disk and sends at a time
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there
PAGE_DELAY = 0.2  # seconds per page of the fake engine
MIN_JOB_PAGES = 60
RSS_GOAL_MIB = 64.0
P99_GOAL_MS = 50.0
SAMPLE_SECONDS = 0.01
START_TIMEOUT = 90.0  # seconds for the server to answer /readyz with 200
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
REQUEST_TIMEOUT = 10.0  # per status request; a timeout counts as an error
DRAIN_SECONDS = 10.0  # after the last request was due, how long the load waits for the answers


class BenchError(RuntimeError):
    """A step of the benchmark failed (the server did not start, a request was refused)."""


# -- documents ---------------------------------------------------------------------------------------------------


def write_pdf(path: Path, pages: int, *, pad_bytes: int = 0) -> int:
    """A valid PDF of ``pages`` letter pages with a line of text each, plus, when ``pad_bytes`` > 0, one stream
    object of that many random bytes that no page refers to (PDFium never reads it). Written in chunks; returns the
    file's size."""
    offsets: list[int] = []

    with path.open("wb") as out:

        def begin(number: int) -> None:
            assert number == len(offsets) + 1
            offsets.append(out.tell())
            out.write(f"{number} 0 obj\n".encode())

        def obj(number: int, body: bytes) -> None:
            begin(number)
            out.write(body + b"\nendobj\n")

        out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
        kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(pages))
        obj(1, b"<< /Type /Catalog /Pages 2 0 R >>")
        obj(2, f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode())
        obj(3, b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
        for i in range(pages):
            obj(
                4 + 2 * i,
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                + f"/Contents {5 + 2 * i} 0 R >>".encode(),
            )
            text = f"BT /F1 24 Tf 72 700 Td (Service benchmark, page {i + 1} of {pages}) Tj ET".encode()
            obj(5 + 2 * i, f"<< /Length {len(text)} >>\nstream\n".encode() + text + b"\nendstream")
        if pad_bytes > 0:
            begin(4 + 2 * pages)
            out.write(f"<< /Length {pad_bytes} >>\nstream\n".encode())
            left = pad_bytes
            while left:
                n = min(left, 8 * MIB)
                out.write(os.urandom(n))
                left -= n
            out.write(b"\nendstream\nendobj\n")
        xref = out.tell()
        out.write(f"xref\n0 {len(offsets) + 1}\n0000000000 65535 f \n".encode())
        out.write(b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets))
        out.write(f"trailer\n<< /Size {len(offsets) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
        return out.tell()


def padded_pdf(path: Path, size: int, pages: int = 3) -> int:
    """A PDF of about ``size`` bytes: ``pages`` small pages and the rest padding."""
    small = write_pdf(path, pages)
    return write_pdf(path, pages, pad_bytes=max(0, size - small - 64))


# -- the multipart body ------------------------------------------------------------------------------------------


@dataclass
class Multipart:
    """A multipart/form-data body of one file part, produced chunk by chunk from the file on disk."""

    path: Path
    filename: str
    fields: dict[str, str] = field(default_factory=dict)
    boundary: str = field(default_factory=lambda: "gnosis-bench-" + secrets.token_hex(12))
    sent_at: float | None = None  # monotonic time the last byte was handed to the connection

    @property
    def head(self) -> bytes:
        parts = [
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            for name, value in self.fields.items()
        ]
        parts.append(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; filename="{self.filename}"\r\n'
            "Content-Type: application/pdf\r\n\r\n"
        )
        return "".join(parts).encode()

    @property
    def tail(self) -> bytes:
        return f"\r\n--{self.boundary}--\r\n".encode()

    @property
    def headers(self) -> dict[str, str]:
        length = len(self.head) + self.path.stat().st_size + len(self.tail)
        return {"Content-Type": f"multipart/form-data; boundary={self.boundary}", "Content-Length": str(length)}

    def chunks(self) -> Iterator[bytes]:
        yield self.head
        with self.path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk
        yield self.tail
        self.sent_at = time.monotonic()


# -- the server --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(tmp: Path, max_bytes: int) -> dict[str, str]:
    """Our environment without any GNOSIS_* or model settings, plus the bench's."""
    drop = ("MODEL_CACHE_PATH", "MODEL_NAME", "HF_HOME", "HF_HUB_CACHE", "HF_TOKEN", "HF_ENDPOINT", "PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GNOSIS_") and k not in drop}
    path = [str(ROOT / "src"), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    return env | {
        "PYTHONPATH": os.pathsep.join(path),
        "GNOSIS_ENGINE": "fake",
        "GNOSIS_FAKE_ENGINE_DELAY": str(PAGE_DELAY),
        "GNOSIS_STORAGE": str(tmp / "storage"),
        "MODEL_CACHE_PATH": str(tmp / "model-cache"),
        "HF_ENDPOINT": UNREACHABLE,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "GNOSIS_HOST": "127.0.0.1",
        "GNOSIS_MAX_BYTES": str(max_bytes),
        "GNOSIS_MAX_UPLOAD_BYTES": str(max_bytes),
    }


class Server:
    """``python -m gnosis_ocr serve`` as a child process, its output in ``log``."""

    def __init__(self, tmp: Path, max_bytes: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "server.log"
        self.argv = [sys.executable, "-m", "gnosis_ocr", "serve", "--port", str(self.port)]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv, env=server_env(tmp, max_bytes), cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.pid = self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_ready(self, client: httpx.Client) -> float:
        started = time.monotonic()
        while time.monotonic() - started < START_TIMEOUT:
            if self.proc.poll() is not None:
                raise BenchError(f"the server exited ({self.proc.returncode}) while starting:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if client.get("/readyz").status_code == 200:
                    return time.monotonic() - started
            time.sleep(0.1)
        raise BenchError(f"the server was not ready after {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT seconds."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=STOP_TIMEOUT)
        finally:
            self._log.close()


# -- memory and CPU ----------------------------------------------------------------------------------------------


class RssSampler(threading.Thread):
    """Samples the RSS of a process and its children (the child list refreshed every 0.5 s) every 10 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self._root = psutil.Process(pid)
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._samples: list[tuple[float, int]] = []

    def run(self) -> None:
        procs, listed = [self._root], 0.0
        while not self._stop_event.is_set():
            now = time.monotonic()
            if now - listed > 0.5:
                with contextlib.suppress(psutil.Error):
                    procs = [self._root, *self._root.children(recursive=True)]
                listed = now
            rss = 0
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    rss += proc.memory_info().rss
            if rss:
                with self._lock:
                    self._samples.append((now, rss))
            self._stop_event.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=2)

    def latest(self) -> int:
        with self._lock:
            return self._samples[-1][1] if self._samples else 0

    def peak(self, start: float, end: float) -> int:
        with self._lock:
            return max((rss for t, rss in self._samples if start <= t <= end), default=0)


def cpu_seconds(proc: psutil.Process, *, children: bool) -> float:
    """user + system CPU seconds of a process (all its threads) and, with ``children``, its live children."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        for p in (proc, *(proc.children(recursive=True) if children else ())):
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
    return total


def machine_busy() -> float:
    """CPU seconds every process on the machine has spent (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Cores:
    server: float
    client: float
    others: float


@contextlib.contextmanager
def cores_used(server: psutil.Process, out: list[Cores]) -> Iterator[None]:
    """Appends to ``out`` the cores the server (with its children), this process (not its children: the server is
    one) and everything else used during the block."""
    me = psutil.Process()
    s0, c0 = cpu_seconds(server, children=True), cpu_seconds(me, children=False)
    m0, t0 = machine_busy(), time.monotonic()
    yield
    seconds = max(time.monotonic() - t0, 1e-9)
    s, c = cpu_seconds(server, children=True) - s0, cpu_seconds(me, children=False) - c0
    out.append(Cores(s / seconds, c / seconds, max(0.0, machine_busy() - m0 - s - c) / seconds))


# -- open-loop load ----------------------------------------------------------------------------------------------


@dataclass
class Load:
    latencies_ms: list[float] = field(default_factory=list)  # due time to response read, every request
    lags_ms: list[float] = field(default_factory=list)  # due time to the client starting the request
    errors: dict[str, int] = field(default_factory=dict)
    answered: int = 0
    last_answer: float = 0.0  # loop time
    seconds: float = 0.0  # first due time to last response

    @property
    def sent(self) -> int:
        return len(self.latencies_ms)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def rate(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


class HttpError(Exception):
    """A response the load client could not read (or none at all)."""


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """One HTTP/1.1 response off a keep-alive connection: its status and whether the server keeps it open."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise HttpError(f"bad status line {lines[0][:60]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")  # no trailers are sent
    else:
        raise HttpError("a response without Content-Length or chunked encoding")
    return int(parts[1]), headers.get("connection", "").lower() != "close"


async def open_loop(host: str, port: int, path: str, *, rate: float, seconds: float, connections: int) -> Load:
    """GET ``path`` at ``rate`` per second for ``seconds``, request i due at start + i / rate (open loop).

    ``connections`` keep-alive connections take the due requests in order; when all are busy the requests wait,
    and that wait counts in their latency. A plain HTTP/1.1 client on asyncio streams: tens of microseconds per
    request, so that on a small machine the client is not what is measured. Requests still unanswered DRAIN_SECONDS
    after the last one was due count as errors, with their wait so far as their latency (a lower bound)."""
    loop = asyncio.get_running_loop()
    load = Load()
    count = max(1, round(rate * seconds))
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\n\r\n".encode()
    due_times: asyncio.Queue[float | None] = asyncio.Queue()
    in_flight: dict[int, float] = {}  # connection -> due time of the request it is on

    def failed(key: str) -> None:
        load.errors[key] = load.errors.get(key, 0) + 1

    async def connection(k: int) -> None:
        stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while (due := await due_times.get()) is not None:
                in_flight[k] = due
                load.lags_ms.append((loop.time() - due) * 1000)
                keep = False
                try:
                    if stream is None:
                        stream = await asyncio.wait_for(asyncio.open_connection(host, port), REQUEST_TIMEOUT)
                    stream[1].write(request)
                    status, keep = await asyncio.wait_for(read_response(stream[0]), REQUEST_TIMEOUT)
                    if status != 200:
                        failed(f"HTTP {status}")
                except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, HttpError) as e:
                    failed(type(e).__name__)
                load.latencies_ms.append((loop.time() - due) * 1000)
                load.answered += 1
                load.last_answer = loop.time()
                del in_flight[k]
                if not keep and stream is not None:
                    stream[1].close()
                    stream = None
        finally:
            if stream is not None:
                stream[1].close()

    workers = [asyncio.create_task(connection(k)) for k in range(connections)]
    load.last_answer = loop.time()
    for _ in range(connections):  # warm-up: connections opened and used, not counted
        due_times.put_nowait(loop.time())
    while load.answered < connections and loop.time() - load.last_answer < REQUEST_TIMEOUT:
        await asyncio.sleep(0.01)
    load.latencies_ms.clear()
    load.lags_ms.clear()
    load.errors.clear()
    load.answered = 0
    start = load.last_answer = loop.time() + 0.05
    for i in range(count):
        due = start + i / rate
        if (wait := due - loop.time()) > 0:
            await asyncio.sleep(wait)
        due_times.put_nowait(due)
    for _ in workers:
        due_times.put_nowait(None)
    _, late = await asyncio.wait(workers, timeout=max(0.0, start + seconds + DRAIN_SECONDS - loop.time()))
    for task in late:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    cut = loop.time()
    unanswered = list(in_flight.values())
    while not due_times.empty():
        if (queued := due_times.get_nowait()) is not None:
            unanswered.append(queued)
    for due_at in unanswered:
        failed(f"unanswered {DRAIN_SECONDS:g} s after the last was due")
        load.latencies_ms.append((cut - due_at) * 1000)
    load.seconds = load.last_answer - start
    return load


async def one_at_a_time(host: str, port: int, path: str, count: int) -> list[float]:
    """Milliseconds of ``count`` GETs sent one after another on one connection: the service time, no queueing."""
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\n\r\n".encode()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), REQUEST_TIMEOUT)
    times = []
    try:
        for _ in range(count + 5):  # the first 5 warm up
            started = loop.time()
            writer.write(request)
            status, keep = await asyncio.wait_for(read_response(reader), REQUEST_TIMEOUT)
            if status != 200 or not keep:
                raise BenchError(f"GET {path} answered {status}{'' if keep else ' and closed the connection'}")
            times.append((loop.time() - started) * 1000)
    finally:
        writer.close()
    return times[5:]


def async_client(base_url: str, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=REQUEST_TIMEOUT, trust_env=False)


# -- SSE subscribers ---------------------------------------------------------------------------------------------


@dataclass
class Subscription:
    pages: set[int] = field(default_factory=set)  # finished pages: in the first `job` event, then `page` events
    page_events: int = 0
    duplicates: int = 0
    end: str | None = None
    error: str | None = None


async def subscribe(client: httpx.AsyncClient, path: str, sub: Subscription, connected: asyncio.Event) -> None:
    event, data = "message", []
    try:
        async with client.stream("GET", path) as response:
            if response.status_code != 200:
                sub.error = f"HTTP {response.status_code}"
                return
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif line == "" and data:
                    body = json.loads("\n".join(data))
                    if event == "job" and not connected.is_set():
                        sub.pages.update(p["n"] for p in body.get("pages") or [] if p["status"] != "pending")
                        connected.set()
                    elif event == "page":
                        sub.page_events += 1
                        sub.duplicates += body["n"] in sub.pages
                        sub.pages.add(body["n"])
                    elif event == "end":
                        sub.end = body.get("status")
                        return
                    event, data = "message", []
    except httpx.HTTPError as exc:
        sub.error = type(exc).__name__


class Subscribers(threading.Thread):
    """``count`` SSE clients on their own event loop (and thread), so that they do not delay the load's clock."""

    def __init__(self, base_url: str, path: str, count: int, timeout: float) -> None:
        super().__init__(name="sse-subscribers", daemon=True)
        self.base_url, self.path, self.timeout = base_url, path, timeout
        self.subs = [Subscription() for _ in range(count)]
        self.all_connected = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by the caller
            self.failure = exc
        finally:
            self.all_connected.set()  # never leave the caller waiting

    async def _main(self) -> None:
        async with async_client(self.base_url, len(self.subs) + 4) as client:
            flags = [asyncio.Event() for _ in self.subs]
            tasks = [
                asyncio.create_task(subscribe(client, self.path, s, f)) for s, f in zip(self.subs, flags, strict=True)
            ]

            async def announce() -> None:
                await asyncio.gather(*(f.wait() for f in flags))
                self.all_connected.set()

            watcher = asyncio.create_task(announce())
            try:
                await asyncio.wait_for(asyncio.gather(*tasks), self.timeout)
            finally:
                watcher.cancel()


# -- jobs --------------------------------------------------------------------------------------------------------


def submit(client: httpx.Client, pdf: Path, **fields: str) -> str:
    body = Multipart(pdf, pdf.name, fields)
    response = client.post("/api/v1/jobs", content=body.chunks(), headers=body.headers)
    if response.status_code != 202:
        raise BenchError(f"POST /api/v1/jobs answered {response.status_code}: {response.text[:500]}")
    return str(response.json()["id"])


def job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/jobs/{job_id}", params={"text": "false"})
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def wait_processing(client: httpx.Client, job_id: str, timeout: float = 60.0) -> None:
    """Until the job has started and finished its first page (rendering and engine both under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job(client, job_id)
        if state["status"] == "processing" and state["progress"]["pages_done"] >= 1:
            return
        if state["status"] in ("done", "failed", "cancelled"):
            raise BenchError(f"job {job_id} ended ({state['status']}) before the measurement: {state['error']}")
        time.sleep(0.05)
    raise BenchError(f"job {job_id} was not processing after {timeout:.0f} s")


def cancel(client: httpx.Client, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Cancel the job (if it still runs) and wait until it has stopped; returns its final state."""
    client.post(f"/api/v1/jobs/{job_id}/cancel")  # 409 when it has finished already: fine
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job(client, job_id)
        if state["status"] in ("done", "failed", "cancelled"):
            return state
        time.sleep(0.05)
    raise BenchError(f"job {job_id} did not stop within {timeout:.0f} s of its cancel")


# -- shared context ----------------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    server: Server
    client: httpx.Client
    sampler: RssSampler
    report: Report
    job_pdf: Path
    job_pages: int

    @property
    def proc(self) -> psutil.Process:
        return psutil.Process(self.server.pid)


def service_times(b: Bench, path: str) -> list[float]:
    count = max(20, min(200, round(b.args.rate * b.args.seconds / 10)))
    return asyncio.run(one_at_a_time("127.0.0.1", b.server.port, path, count))


def run_load(b: Bench, path: str) -> Load:
    args = b.args
    return asyncio.run(
        open_loop("127.0.0.1", b.server.port, path, rate=args.rate, seconds=args.seconds, connections=args.connections)
    )


def goal_note(value: float | None, goal: float, unit: str, extra: str = "") -> str:
    verdict = "-" if value is None or math.isnan(value) else "PASS" if value < goal else "MISS"
    return f"goal < {goal:g} {unit}: {verdict}" + (f"; {extra}" if extra else "")


# -- 1. upload memory --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    status: int
    before: int
    peak_streaming: int
    peak: int
    seconds: float
    after_body: float


def metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    raise BenchError(f"/metrics has no {name}")


def wait_idle(client: httpx.Client, timeout: float = 60.0) -> None:
    """Until the server's worker has no job running or queued."""
    deadline = time.monotonic() + timeout
    while metric(client, "gnosis_jobs_running") or metric(client, "gnosis_jobs_queued"):
        if time.monotonic() > deadline:
            raise BenchError(f"the server's worker was still busy after {timeout:.0f} s")
        time.sleep(0.05)


def upload_once(b: Bench, pdf: Path) -> Upload:
    """POST ``pdf`` as a streamed multipart body while the sampler watches the server; the job it makes is
    cancelled and deleted, and the worker idle, before the next."""
    wait_idle(b.client)
    time.sleep(0.5)  # let the sampler see the server at rest
    body = Multipart(pdf, "large.pdf", {"text_layer": "never"})
    before = b.sampler.latest()
    started = time.monotonic()
    response = b.client.post("/api/v1/jobs", content=body.chunks(), headers=body.headers, timeout=600)
    answered = time.monotonic()
    time.sleep(2 * SAMPLE_SECONDS)
    sent = body.sent_at or answered
    result = Upload(
        status=response.status_code,
        before=before,
        peak_streaming=b.sampler.peak(started, sent),
        peak=b.sampler.peak(started, answered),
        seconds=answered - started,
        after_body=answered - sent,
    )
    if response.status_code == 202:
        job_id = response.json()["id"]
        cancel(b.client, job_id)
        b.client.delete(f"/api/v1/jobs/{job_id}")
    return result


def bench_upload(b: Bench) -> None:
    size = b.args.size_mb * MB
    pdf = b.tmp / "large.pdf"
    warm = b.tmp / "warm-up.pdf"
    started = time.monotonic()
    actual = padded_pdf(pdf, size)
    written = time.monotonic() - started
    b.report.facts["upload document"] = (
        f"{actual / MB:.1f} MB PDF, 3 text pages + 1 unreferenced random stream (written in {written:.1f} s)"
    )
    padded_pdf(warm, 2 * MB)
    warm_up = upload_once(b, warm)
    if warm_up.status != 202:
        raise BenchError(f"the warm-up upload was answered {warm_up.status}:\n{b.server.log_tail()}")
    warm.unlink()

    section = f"upload {actual / MB:.0f} MB PDF, streamed multipart"
    r_before = b.report.row(section, "server RSS before", "MiB", note="server + children, after a warm-up upload")
    r_stream = b.report.row(section, "server RSS peak, body streaming", "MiB")
    r_peak = b.report.row(section, "server RSS peak, until response", "MiB")
    r_growth = b.report.row(section, "RSS growth (peak - before)", "MiB")
    r_seconds = b.report.row(section, "upload, send to response", "s")
    r_rate = b.report.row(section, "upload rate", "MB/s")
    r_after = b.report.row(section, "last byte sent to response", "s", note="check + store after the body")
    statuses = []
    try:
        for _ in range(b.args.repeats):
            up = upload_once(b, pdf)
            statuses.append(up.status)
            r_before.samples.append(up.before / MIB)
            r_stream.samples.append(up.peak_streaming / MIB)
            r_peak.samples.append(up.peak / MIB)
            r_growth.samples.append((up.peak - up.before) / MIB)
            r_seconds.samples.append(up.seconds)
            r_rate.samples.append(actual / MB / up.seconds)
            r_after.samples.append(up.after_body)
    finally:
        pdf.unlink(missing_ok=True)
    codes = ", ".join(str(s) for s in statuses)
    r_seconds.note = f"answered {codes}" + ("" if set(statuses) == {202} else " (expected 202)")
    r_growth.note = goal_note(r_growth.median, RSS_GOAL_MIB, "MiB")


# -- 2. status latency under load --------------------------------------------------------------------------------


def record_load(
    b: Bench,
    section: str,
    load: Load,
    cores: Cores,
    *,
    alone: float,
    service: list[float],
    state: str,
    alone_is: str = "the job",
) -> None:
    p99 = percentile(load.latencies_ms, 99)
    errors = ", ".join(f"{k}: {v}" for k, v in load.errors.items())
    rows: list[tuple[str, str, float, str]] = [
        ("one at a time: latency p50", "ms", percentile(service, 50), f"{len(service)} GETs in a row, 1 connection"),
        ("one at a time: latency p90", "ms", percentile(service, 90), "the service time, no queueing"),
        ("latency p50", "ms", percentile(load.latencies_ms, 50), "from the due time: queueing counts"),
        ("latency p90", "ms", percentile(load.latencies_ms, 90), ""),
        ("latency p99", "ms", p99, goal_note(p99, P99_GOAL_MS, "ms")),
        ("latency max", "ms", max(load.latencies_ms, default=math.nan), ""),
        ("achieved rate", "req/s", load.rate, f"asked {b.args.rate:g}/s, {load.sent} requests; {state}"),
        ("errors", "req", float(load.error_count), errors),
        ("client lag p99 (due -> sent)", "ms", percentile(load.lags_ms, 99), "no free connection, or a late client"),
        ("server CPU", "cores", cores.server, "server process and children"),
        ("server CPU, no requests", "cores", alone, f"{alone_is} alone, just before"),
        (
            "server CPU per request",
            "ms",
            (cores.server - alone) / load.rate * 1000 if load.rate else math.nan,
            "(server CPU - no requests) / rate; ~0 when saturated",
        ),
        ("bench client CPU", "cores", cores.client, "load client, RSS sampler"),
        ("other processes, meanwhile", "cores", cores.others, f"of {os.cpu_count()} cores; > 0.2: contended"),
    ]
    for name, unit, value, note in rows:
        b.report.row(section, name, unit, note=note).samples.append(value)


def job_alone(b: Bench) -> float:
    """Cores the server uses on the running job with no requests, over a short quiet spell."""
    cores: list[Cores] = []
    with cores_used(b.proc, cores):
        time.sleep(min(2.0, b.args.seconds))
    return cores[0].server


class StateAt(threading.Thread):
    """The job's status and pages done ``delay`` seconds from now (when the last request of the load is due),
    fetched on a connection of its own."""

    def __init__(self, b: Bench, job_id: str, delay: float) -> None:
        super().__init__(name="job-state", daemon=True)
        self.url, self.job_id, self.delay = b.server.url, job_id, delay
        self.done_before = job(b.client, job_id)["progress"]["pages_done"]
        self.state: dict[str, Any] | None = None
        self.start()

    def run(self) -> None:
        time.sleep(self.delay)
        with contextlib.suppress(httpx.HTTPError), httpx.Client(base_url=self.url, timeout=60, trust_env=False) as c:
            self.state = job(c, self.job_id)

    def describe(self, pages: int) -> str:
        self.join(timeout=60)
        if self.state is None:
            return "job state at the end unknown"
        status, done = self.state["status"], self.state["progress"]["pages_done"]
        running = "job processing to the end" if status == "processing" else f"job ENDED ({status}) before the end"
        return f"{running}, pages {self.done_before}->{done} of {pages}"


@dataclass
class Running:
    """A job being processed, with its SSE subscribers; ``final`` is its state once cancelled."""

    job_id: str
    subs: Subscribers | None = None
    final: dict[str, Any] | None = None

    def complete_subscribers(self) -> int:
        """Subscribers whose pages are exactly the job's finished pages, none twice, and whose end event came."""
        if self.subs is None or self.final is None:
            return 0
        final = self.final
        finished = {p["n"] for p in final["pages"] if p["status"] != "pending"}
        return sum(1 for s in self.subs.subs if s.pages == finished and not s.duplicates and s.end == final["status"])


@contextlib.contextmanager
def running_job(b: Bench, subscribers: int) -> Iterator[Running]:
    """A new job of ``b.job_pages`` pages followed by ``subscribers`` SSE clients from before it starts, processing
    (a first page done) when the block begins; cancelled, and its subscribers ended, when it ends."""
    run = Running(submit(b.client, b.job_pdf, text_layer="never"))
    try:
        if subscribers:
            run.subs = Subscribers(b.server.url, f"/api/v1/jobs/{run.job_id}/events", subscribers, timeout=300)
            run.subs.start()
            if not run.subs.all_connected.wait(60) or run.subs.failure is not None:
                raise BenchError(f"the {subscribers} subscribers did not all connect: {run.subs.failure!r}")
        wait_processing(b.client, run.job_id)
        yield run
    finally:
        with contextlib.suppress(Exception):
            run.final = cancel(b.client, run.job_id)
        if run.subs is not None and run.subs.ident is not None:
            run.subs.join(timeout=60)
    if run.subs is not None and run.subs.failure is not None:
        raise BenchError(f"the subscribers failed: {run.subs.failure!r}")


def measure(b: Bench, section: str, path_of: Callable[[str], str], subscribers: int = 0) -> None:
    """On a first job: the server's CPU with no requests, then the service time one GET at a time. On a second,
    new job (so that it runs through the whole load): the open-loop load on ``path_of(job_id)``."""
    with running_job(b, subscribers) as first:
        alone = job_alone(b)
        service = service_times(b, path_of(first.job_id))
    with running_job(b, subscribers) as second:
        at_end = StateAt(b, second.job_id, b.args.seconds)
        cores: list[Cores] = []
        with cores_used(b.proc, cores):
            load = run_load(b, path_of(second.job_id))
        state = at_end.describe(b.job_pages)
    alone_is = "the job"
    if subscribers:
        alone_is = f"the job and {subscribers} subscribers"
        runs = (first, second)
        subs = [s for run in runs if run.subs is not None for s in run.subs.subs]
        errors = sorted({s.error for s in subs if s.error})
        note = f"goal {subscribers}; without load, then under load" + (
            f"; errors: {', '.join(errors)}" if errors else ""
        )
        complete = b.report.row(section, "subscribers that saw every finished page once", "subs", note=note)
        complete.samples.extend(run.complete_subscribers() for run in runs)
        b.report.row(section, "page events per subscriber", "events", note="both runs").samples.extend(
            s.page_events for s in subs
        )
    record_load(b, section, load, cores[0], alone=alone, service=service, state=state, alone_is=alone_is)


def bench_status(b: Bench) -> None:
    rate = f"{b.args.rate:g}/s"
    measure(b, f"GET /api/v1/jobs/{{id}} @{rate}, job running", lambda j: f"/api/v1/jobs/{j}")
    measure(b, f"GET /api/v1/jobs/{{id}}?text=false @{rate}", lambda j: f"/api/v1/jobs/{j}?text=false")
    measure(b, f"GET /readyz @{rate}, job running", lambda _: "/readyz")


# -- 3. SSE fan-out ----------------------------------------------------------------------------------------------


def bench_fanout(b: Bench) -> None:
    count = b.args.subscribers
    section = f"SSE: {count} subscribers + GET /api/v1/jobs/{{id}} @{b.args.rate:g}/s"
    measure(b, section, lambda j: f"/api/v1/jobs/{j}", subscribers=count)


# -- main --------------------------------------------------------------------------------------------------------


def machine_facts(args: argparse.Namespace) -> dict[str, Any]:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "httpx": httpx.__version__,
        "engine": f"fake, {PAGE_DELAY} s/page (GNOSIS_FAKE_ENGINE_DELAY)",
        "load": f"open loop, {args.rate:g} req/s for {args.seconds:g} s per measurement, "
        f"{args.connections} keep-alive connections (asyncio streams, HTTP/1.1)",
        "repeats (upload)": args.repeats,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.service_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=None, help="size of the uploaded PDF in MB (default 500)")
    parser.add_argument("--rate", type=float, default=200.0, help="status requests per second")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per load measurement (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections of the load client")
    parser.add_argument("--repeats", type=int, default=3, help="upload repeats (medians are quoted)")
    parser.add_argument("--subscribers", type=int, default=50, help="SSE subscribers (0 skips the section)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 MB upload, 2 s per load")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the numbers here as JSON")
    args = parser.parse_args(argv)
    args.size_mb = args.size_mb if args.size_mb is not None else 20 if args.quick else 500
    args.seconds = args.seconds if args.seconds is not None else 2.0 if args.quick else 10.0
    if (
        args.size_mb < 1
        or args.rate <= 0
        or args.seconds <= 0
        or args.repeats < 1
        or args.subscribers < 0
        or args.connections < 1
    ):
        parser.error("--size-mb, --rate, --seconds, --repeats, --connections must be positive, --subscribers >= 0")
    return args


def verdict(report: Report) -> str:
    parts = []
    for row in report.rows:
        if row.name in ("RSS growth (peak - before)", "latency p99") and row.median is not None:
            parts.append(f"{row.section.split(',')[0]}: {row.name} {row.median:.1f} ({row.note.split(';')[0]})")
    return "; ".join(parts)


def run_all(args: argparse.Namespace, report: Report, tmp: Path, stack: contextlib.ExitStack) -> None:
    # long enough to run through the load even at full speed (the fake engine's delay per page)
    job_pages = max(MIN_JOB_PAGES, math.ceil((args.seconds + 2) / PAGE_DELAY))
    job_pdf = tmp / "job.pdf"
    write_pdf(job_pdf, job_pages)
    server = Server(tmp, max_bytes=args.size_mb * MB + 100 * MB)
    stack.callback(server.stop)
    report.facts["server"] = " ".join(["python", *server.argv[1:]]) + f" (pid {server.pid})"
    client = stack.enter_context(httpx.Client(base_url=server.url, timeout=60, trust_env=False))
    report.facts["server ready after"] = f"{server.wait_ready(client):.1f} s"
    sampler = RssSampler(server.pid)
    sampler.start()
    stack.callback(sampler.stop)
    report.facts["status jobs"] = (
        f"{job_pages}-page PDF ({job_pages * PAGE_DELAY:.0f} s of engine time); per measurement one job for the CPU at "
        "rest and the service time, a new one for the load; each cancelled after"
    )
    b = Bench(args, tmp, server, client, sampler, report, job_pdf, job_pages)
    bench_upload(b)
    bench_status(b)
    if args.subscribers:
        bench_fanout(b)
    if server.proc.poll() is not None:
        raise BenchError(f"the server exited ({server.proc.returncode}):\n{server.log_tail()}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (a CI timeout, `kill`) unwinds like an error, so the server and temp files go away too
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    report = Report(facts=machine_facts(args))
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gnosis-service-bench-")))
            run_all(args, report, tmp, stack)
    finally:
        report.facts["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        report.facts["bench client peak RSS"] = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
        report.facts["bench seconds"] = round(time.monotonic() - started, 1)
        report.facts["verdict"] = verdict(report)
        print_facts_and_rows(report, "gnosis-ocr service benchmark", width=180)
        if args.json_out is not None:
            report.write_json(args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
