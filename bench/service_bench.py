"""Service benchmark: the server's memory while a large upload streams in, status latency under a steady load
while a job runs (issue 4), and the memory and disk a 500-page job costs (issue 14). Medians and percentiles are
printed as a table; ``--json-out`` keeps them.

    .venv/bin/python -m bench.service_bench [--size-mb 500] [--rate 200] [--seconds 10] [--subscribers 50]
                                            [--pages 500] [--only SECTION]... [--server-src DIR] [--compare DIR]
                                            [--quick] [--json-out FILE]

    # the big jobs, the code of another checkout ("before") beside this one ("after"):
    git worktree add --detach /tmp/gnosis-before bf02a14
    .venv/bin/python -m bench.service_bench --only bigjobs --compare /tmp/gnosis-before

Sections: upload, status, fanout (one server for the three), bigjobs (a fresh server per job); all by default.
``--server-src DIR`` runs the server from DIR/src with this venv's packages; ``--compare DIR`` runs the big jobs
with DIR ("before") and with ``--server-src`` ("after"), each repeat both in turn, and prints both medians with
after/before.

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

Big jobs. A ``--pages``-page text PDF (a line of text a page) and a scan PDF of as many image-only pages (1-bit
150 dpi images of 44 lines of text, no text layer; ~7 KB a page) are each uploaded with text_layer=auto to a fresh
server with default settings but for the fake engine (``--big-delay`` s/page) and a TMPDIR of its own. Every text
page is taken from its text layer, every scan page goes to the engine; all are rendered and their images stored.
Reported per job: the server's RSS (with its worker processes) idle just before the upload, its peak from the upload
to the job's end and the growth (goal under 512 MiB), the server process's own growth, what it keeps a second
after the job is deleted, the time and pages/s, and the job folder's size on disk (du: page images, input, total,
per page). After the scan job its result.zip is downloaded and read as it comes: the RSS growth meanwhile, the
framing (Content-Length or chunked), the time to the first byte, and the peak growth of temporary files under the
server's TMPDIR, named or held open unlinked (``tempfile.TemporaryFile`` leaves no name in the folder).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import httpx
import psutil

from bench.report import Report, fmt, print_facts_and_rows

if TYPE_CHECKING:
    from rich.table import Table

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
BIG_PAGES = 500  # pages of each big job (the page limit's default, GNOSIS_MAX_PAGES)
BIG_DELAY = 0.01  # seconds per page of the fake engine in the big jobs
BIG_RSS_GOAL_MIB = 512.0
JOB_TIMEOUT = 1800.0  # seconds a big job may take to finish
POLL_SECONDS = 0.25
SECTIONS = ("upload", "status", "fanout", "bigjobs")
YES = "1=yes"  # the unit of a row that is a yes/no


class BenchError(RuntimeError):
    """A step of the benchmark failed (the server did not start, a request was refused)."""


# -- documents ---------------------------------------------------------------------------------------------------


class PdfOut:
    """A PDF written object by object to a file, with its cross-reference table at the end."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.offsets: list[int] = []
        out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")

    def begin(self, number: int) -> None:
        assert number == len(self.offsets) + 1
        self.offsets.append(self.out.tell())
        self.out.write(f"{number} 0 obj\n".encode())

    def obj(self, number: int, body: bytes) -> None:
        self.begin(number)
        self.out.write(body + b"\nendobj\n")

    def stream(self, number: int, head: str, data: bytes) -> None:
        """A stream object: ``head`` is the dictionary's entries other than /Length."""
        self.obj(number, f"<< {head} /Length {len(data)} >>\nstream\n".encode() + data + b"\nendstream")

    def finish(self) -> int:
        xref = self.out.tell()
        self.out.write(f"xref\n0 {len(self.offsets) + 1}\n0000000000 65535 f \n".encode())
        self.out.write(b"".join(f"{offset:010d} 00000 n \n".encode() for offset in self.offsets))
        self.out.write(f"trailer\n<< /Size {len(self.offsets) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
        return self.out.tell()


def write_pdf(path: Path, pages: int, *, pad_bytes: int = 0) -> int:
    """A valid PDF of ``pages`` letter pages with a line of text each, plus, when ``pad_bytes`` > 0, one stream
    object of that many random bytes that no page refers to (PDFium never reads it). Written in chunks; returns the
    file's size."""
    with path.open("wb") as out:
        pdf = PdfOut(out)
        kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(pages))
        pdf.obj(1, b"<< /Type /Catalog /Pages 2 0 R >>")
        pdf.obj(2, f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode())
        pdf.obj(3, b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
        for i in range(pages):
            pdf.obj(
                4 + 2 * i,
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                + f"/Contents {5 + 2 * i} 0 R >>".encode(),
            )
            text = f"BT /F1 24 Tf 72 700 Td (Service benchmark, page {i + 1} of {pages}) Tj ET".encode()
            pdf.stream(5 + 2 * i, "", text)
        if pad_bytes > 0:
            pdf.begin(4 + 2 * pages)
            out.write(f"<< /Length {pad_bytes} >>\nstream\n".encode())
            left = pad_bytes
            while left:
                n = min(left, 8 * MIB)
                out.write(os.urandom(n))
                left -= n
            out.write(b"\nendstream\nendobj\n")
        return pdf.finish()


SCAN_SIZE = (1275, 1650)  # a letter page scanned at 150 dpi


def write_scan_pdf(path: Path, pages: int) -> int:
    """A PDF of ``pages`` image-only letter pages, as a scanner makes them: each page one 1-bit 150 dpi image of
    44 lines of text that differ from page to page (Flate, ~7 KB a page) and no text layer, so every page needs
    the engine. Returns the file's size."""
    import zlib

    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=18)
    width, height = SCAN_SIZE
    with path.open("wb") as out:
        pdf = PdfOut(out)
        kids = " ".join(f"{3 + 3 * i} 0 R" for i in range(pages))
        pdf.obj(1, b"<< /Type /Catalog /Pages 2 0 R >>")
        pdf.obj(2, f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode())
        for i in range(pages):
            page, contents, image = 3 + 3 * i, 4 + 3 * i, 5 + 3 * i
            pdf.obj(
                page,
                f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /XObject << /Im0 {image} 0 R "
                f">> >> /Contents {contents} 0 R >>".encode(),
            )
            pdf.stream(contents, "", b"q 612 0 0 792 0 0 cm /Im0 Do Q")
            scan = Image.new("1", SCAN_SIZE, 1)
            draw = ImageDraw.Draw(scan)
            for line in range(44):
                words = f"Scanned page {i + 1} of {pages}, line {line + 1}: the quick brown fox jumps over the lazy dog"
                draw.text((100, 100 + 33 * line), f"{words} {7 * line + i}", fill=0, font=font)
            pdf.stream(
                image,
                f"/Type /XObject /Subtype /Image /Width {width} /Height {height} /ColorSpace /DeviceGray "
                "/BitsPerComponent 1 /Filter /FlateDecode",
                zlib.compress(scan.tobytes(), 6),
            )
        return pdf.finish()


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


