"""Hostile documents against a real ``gnosis-ocr serve``: a 4 KB render bomb fails its own page and nothing else
(the server stays up, its memory flat, other jobs run during and after, a restart does not run it again), and
many-frame TIFFs uploaded at once are refused fast without stalling reads of other jobs."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.api.jobclient import submit, upload, wait_finished
from tests.documents import make
from tests.e2e.serveproc import ServeProcess

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


HOSTILE_ENV = {
    "GNOSIS_FAKE_ENGINE_DELAY": "0.2",
    # a low ceiling bounds the test's own risk: the bomb takes whatever it is allowed
    "GNOSIS_RENDER_MEMORY_MIB": "512",
    "GNOSIS_RENDER_TIMEOUT_SECONDS": "30",
    "GNOSIS_RENDER_WORKERS": "2",
}


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[], ServeProcess]]:
    started: list[ServeProcess] = []

    def run() -> ServeProcess:
        started.append(ServeProcess(tmp_path, HOSTILE_ENV, timeout=30))
        return started[-1]

    yield run
    for server in started:
        server.close()


def _normal_job(server: ServeProcess, label: str) -> dict[str, Any]:
    job_id = submit(server.client, [(f"{label}.pdf", make.text_pdf([[f"{label} page 1"], [f"{label} page 2"]]))])
    return wait_finished(server.client, job_id["id"], timeout=60)


def test_a_render_bomb_fails_its_page_and_the_server_serves_on(
    tmp_path: Path, start: Callable[[], ServeProcess]
) -> None:
    server = start()
    ours = psutil.Process(server.proc.pid)
    assert _normal_job(server, "before")["status"] == "done"
    baseline = ours.memory_info().rss
    peak = baseline
    bomb_id: str = submit(server.client, [("bomb.pdf", make.render_bomb_pdf())])["id"]
    during = submit(server.client, [("during.pdf", make.text_pdf([["while the bomb renders"]]))])["id"]
    deadline = time.monotonic() + 90
    while True:  # sample the server's memory while the bomb goes off in its renderer
        peak = max(peak, ours.memory_info().rss)
        bomb = server.client.get(f"/api/v1/jobs/{bomb_id}").json()
        if bomb["status"] in ("done", "failed"):
            break
        assert time.monotonic() < deadline, f"the bomb job is still {bomb['status']}"
        time.sleep(0.05)
    assert server.proc.poll() is None, "the server died"
    assert wait_finished(server.client, during, timeout=60)["status"] == "done"
    assert [p["status"] for p in bomb["pages"]] == ["done", "failed", "done"]
    assert bomb["status"] == "done"
    assert ": page 2 could not be rendered within 512 MiB / 30 s" in bomb["pages"][1]["error"]
    assert "malformed or hostile" in bomb["pages"][1]["error"]
    assert peak - baseline < 150 * 2**20, f"server RSS grew by {(peak - baseline) / 2**20:.0f} MiB"
    assert _normal_job(server, "after")["status"] == "done"
    server.close()

    again = start()  # a restart finds the job finished: nothing resumes, the bomb is not rendered again
    assert again.client.get(f"/api/v1/jobs/{bomb_id}").json()["status"] == "done"
    assert again.metric("gnosis_jobs_resumed_total") == 0
    stored = json.loads((tmp_path / "storage" / "jobs" / bomb_id / "job.json").read_text())
    assert stored["attempts"] == 1


def test_many_frame_tiffs_at_once_are_refused_fast_and_reads_stay_quick(start: Callable[[], ServeProcess]) -> None:
    server = start()
    job = _normal_job(server, "kept")
    tiff = make.many_frame_tiff(20_000)  # 2 MB; Pillow alone needs seconds to count its frames
    assert len(tiff) < 2_500_000
    statuses: list[int] = []
    took: list[float] = []

    def send() -> None:
        with httpx.Client(base_url=server.client.base_url, timeout=120, trust_env=False) as client:
            started = time.monotonic()
            statuses.append(upload(client, [("frames.tiff", tiff)]).status_code)
            took.append(time.monotonic() - started)

    senders = [threading.Thread(target=send) for _ in range(30)]
    for thread in senders:
        thread.start()
    latencies: list[float] = []
    while any(thread.is_alive() for thread in senders):
        started = time.monotonic()
        assert server.client.get(f"/api/v1/jobs/{job['id']}", params={"text": "false"}).status_code == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.02)
    for thread in senders:
        thread.join()
    assert statuses == [413] * 30
    assert max(took) < 20, f"slowest refusal took {max(took):.1f} s"
    assert latencies and max(latencies) < 1.0, (
        f"job reads stalled: max {max(latencies):.2f} s, median {statistics.median(latencies):.3f} s"
    )
    body = upload(server.client, [("frames.tiff", tiff)]).json()
    assert "more than 500 pages" in body["error"]["message"], body
