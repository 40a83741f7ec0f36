"""A server killed mid-job (SIGKILL, no goodbye): the next start resumes the job from its first unfinished page, or
ends it as failed with the reason when its input is gone. No job stays "processing"."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import UNREACHABLE, wait_for
from tests.api.jobclient import submit, wait_finished
from tests.documents import make
from tests.support.objectstores import free_port, terminate

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


class Server:
    def __init__(self, storage: Path, cache: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "GNOSIS_ENGINE": "fake",
            "GNOSIS_FAKE_ENGINE_DELAY": "0.3",
            "GNOSIS_STORAGE": str(storage),
            "MODEL_CACHE_PATH": str(cache),
            "HF_ENDPOINT": UNREACHABLE,
        }
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gnosis_ocr", "serve", "--port", str(self.port)],
            env=env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=10, trust_env=False)
        wait_for(self._ready, 60, "the server to be ready")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, "the server exited during start-up"
        try:
            return self.client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def metric(self, name: str) -> float:
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.close()

    def close(self) -> None:
        self.client.close()
        terminate(self.proc)  # type: ignore[arg-type]
        self.log.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[], Server]]:
    """``start()`` runs a server on this test's storage and cache (every one started is stopped afterwards)."""
    started: list[Server] = []

    def run() -> Server:
        started.append(Server(tmp_path / "storage", tmp_path / "cache", tmp_path / "server.log"))
        return started[-1]

    yield run
    for server in started:
        server.close()


def _stored(storage: Path, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((storage / "jobs" / job_id / "job.json").read_text())
    return data


def _running_job(server: Server, storage: Path, pages: int, done: int) -> str:
    """Submit a ``pages``-page PDF and wait until the store shows its first ``done`` pages finished."""
    pdf = make.text_pdf([[f"line of page {i}"] for i in range(1, pages + 1)])
    job_id: str = submit(server.client, [("long.pdf", pdf)])["id"]
    wait_for(lambda: _stored(storage, job_id)["pages"][done - 1]["status"] == "done", 60, f"{done} page(s)")
    return job_id


def test_killed_mid_job_resumes_from_the_first_unfinished_page(tmp_path: Path, start: Callable[[], Server]) -> None:
    storage = tmp_path / "storage"
    first = start()
    job_id = _running_job(first, storage, pages=10, done=3)
    first.kill()

    before = _stored(storage, job_id)
    assert before["status"] == "processing"
    saved = {p["n"]: p["markdown"] for p in before["pages"] if p["status"] == "done"}
    assert 3 <= len(saved) < 10

    second = start()
    final = wait_finished(second.client, job_id, timeout=60)
    assert final["status"] == "done" and final["progress"]["pages_done"] == 10
    assert all(final["pages"][n - 1]["markdown"] == text for n, text in saved.items())  # kept
    assert second.metric("gnosis_jobs_resumed_total") == 1
    assert second.metric('gnosis_pages_total{source="ocr",status="done"}') == 10 - len(saved)  # only the rest read
    assert _stored(storage, job_id)["attempts"] == 2


def test_killed_mid_job_with_its_input_gone_fails_with_the_reason(tmp_path: Path, start: Callable[[], Server]) -> None:
    storage = tmp_path / "storage"
    first = start()
    job_id = _running_job(first, storage, pages=8, done=1)
    first.kill()
    (storage / "jobs" / job_id / "inputs" / "0").unlink()

    final = wait_finished(start().client, job_id, timeout=60)
    assert final["status"] == "failed"
    assert final["error"]["type"] == "InputLostError" and "long.pdf" in final["error"]["message"]
    assert final["pages"][0]["status"] == "done"  # what was done before stays readable
    assert all(p["status"] != "pending" for p in final["pages"])


def test_graceful_stop_requeues_and_the_next_start_finishes(tmp_path: Path, start: Callable[[], Server]) -> None:
    storage = tmp_path / "storage"
    first = start()
    job_id = _running_job(first, storage, pages=8, done=1)
    first.proc.send_signal(signal.SIGTERM)
    first.proc.wait(20)
    assert _stored(storage, job_id)["status"] == "queued"

    assert wait_finished(start().client, job_id, timeout=60)["status"] == "done"