def server_env(tmp: Path, src: Path = ROOT, **settings: str) -> dict[str, str]:
    """Our environment without any GNOSIS_* or model settings, plus the bench's and ``settings``; the server's
    code comes from ``src``/src (another checkout with ``--server-src``), its packages from this venv."""
    drop = ("MODEL_CACHE_PATH", "MODEL_NAME", "HF_HOME", "HF_HUB_CACHE", "HF_TOKEN", "HF_ENDPOINT", "PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GNOSIS_") and k not in drop}
    # ROOT: the fake engine is the tests' (tests/support/fakeengine.py), brought in through the plugin seam; a
    # checkout from before the seam has it built in and ignores GNOSIS_ENGINE_PLUGINS
    path = [str(src / "src"), str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    return (
        env
        | {
            "PYTHONPATH": os.pathsep.join(path),
            "GNOSIS_ENGINE": "fake",
            "GNOSIS_ENGINE_PLUGINS": "fake=tests.support.fakeengine:fake_engine",
            "GNOSIS_FAKE_ENGINE_DELAY": str(PAGE_DELAY),
            "GNOSIS_STORAGE": str(tmp / "storage"),
            "MODEL_CACHE_PATH": str(tmp / "model-cache"),
            "HF_ENDPOINT": UNREACHABLE,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "GNOSIS_HOST": "127.0.0.1",
        }
        | settings
    )


class Server:
    """``python -m gnosis_ocr serve`` as a child process with ``env``, its output in ``tmp``/server.log."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "server.log"
        self.argv = [sys.executable, "-m", "gnosis_ocr", "serve", "--port", str(self.port)]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.argv, env=env, cwd=tmp, stdout=self._log, stderr=subprocess.STDOUT)
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


@dataclass(frozen=True)
class RssSample:
    at: float  # monotonic
    total: int  # the process and its children
    root: int  # the process alone
    processes: int


class RssSampler(threading.Thread):
    """Samples the RSS of a process and its children (the child list refreshed every 0.5 s) every 10 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self._root = psutil.Process(pid)
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._samples: list[RssSample] = []

    def run(self) -> None:
        procs, listed = [self._root], 0.0
        while not self._stop_event.is_set():
            now = time.monotonic()
            if now - listed > 0.5:
                with contextlib.suppress(psutil.Error):
                    procs = [self._root, *self._root.children(recursive=True)]
                listed = now
            rss, root, alive = 0, 0, 0
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    size = proc.memory_info().rss
                    rss, alive = rss + size, alive + 1
                    root = size if proc is self._root else root
            if rss:
                with self._lock:
                    self._samples.append(RssSample(now, rss, root, alive))
            self._stop_event.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=2)

    def latest(self) -> int:
        with self._lock:
            return self._samples[-1].total if self._samples else 0

    def peak(self, start: float, end: float) -> int:
        return self.peak_sample(start, end).total

    def peak_sample(self, start: float, end: float) -> RssSample:
        """The sample with the largest total between ``start`` and ``end``; the highest RSS of the process alone in
        that time replaces its ``root``."""
        with self._lock:
            window = [s for s in self._samples if start <= s.at <= end]
        if not window:
            return RssSample(end, 0, 0, 0)
        top = max(window, key=lambda s: s.total)
        return RssSample(top.at, top.total, max(s.root for s in window), top.processes)


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


