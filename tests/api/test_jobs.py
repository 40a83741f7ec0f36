"""The jobs API over real HTTP (uvicorn on loopback): upload -> events -> results, pages, cancel, delete, queue."""

from __future__ import annotations

import io
import itertools
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from gnosis_ocr.documents.model import Page
from gnosis_ocr.engines.base import GREEDY, Decoding, Engine, EngineInfo, PageText
from gnosis_ocr.jobs.record import valid_job_id
from gnosis_ocr.modelcache import ModelCache
from gnosis_ocr.settings import Settings
from tests.api.conftest import Live, make_settings, wait_for
from tests.api.jobclient import events, submit, upload, wait_finished
from tests.conftest import REPO
from tests.documents import make
from tests.support.fakeengine import FakeEngine
from tests.support.hubserver import LocalHub

PAGES = [["Invoice 2026-17", "Total: 42 EUR"], ["Second page", "Terms apply"], ["Third page"]]


def fake_settings(cache_root: Path, tmp_path: Path, **overrides: Any) -> Settings:
    return make_settings(cache_root, engine="fake", storage=str(tmp_path / "storage"), **overrides)


def test_upload_events_and_every_result_format(cache_root: Path, tmp_path: Path, live: Callable[..., Live]) -> None:
    app = live(fake_settings(cache_root, tmp_path, fake_engine_delay=0.05))
    wait_for(app.ready, 30, "readyz")
    job = submit(app.client, [("letter.pdf", make.text_pdf(PAGES))], text_layer="never")
    assert valid_job_id(job["id"]) and job["status"] == "queued"
    assert [(p["n"], p["document"], p["page"], p["status"]) for p in job["pages"]] == [
        (1, 0, 1, "pending"),
        (2, 0, 2, "pending"),
        (3, 0, 3, "pending"),
    ]
    assert job["documents"][0]["name"] == "letter.pdf" and job["documents"][0]["page_count"] == 3

    stream = events(app.client, job["id"])
    names = [name for name, _ in stream]
    assert names[0] == "job" and names[-1] == "end" and stream[-1][1] == {"status": "done"}
    pages = [data for name, data in stream if name == "page"]
    assert sorted(p["n"] for p in pages) == [1, 2, 3]  # each page once, as it finished
    assert all(p["status"] == "done" and p["markdown"].startswith(f"# Page {p['page']}") for p in pages)

    done = app.client.get(f"/api/v1/jobs/{job['id']}").json()
    assert done["status"] == "done" and done["progress"]["pages_done"] == 3 and done["progress"]["fraction"] == 1
    assert done["engine"]["name"] == "fake" and done["engine"]["requested"] == "auto"
    light = app.client.get(f"/api/v1/jobs/{job['id']}", params={"text": "false"}).json()
    assert all(p["markdown"] is None for p in light["pages"])

    md = app.client.get(f"/api/v1/jobs/{job['id']}/result.md")
    assert md.status_code == 200 and md.headers["x-job-status"] == "done"
    assert md.headers["content-type"].startswith("text/markdown")
    assert 'filename="letter.md"' in md.headers["content-disposition"]
    assert [f"<!-- page {n} -->" in md.text for n in (1, 2, 3)] == [True, True, True]

    as_json = app.client.get(f"/api/v1/jobs/{job['id']}/result.json").json()
    assert [p["markdown"] for p in as_json["pages"]] == [p["markdown"] for p in done["pages"]]

    page = app.client.get(f"/api/v1/jobs/{job['id']}/pages/2").json()
    assert page["page"] == 2 and "<h1>Page 2</h1>" in page["html"]
    image = app.client.get(page["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(image.content)) as img:  # scaled for display, the page's shape kept
        assert img.width * img.height <= 2_000_000 and img.width <= page["width"]
        assert abs(img.width / img.height - page["width"] / page["height"]) < 0.01

    zipped = app.client.get(f"/api/v1/jobs/{job['id']}/result.zip")
    assert zipped.headers.get("transfer-encoding") == "chunked"  # made as it is sent, never spooled whole
    archive = zipfile.ZipFile(io.BytesIO(zipped.content))
    assert sorted(archive.namelist()) == ["images/1.webp", "images/2.webp", "images/3.webp", "letter.md", "result.json"]
    assert archive.read("letter.md").decode() == md.text

    assert app.metric("gnosis_pages_total", status="done", source="ocr") == 3
    assert app.metric("gnosis_jobs_total", status="done") == 1


def test_several_documents_share_one_page_sequence(cache_root: Path, tmp_path: Path, live: Callable[..., Live]) -> None:
    app = live(fake_settings(cache_root, tmp_path))
    png = make.image_bytes(make.marked_image((400, 300)), "PNG")
    job = submit(app.client, [("a.pdf", make.text_pdf(PAGES)), ("b.png", png)], pages="1")
    done = wait_finished(app.client, job["id"])
    assert [(p["n"], p["document"], p["page"]) for p in done["pages"]] == [(1, 0, 1), (2, 1, 1)]
    assert [d["status"] for d in done["documents"]] == ["done", "done"]
    md = app.client.get(f"/api/v1/jobs/{job['id']}/result.md").text
    assert md.index("<!-- document: a.pdf -->") < md.index("<!-- document: b.png -->")


def test_cancel_keeps_the_pages_done_and_delete_removes_everything(
    cache_root: Path, tmp_path: Path, live: Callable[..., Live]
) -> None:
    app = live(fake_settings(cache_root, tmp_path, fake_engine_delay=0.3))
    job = submit(app.client, [("long.pdf", make.text_pdf([[f"page {i}"] for i in range(12)]))])
    url = f"/api/v1/jobs/{job['id']}"
    wait_for(lambda: app.client.get(url).json()["progress"]["pages_done"] >= 1, 30, "a first page")
    assert app.client.post(f"{url}/cancel").status_code == 202
    final = wait_finished(app.client, job["id"])
    assert final["status"] == "cancelled" and final["error"]["type"] == "Cancelled"
    done = [p for p in final["pages"] if p["status"] == "done"]
    assert 1 <= len(done) < 12 and all(p["markdown"] for p in done)
    again = app.client.post(f"{url}/cancel")
    assert again.status_code == 409 and again.json()["error"]["type"] == "JobFinishedError"

    job_dir = tmp_path / "storage" / "jobs" / job["id"]
    assert (job_dir / "job.json").is_file()
    assert app.client.delete(url).status_code == 204
    assert not job_dir.exists()
    gone = app.client.get(url)
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "JobNotFoundError"


def test_unknown_and_malformed_ids_are_404(cache_root: Path, tmp_path: Path, live: Callable[..., Live]) -> None:
    app = live(fake_settings(cache_root, tmp_path))
    for path in ("/api/v1/jobs/AAAAAAAAAAAAAAAAAAAAAA", "/api/v1/jobs/..%2F..%2Fetc", "/api/v1/jobs/x/result.md"):
        response = app.client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["type"] in ("JobNotFoundError", "NotFound")


class _Exclusive:
    """An engine that records how many recognize calls overlap (there must never be two on one device)."""

    def __init__(self) -> None:
        self.inner = FakeEngine(delay=0.05, batch_size=2)
        self.active = 0
        self.most = 0
        self.lock = threading.Lock()
        self.batches: list[list[str]] = []
        self.job_of: dict[int, str] = {}

    @property
    def info(self) -> EngineInfo:
        return self.inner.info

    @property
    def batch_size(self) -> int:
        return self.inner.batch_size

    def load(self) -> None:
        self.inner.load()

    def recognize(self, pages: Sequence[Page], decoding: Decoding = GREEDY) -> list[PageText]:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
            self.batches.append([self.job_of.get(id(p.image), "?") for p in pages])
        try:
            return self.inner.recognize(pages, decoding)
        finally:
            with self.lock:
                self.active -= 1

    def close(self) -> None:
        self.inner.close()


def test_jobs_progress_together_on_one_device(cache_root: Path, tmp_path: Path, live: Callable[..., Live]) -> None:
    engine = _Exclusive()

    def factory(settings: Settings, cache: ModelCache, name: str) -> Engine:
        return engine

    app = live(fake_settings(cache_root, tmp_path), engine_factory=factory)
    pdf = make.text_pdf([[f"page {i}"] for i in range(8)])
    jobs = [submit(app.client, [(f"doc{i}.pdf", pdf)]) for i in range(3)]
    finals = [wait_finished(app.client, j["id"]) for j in jobs]
    assert [f["status"] for f in finals] == ["done"] * 3
    assert engine.most == 1  # one device never runs two batches at once
    spans = sorted((f["started_at"], f["finished_at"]) for f in finals)
    assert any(prev[1] > nxt[0] for prev, nxt in itertools.pairwise(spans))  # they ran at the same time
    first_done = min(f["finished_at"] for f in finals)
    assert all(f["started_at"] < first_done for f in finals)  # none waited for another to end


def test_a_page_that_fails_leaves_the_rest(cache_root: Path, tmp_path: Path, live: Callable[..., Live]) -> None:
    def factory(settings: Settings, cache: ModelCache, name: str) -> Engine:
        return FakeEngine(fail_pages=frozenset({2}))

    app = live(fake_settings(cache_root, tmp_path), engine_factory=factory)
    job = submit(app.client, [("letter.pdf", make.text_pdf(PAGES))], text_layer="never")
    final = wait_finished(app.client, job["id"])
    assert final["status"] == "done" and final["progress"]["pages_failed"] == 1
    assert [p["status"] for p in final["pages"]] == ["done", "failed", "done"]
    md = app.client.get(f"/api/v1/jobs/{job['id']}/result.md").text
    assert "<!-- page 2: failed: fake engine failed here -->" in md


def test_tesseract_reads_the_pages(cache_root: Path, tmp_path: Path, live: Callable[..., Live]) -> None:
    app = live(make_settings(cache_root, engine="tesseract", ocr_workers=2, storage=str(tmp_path / "storage")))
    pdf = make.text_pdf([["Invoice 2026-17", "Total: 42 EUR"], ["Delivery note for March"]], font_size=16)
    job = submit(app.client, [("scan.pdf", pdf)], text_layer="never")
    stream = events(app.client, job["id"], timeout=120)
    assert stream[-1] == ("end", {"status": "done"})
    final = app.client.get(f"/api/v1/jobs/{job['id']}").json()
    assert final["engine"]["name"] == "tesseract"
    assert all(p["source"] == "ocr" for p in final["pages"])
    assert "Invoice 2026-17" in final["pages"][0]["markdown"] and "March" in final["pages"][1]["markdown"]
    ready = app.client.get("/readyz").json()
    assert ready["ready"] is True and ready["engine"]["name"] == "tesseract"


def test_upload_refused_when_the_queue_is_full(cache_root: Path, tmp_path: Path, live: Callable[..., Live]) -> None:
    app = live(fake_settings(cache_root, tmp_path, fake_engine_delay=0.5, max_queued_jobs=1, max_running_jobs=1))
    pdf = make.text_pdf([["a"], ["b"]])
    first = submit(app.client, [("a.pdf", pdf)])
    wait_for(lambda: app.client.get(f"/api/v1/jobs/{first['id']}").json()["status"] == "processing", 30, "running")
    submit(app.client, [("b.pdf", pdf)])  # waits in the queue
    refused = upload(app.client, [("c.pdf", pdf)])
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert "GNOSIS_MAX_QUEUED_JOBS" in refused.json()["error"]["message"]
    time.sleep(0.1)
    assert len(list((tmp_path / "storage" / "jobs").iterdir())) == 2  # nothing stored for the refused one


def test_tiny_vlm_reads_the_pages_from_the_cache_with_no_network(
    hub: LocalHub, cache: ModelCache, cache_root: Path, tmp_path: Path, live: Callable[..., Live]
) -> None:
    commit = cache.warm(REPO).commit
    hub.reset_counters()
    app = live(make_settings(cache_root, hub.endpoint, cache_mode="offline", storage=str(tmp_path / "storage")))
    ready = wait_for(app.ready, 60, "the VLM to load")
    assert ready["engine"]["name"] == "vlm" and ready["engine"]["state"] == "ready"
    assert ready["engine"]["backend"] == "transformers" and ready["engine"]["profile"] == "generic-qwen2.5-vl"
    assert ready["engine"]["revision"] == commit and ready["engine"]["model"] == REPO
    job = submit(app.client, [("letter.pdf", make.text_pdf(PAGES[:2]))])
    stream = events(app.client, job["id"], timeout=120)
    assert stream[-1] == ("end", {"status": "done"})
    pages = [data for name, data in stream if name == "page"]
    assert sorted(p["n"] for p in pages) == [1, 2] and all(p["source"] == "ocr" for p in pages)  # no text layer
    final = app.client.get(f"/api/v1/jobs/{job['id']}").json()
    assert final["engine"] == {
        "requested": "auto",
        "name": "vlm",
        "backend": "transformers",
        "model": REPO,
        "revision": commit,
        "profile": "generic-qwen2.5-vl",
        "device": "cpu",
    }
    assert hub.request_count == 0, hub.requests
    assert app.metric("gnosis_cache_lookups_total", result="hit") == 1
    labels = {"name": "vlm", "backend": "transformers", "model": REPO, "revision": commit}
    assert app.metric("gnosis_engine_info", **labels, profile="generic-qwen2.5-vl", device="cpu") == 1


def test_a_job_fails_with_the_reason_when_the_model_cannot_come(
    cache_root: Path, tmp_path: Path, live: Callable[..., Live]
) -> None:
    app = live(make_settings(cache_root, cache_mode="offline", storage=str(tmp_path / "storage")))
    job = submit(app.client, [("a.png", make.image_bytes(make.marked_image((300, 200)), "PNG"))])
    final = wait_finished(app.client, job["id"], timeout=30)  # never stuck in "processing"
    assert final["status"] == "failed" and final["error"]["type"] == "EngineUnavailableError"
    assert "gnosis-ocr cache warm" in final["error"]["message"]


def test_a_job_never_downloads_the_model(
    hub: LocalHub, cache_root: Path, tmp_path: Path, live: Callable[..., Live]
) -> None:
    """Default engine tesseract, the VLM's model not in the cache: a job asking for the VLM fails at once saying
    how to warm it, and the hub sees no request (the model is not fetched behind the operator's back)."""
    app = live(make_settings(cache_root, hub.endpoint, engine="tesseract", storage=str(tmp_path / "storage")))
    wait_for(app.ready, 60, "tesseract to load")
    hub.reset_counters()
    job = submit(app.client, [("a.png", make.image_bytes(make.marked_image((300, 200)), "PNG"))], engine="vlm")
    final = wait_finished(app.client, job["id"], timeout=30)
    assert final["status"] == "failed" and final["error"]["type"] == "EngineUnavailableError"
    assert "never downloads" in final["error"]["message"] and "cache/warm" in (final["error"]["hint"] or "")
    assert hub.request_count == 0, hub.requests
    assert app.client.get("/api/v1/cache").json()["state"] == "absent"
