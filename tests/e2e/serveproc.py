"""A real ``gnosis-ocr serve`` in a subprocess (fake engine, storage in tmp), and raw-socket helpers for hostile
clients: the server's own protocol and settings are what the tests in this folder exercise."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.api.conftest import UNREACHABLE, wait_for
from tests.api.jobclient import submit, wait_finished
from tests.documents import make
from tests.support.objectstores import free_port, terminate

ROOT = Path(__file__).resolve().parents[2]


class ServeProcess:
    """``gnosis-ocr serve`` on a free loopback port with ``env`` on top of a fake-engine configuration."""

    def __init__(
        self, tmp: Path, env: dict[str, str], headers: dict[str, str] | None = None, timeout: float = 10
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),  # this checkout's code
            "GNOSIS_ENGINE": "fake",
            "GNOSIS_STORAGE": str(tmp / "storage"),
            "MODEL_CACHE_PATH": str(tmp / "cache"),
            "HF_ENDPOINT": UNREACHABLE,
            **env,
        }
        self.log_path = tmp / f"serve-{self.port}.log"
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gnosis_ocr", "serve", "--port", str(self.port)],
            env=full,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=timeout, trust_env=False, headers=headers)
        wait_for(self._ready, 60, "the server to be ready")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, f"the server exited during start-up:\n{self.log_text()}"
        try:
            return self.client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def metric(self, name: str) -> float:
        """The first sample of ``name`` in /metrics (0 when absent)."""
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith((name + " ", name + "{")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def normal_job(self, timeout: float = 60) -> None:
        """A one-page upload runs to ``done``: the server is serving."""
        assert self.proc.poll() is None, "the server is gone"
        job = submit(self.client, [("normal.pdf", make.text_pdf([["a normal page"]]))])
        assert wait_finished(self.client, job["id"], timeout=timeout)["status"] == "done"

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def close(self) -> None:
        self.client.close()
        terminate(self.proc)  # type: ignore[arg-type]
        self.log.close()


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float | None]:
    """What the server sent until it closed the connection, and after how many seconds (None: still open)."""
    began = time.monotonic()
    data = b""
    while (left := timeout - (time.monotonic() - began)) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except (ConnectionResetError, BrokenPipeError):
            return data, time.monotonic() - began
        if not chunk:
            return data, time.monotonic() - began
        data += chunk
    return data, None


def status_of(response: bytes) -> int | None:
    line = response.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 and line[0].startswith(b"HTTP/") else None


def header_of(response: bytes, name: str) -> str | None:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None