# -- 4. big jobs: memory and disk of a 500-page text PDF and a 500-page scan -------------------------------------


@dataclass(frozen=True)
class Checkout:
    """Where a server's code comes from (``DIR/src``); ``label`` names it in the table."""

    label: str
    path: Path


def checkout_fact(checkout: Checkout, work: Path) -> str:
    """The gnosis_ocr the server imports with this checkout, its commit, and whether src/ has uncommitted changes."""
    env = server_env(work, checkout.path)
    imported = subprocess.run(
        [sys.executable, "-c", "import gnosis_ocr; print(gnosis_ocr.__file__)"],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    git = ["git", "-C", str(checkout.path)]
    commit = subprocess.run([*git, "log", "-1", "--format=%h"], capture_output=True, text=True, check=False)
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True, check=False)
    changes = f", {len(dirty.stdout.splitlines())} files changed in src/" if dirty.stdout.strip() else ""
    return f"{checkout.path} at {commit.stdout.strip() or '?'}{changes}; imports {imported or '?'}"


@dataclass(frozen=True)
class Usage:
    files: int
    allocated: int  # bytes on disk (st_blocks)
    apparent: int  # bytes the files hold


def disk_usage(folder: Path) -> Usage:
    files = allocated = apparent = 0
    for root, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                stat = os.lstat(os.path.join(root, name))
                files, allocated, apparent = files + 1, allocated + stat.st_blocks * 512, apparent + stat.st_size
    return Usage(files, allocated, apparent)


def held_unlinked(pid: int, folder: Path) -> int:
    """Bytes of files under ``folder`` that the process and its children hold open with no name there any more
    (a spool made by ``tempfile.TemporaryFile``: O_TMPFILE or unlinked, invisible to a walk of the folder)."""
    prefix, total = str(folder), 0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in (root, *root.children(recursive=True)):
            fd_dir = f"/proc/{proc.pid}/fd"
            with contextlib.suppress(OSError):
                for fd in os.listdir(fd_dir):
                    with contextlib.suppress(OSError):
                        target = os.readlink(f"{fd_dir}/{fd}")
                        if target.startswith(prefix) and target.endswith(" (deleted)"):
                            total += os.stat(f"{fd_dir}/{fd}").st_size
    return total


class TempWatch(threading.Thread):
    """The peak bytes of temporary files under ``folder`` (the server's TMPDIR), named or held open unlinked,
    sampled every 20 ms."""

    def __init__(self, folder: Path, pid: int) -> None:
        super().__init__(name="temp-watch", daemon=True)
        self.folder, self.pid = folder, pid
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, disk_usage(self.folder).apparent + held_unlinked(self.pid, self.folder))
            self._stop_event.wait(0.02)

    def stop(self) -> int:
        self._stop_event.set()
        self.join(timeout=5)
        return self.peak


@dataclass(frozen=True)
class Download:
    status: int
    size: int
    seconds: float
    first_byte: float  # seconds from the request to the first byte of the body
    content_length: str | None
    transfer_encoding: str | None
    before: int  # server RSS just before
    peak: RssSample
    temp_before: int
    temp_peak: int
    entries: int | None  # from the ZIP's end-of-central-directory record; None when there is none


def download_zip(client: httpx.Client, server: Server, sampler: RssSampler, tmpdir: Path, job_id: str) -> Download:
    """GET result.zip, reading it as it comes and keeping only its last 64 KiB (to find the ZIP's end record),
    while the sampler watches the server's RSS and a TempWatch its TMPDIR."""
    time.sleep(0.5)
    before = sampler.latest()
    temp_before = disk_usage(tmpdir).apparent + held_unlinked(server.pid, tmpdir)
    watch = TempWatch(tmpdir, server.pid)
    watch.start()
    size, tail, first = 0, b"", None
    started = time.monotonic()
    try:
        with client.stream("GET", f"/api/v1/jobs/{job_id}/result.zip", timeout=600) as response:
            headers = response.headers
            for chunk in response.iter_raw(CHUNK):
                first = first or time.monotonic()
                size += len(chunk)
                tail = (tail + chunk)[-65536:]
        ended = time.monotonic()
        time.sleep(2 * SAMPLE_SECONDS)
    finally:
        temp_peak = watch.stop()
    end = tail.rfind(b"PK\x05\x06")
    return Download(
        status=response.status_code,
        size=size,
        seconds=ended - started,
        first_byte=(first or ended) - started,
        content_length=headers.get("content-length"),
        transfer_encoding=headers.get("transfer-encoding"),
        before=before,
        peak=sampler.peak_sample(started, ended),
        temp_before=temp_before,
        temp_peak=temp_peak,
        entries=int.from_bytes(tail[end + 10 : end + 12], "little") if end >= 0 and len(tail) >= end + 12 else None,
    )


@dataclass(frozen=True)
class BigJob:
    state: dict[str, Any]
    idle: int  # server RSS, fresh and idle, just before the upload
    peak: RssSample  # upload to the job's end
    seconds: float  # upload to the job's end
    cores: Cores
    images: Usage  # jobs/<id>/pages
    inputs: Usage  # jobs/<id>/inputs
    folder: Usage  # jobs/<id>, all of it
    after_delete: int  # server RSS a second after the job was deleted
    download: Download | None


def wait_finished(client: httpx.Client, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job(client, job_id)
        if state["status"] in ("done", "failed", "cancelled"):
            return state
        time.sleep(POLL_SECONDS)
    raise BenchError(f"job {job_id} did not finish within {timeout:.0f} s")


def big_job(args: argparse.Namespace, work: Path, checkout: Checkout, pdf: Path, *, zip_after: bool) -> BigJob:
    """One job on a fresh server of ``checkout`` (default settings, the fake engine at ``--big-delay`` s/page, its
    TMPDIR a folder of its own): the upload of ``pdf`` with text_layer=auto, run to its end, then optionally the
    download of its result.zip, then its deletion. The server and its folder are removed after."""
    (work / "tmp").mkdir(parents=True)
    env = server_env(work, checkout.path, GNOSIS_FAKE_ENGINE_DELAY=f"{args.big_delay:g}", TMPDIR=str(work / "tmp"))
    server = Server(work, env)
    sampler: RssSampler | None = None
    try:
        with httpx.Client(base_url=server.url, timeout=60, trust_env=False) as client:
            server.wait_ready(client)
            sampler = RssSampler(server.pid)
            sampler.start()
            time.sleep(1.0)  # the server at rest
            idle = sampler.latest()
            cores: list[Cores] = []
            started = time.monotonic()
            with cores_used(psutil.Process(server.pid), cores):
                job_id = submit(client, pdf, text_layer="auto")
                state = wait_finished(client, job_id, JOB_TIMEOUT)
            ended = time.monotonic()
            time.sleep(2 * SAMPLE_SECONDS)
            folder = work / "storage" / "jobs" / job_id
            result = BigJob(
                state=state,
                idle=idle,
                peak=sampler.peak_sample(started, ended),
                seconds=ended - started,
                cores=cores[0],
                images=disk_usage(folder / "pages"),
                inputs=disk_usage(folder / "inputs"),
                folder=disk_usage(folder),
                after_delete=0,
                download=download_zip(client, server, sampler, work / "tmp", job_id) if zip_after else None,
            )
            client.delete(f"/api/v1/jobs/{job_id}").raise_for_status()
            time.sleep(1.0)
            if server.proc.poll() is not None:
                raise BenchError(f"the server exited ({server.proc.returncode}):\n{server.log_tail()}")
            return replace(result, after_delete=sampler.latest())
    except BaseException:
        with contextlib.suppress(OSError):
            sys.stderr.write(f"server log ({checkout.label}):\n{server.log_tail()}\n")
        raise
    finally:
        if sampler is not None:
            sampler.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def record_big_job(report: Report, section: str, run: BigJob, pages: int) -> None:
    state = run.state
    sources: dict[str, int] = {}
    for page in state["pages"] or []:
        key = page["source"] or page["status"]
        sources[key] = sources.get(key, 0) + 1
    taken = ", ".join(f"{v} {k}" for k, v in sorted(sources.items()))
    growth = (run.peak.total - run.idle) / MIB
    rows: list[tuple[str, str, float, str]] = [
        ("server RSS, idle", "MiB", run.idle / MIB, "fresh server + children, just before the upload"),
        (
            "RSS peak, upload to done",
            "MiB",
            run.peak.total / MIB,
            f"server + {run.peak.processes - 1} worker process(es) at the peak",
        ),
        ("RSS growth (peak - idle)", "MiB", growth, goal_note(growth, BIG_RSS_GOAL_MIB, "MiB")),
        ("server process alone: growth", "MiB", (run.peak.root - run.idle) / MIB, "its worker processes left out"),
        ("RSS kept after delete (- idle)", "MiB", (run.after_delete - run.idle) / MIB, "1 s after DELETE"),
        ("upload to done", "s", run.seconds, f"{state['status']}; pages: {taken}"),
        ("pages/s", "pages/s", pages / run.seconds, ""),
        ("page images on disk", "MB", run.images.allocated / MB, f"{run.images.files} files (du)"),
        ("page images per page", "kB", run.images.allocated / 1000 / pages, ""),
        ("input on disk", "MB", run.inputs.allocated / MB, "the uploaded PDF"),
        ("job folder per page", "kB", run.folder.allocated / 1000 / pages, "images + input + job.json"),
        ("job folder total", "MB", run.folder.allocated / MB, f"{run.folder.files} files"),
        ("server CPU", "cores", run.cores.server, "server and its children, upload to done"),
        ("other processes, meanwhile", "cores", run.cores.others, f"of {os.cpu_count()} cores; > 0.2: contended"),
    ]
    if state["status"] != "done" or state["progress"]["pages_done"] != pages:
        rows.append(("pages done", "pages", float(state["progress"]["pages_done"]), f"EXPECTED {pages} done"))
    for name, unit, value, note in rows:
        report.row(section, name, unit, note=note).samples.append(value)


def record_download(report: Report, section: str, got: Download) -> None:
    framing = f"Content-Length: {got.content_length or 'none'}; Transfer-Encoding: {got.transfer_encoding or 'none'}"
    entries = f"{got.entries} entries" if got.entries is not None else "NO ZIP end record"
    rows: list[tuple[str, str, float, str]] = [
        ("ZIP size", "MB", got.size / MB, f"HTTP {got.status}, {entries}"),
        ("download time", "s", got.seconds, "request to the last byte"),
        ("download rate", "MB/s", got.size / MB / got.seconds if got.seconds else math.nan, ""),
        ("first byte after", "s", got.first_byte, "request to the first byte of the body"),
        ("server RSS before", "MiB", got.before / MIB, "just before the request"),
        ("RSS growth during download", "MiB", (got.peak.total - got.before) / MIB, "server + children"),
        ("temp files under TMPDIR, peak growth", "MB", (got.temp_peak - got.temp_before) / MB, "named or unlinked"),
        ("Content-Length sent", YES, float(got.content_length is not None), framing),
        ("chunked", YES, float((got.transfer_encoding or "").lower() == "chunked"), ""),
    ]
    for name, unit, value, note in rows:
        report.row(section, name, unit, note=note).samples.append(value)


def bench_bigjobs(args: argparse.Namespace, reports: dict[str, Report], facts: dict[str, Any], tmp: Path) -> None:
    """Each repeat runs every checkout in turn (so a change in the machine's load hits before and after alike),
    each job on a fresh server."""
    pages = args.pages
    text_pdf, scan_pdf = tmp / f"text-{pages}.pdf", tmp / f"scan-{pages}.pdf"
    started = time.monotonic()
    text_size, scan_size = write_pdf(text_pdf, pages), write_scan_pdf(scan_pdf, pages)
    facts["big jobs"] = (
        f"{pages}-page text PDF ({text_size / 1000:.0f} kB, a line of text a page) and {pages}-page scan PDF "
        f"({scan_size / MB:.1f} MB, 1-bit 150 dpi page images, no text layer; written in "
        f"{time.monotonic() - started:.0f} s), each uploaded with text_layer=auto to a fresh server with default "
        f"settings, fake engine {args.big_delay:g} s/page; {args.repeats} repeat(s), checkouts interleaved"
    )
    checkouts = [Checkout(label, path) for label, path in args.checkouts]
    for checkout in checkouts:
        facts[f"server code ({checkout.label})"] = checkout_fact(checkout, tmp)
    text = f"{pages}-page text PDF (text_layer=auto)"
    scan = f"{pages}-page scan PDF (OCR every page)"
    download = f"GET result.zip of the {pages}-page scan job"
    for repeat in range(args.repeats):
        for checkout in checkouts:
            report = reports[checkout.label]
            work = tmp / f"{checkout.label}-{repeat}"
            run = big_job(args, work / "text", checkout, text_pdf, zip_after=False)
            record_big_job(report, text, run, pages)
            run = big_job(args, work / "scan", checkout, scan_pdf, zip_after=True)
            record_big_job(report, scan, run, pages)
            assert run.download is not None
            record_download(report, download, run.download)
            print(
                f"repeat {repeat + 1}/{args.repeats} {checkout.label}: scan job {run.seconds:.0f} s, "
                f"RSS growth {(run.peak.total - run.idle) / MIB:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )


def compare_table(before: Report, after: Report) -> Table:
    """The rows of ``after`` beside the same rows of ``before``: medians and after/before."""
    from rich.table import Table

    table = Table()
    for name in ("section", "measurement", "unit", "before", "after", "after/before", "n", "note"):
        table.add_column(name, justify="right" if name in ("before", "after", "after/before", "n") else "left")
    last = None
    for row in after.grouped():
        old = next((r for r in before.rows if (r.section, r.name) == (row.section, row.name)), None)
        old_median = old.median if old is not None else None
        ratio = f"{row.median / old_median:.2f}x" if row.median is not None and old_median and row.unit != YES else ""
        note = row.note
        if old is not None and old.note and old.note != row.note:
            note = f"before: {old.note} | after: {row.note}"
        n = f"{len(old.samples) if old is not None else 0}/{len(row.samples)}"
        table.add_row(
            row.section if row.section != last else "",
            row.name,
            row.unit,
            fmt(old_median),
            fmt(row.median),
            ratio,
            n,
            note,
        )
        last = row.section
    return table


def print_compare(facts: dict[str, Any], before: Report, after: Report, width: int) -> None:
    from rich.console import Console

    console = Console(width=width, highlight=False)
    console.print("[bold]gnosis-ocr service benchmark: before and after[/bold]")
    for key, value in facts.items():
        console.print(f"  {key}: {value}")
    console.print(compare_table(before, after))


# -- main --------------------------------------------------------------------------------------------------------


def machine_facts(args: argparse.Namespace) -> dict[str, Any]:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    facts: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "httpx": httpx.__version__,
        "sections": ", ".join(args.only),
    }
    if set(args.only) & {"upload", "status", "fanout"}:
        facts |= {
            "engine": f"fake, {PAGE_DELAY} s/page (GNOSIS_FAKE_ENGINE_DELAY)",
            "load": f"open loop, {args.rate:g} req/s for {args.seconds:g} s per measurement, "
            f"{args.connections} keep-alive connections (asyncio streams, HTTP/1.1)",
        }
    facts["repeats (upload, big jobs)"] = args.repeats
    return facts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.service_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=None, help="size of the uploaded PDF in MB (default 500)")
    parser.add_argument("--rate", type=float, default=200.0, help="status requests per second")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per load measurement (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections of the load client")
    parser.add_argument("--repeats", type=int, default=3, help="upload and big-job repeats (medians are quoted)")
    parser.add_argument("--subscribers", type=int, default=50, help="SSE subscribers (0 skips the section)")
    parser.add_argument("--pages", type=int, default=None, help=f"pages of each big job (default {BIG_PAGES})")
    parser.add_argument(
        "--big-delay", type=float, default=BIG_DELAY, help="seconds per page of the fake engine in the big jobs"
    )
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, default=None, help="run only this section (repeatable)"
    )
    parser.add_argument(
        "--server-src", type=Path, default=ROOT, help="run the server from this checkout (DIR/src), same venv"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        metavar="DIR",
        help="big jobs only: run them with the server from DIR ('before') and from --server-src ('after'), "
        "interleaved, and print both with after/before",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 MB upload, 2 s per load, 50 pages")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the numbers here as JSON")
    args = parser.parse_args(argv)
    args.size_mb = args.size_mb if args.size_mb is not None else 20 if args.quick else 500
    args.seconds = args.seconds if args.seconds is not None else 2.0 if args.quick else 10.0
    args.pages = args.pages if args.pages is not None else 50 if args.quick else BIG_PAGES
    if args.compare is not None and args.only not in (None, ["bigjobs"]):
        parser.error("--compare runs the bigjobs section only")
    args.only = args.only or (["bigjobs"] if args.compare is not None else list(SECTIONS))
    if args.subscribers == 0 and "fanout" in args.only:
        args.only.remove("fanout")
    for path in (args.server_src, *([args.compare] if args.compare is not None else [])):
        if not (path / "src" / "gnosis_ocr").is_dir():
            parser.error(f"{path} has no src/gnosis_ocr")
    args.server_src, args.compare = args.server_src.resolve(), args.compare and args.compare.resolve()
    args.checkouts = (
        [("before", args.compare), ("after", args.server_src)] if args.compare else [("server", args.server_src)]
    )
    if (
        args.size_mb < 1
        or args.rate <= 0
        or args.seconds <= 0
        or args.repeats < 1
        or args.subscribers < 0
        or args.connections < 1
        or args.pages < 1
        or args.big_delay < 0
    ):
        parser.error(
            "--size-mb, --rate, --seconds, --repeats, --connections, --pages must be positive, "
            "--subscribers and --big-delay >= 0"
        )
    return args


def verdict(report: Report) -> str:
    parts = []
    for row in report.rows:
        if row.name in ("RSS growth (peak - before)", "RSS growth (peak - idle)", "latency p99") and row.median:
            section = re.split(r"[,(]", row.section)[0].strip()
            parts.append(f"{section}: {row.name} {row.median:.1f} ({row.note.split(';')[0]})")
    return "; ".join(parts)


def run_all(args: argparse.Namespace, report: Report, tmp: Path, stack: contextlib.ExitStack) -> None:
    """The upload, status and fan-out sections, on one server."""
    # long enough to run through the load even at full speed (the fake engine's delay per page)
    job_pages = max(MIN_JOB_PAGES, math.ceil((args.seconds + 2) / PAGE_DELAY))
    job_pdf = tmp / "job.pdf"
    write_pdf(job_pdf, job_pages)
    max_bytes = str(args.size_mb * MB + 100 * MB)
    env = server_env(tmp, args.server_src, GNOSIS_MAX_BYTES=max_bytes, GNOSIS_MAX_UPLOAD_BYTES=max_bytes)
    server = Server(tmp, env)
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
    if "upload" in args.only:
        bench_upload(b)
    if "status" in args.only:
        bench_status(b)
    if "fanout" in args.only:
        bench_fanout(b)
    if server.proc.poll() is not None:
        raise BenchError(f"the server exited ({server.proc.returncode}):\n{server.log_tail()}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (a CI timeout, `kill`) unwinds like an error, so the server and temp files go away too
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    facts = machine_facts(args)
    facts["command"] = " ".join(["python -m bench.service_bench", *(argv if argv is not None else sys.argv[1:])])
    reports = {label: Report(facts=facts) for label, _ in args.checkouts}
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gnosis-service-bench-")))
            if set(args.only) & {"upload", "status", "fanout"}:
                (tmp / "service").mkdir()
                run_all(args, reports["server"], tmp / "service", stack)
            if "bigjobs" in args.only:
                bench_bigjobs(args, reports, facts, tmp)
    finally:
        facts["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        facts["bench client peak RSS"] = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
        facts["bench seconds"] = round(time.monotonic() - started, 1)
        if args.compare is not None:
            before, after = reports["before"], reports["after"]
            facts["verdict"] = f"before: {verdict(before)} | after: {verdict(after)}"
            print_compare(facts, before, after, width=200)
            if args.json_out is not None:
                both = {"facts": facts, "before": before.to_json()["rows"], "after": after.to_json()["rows"]}
                args.json_out.parent.mkdir(parents=True, exist_ok=True)
                args.json_out.write_text(json.dumps(both, indent=2, default=str) + "\n")
        else:
            report = reports["server"]
            facts["verdict"] = verdict(report)
            print_facts_and_rows(report, "gnosis-ocr service benchmark", width=180)
            if args.json_out is not None:
                report.write_json(args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
