"""POST /api/v1/jobs/{id}/pages/{n}/retry over real HTTP: the page is read again (by the job's engine or by real
tesseract), the event stream tells it, the results carry the new reading and the page's history the old one."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gnosis_ocr.documents.model import Page
from gnosis_ocr.engines import engine_from_settings
from gnosis_ocr.engines.base import GREEDY, Decoding, Engine, PageText, StreamingEngine
from gnosis_ocr.modelcache import ModelCache
from gnosis_ocr.settings import EngineName, Settings
from tests.api.conftest import Live, make_settings, wait_for
from tests.api.jobclient import events, submit, wait_finished
from tests.documents import make
from tests.support.fakeengine import FakeEngine

PDF = make.text_pdf([["Invoice 2026-17", "Total: 42 EUR"], ["Second page"], ["Third page"]])


class Flaky(FakeEngine):
    """Page 2 fails the first time it is read."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failed = False

    def recognize(self, pages: Sequence[Page], decoding: Decoding = GREEDY) -> list[PageText]:
        out = super().recognize(pages, decoding)
        for i, text in enumerate(out):
            if text.number == 2 and not self.failed:
                self.failed = True
                out[i] = PageText(2, "", text.seconds, error="the first reading failed")
        return out


def engines(settings: Settings, cache: ModelCache, name: EngineName) -> Engine | StreamingEngine:
    if name == "fake":
        return Flaky(delay=0.3, batch_size=1)
    return engine_from_settings(settings, cache, name)  # tesseract, for real


def start(live: Callable[..., Live], cache_root: Path, tmp_path: Path) -> Live:
    settings = make_settings(cache_root, engine="fake", storage=str(tmp_path / "storage"), ocr_workers=1)
    app = live(settings, engine_factory=engines)
    wait_for(app.ready, 30, "readyz")
    return app


def test_a_failed_page_is_read_again(cache_root: Path, tmp_path: Path, live: Callable[..., Live]) -> None:
    app = start(live, cache_root, tmp_path)
    job = submit(app.client, [("letter.pdf", PDF)], text_layer="never")
    url = f"/api/v1/jobs/{job['id']}"
    assert app.client.post(f"{url}/pages/1/retry").status_code == 409  # still running
    before = wait_finished(app.client, job["id"])
    assert before["status"] == "done" and before["pages"][1]["status"] == "failed"

    answer = app.client.post(f"{url}/pages/2/retry", json={"engine": "auto"})
    assert answer.status_code == 202, answer.text
    marked = answer.json()
    assert marked["status"] in ("queued", "processing") and marked["finished_at"] is None
    assert marked["pages"][1]["rerun"] == "auto" and marked["pages"][1]["status"] == "failed"
    again = app.client.post(f"{url}/pages/2/retry")
    assert again.status_code == 409 and "being read again" in again.json()["error"]["message"]

    stream = events(app.client, job["id"])
    assert stream[-1] == ("end", {"status": "done"})
    new = [data for name, data in stream if name == "page" and data["n"] == 2 and data["history"]]
    assert len(new) == 1 and new[0]["status"] == "done" and new[0]["markdown"].startswith("# Page 2")
    assert new[0]["history"][0]["error"] == "the first reading failed" and new[0]["history"][0]["engine"] == "fake"

    after = app.client.get(url).json()
    assert after["status"] == "done" and after["progress"]["pages_failed"] == 0 and after["error"] is None
    assert [p["markdown"] for p in after["pages"] if p["n"] != 2] == [
        p["markdown"] for p in before["pages"] if p["n"] != 2
    ]
    md = app.client.get(f"{url}/result.md").text
    assert "# Page 2" in md and "failed" not in md
    archive = zipfile.ZipFile(io.BytesIO(app.client.get(f"{url}/result.zip").content))
    zipped = json.loads(archive.read("result.json"))
    assert zipped["pages"][1]["history"][0]["status"] == "failed"


def test_a_text_layer_page_is_read_by_another_engine(
    cache_root: Path, tmp_path: Path, live: Callable[..., Live]
) -> None:
    app = start(live, cache_root, tmp_path)
    job = submit(app.client, [("letter.pdf", PDF)])  # the fake engine is no VLM: the text layer is taken
    url = f"/api/v1/jobs/{job['id']}"
    before = wait_finished(app.client, job["id"])
    assert before["pages"][0]["source"] == "text-layer"

    answer = app.client.post(f"{url}/pages/1/retry", data={"engine": "tesseract"})  # a url-encoded form
    assert answer.status_code == 202, answer.text
    after = wait_for(
        lambda: (body := app.client.get(url).json())["status"] == "done" and body["pages"][0]["history"] and body,
        60,
        "the page read again by tesseract",
    )
    page = after["pages"][0]
    assert page["source"] == "ocr" and page["engine"] == "tesseract" and "Invoice" in page["markdown"]
    assert page["history"][0]["source"] == "text-layer" and page["history"][0]["engine"] == "fake"
    assert page["history"][0]["markdown"] == before["pages"][0]["markdown"]


def test_bad_retries_say_why(cache_root: Path, tmp_path: Path, live: Callable[..., Live]) -> None:
    app = start(live, cache_root, tmp_path)
    job = submit(app.client, [("letter.pdf", PDF)], text_layer="never")
    url = f"/api/v1/jobs/{job['id']}"
    wait_finished(app.client, job["id"])
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"url": "/api/v1/jobs/AAAAAAAAAAAAAAAAAAAAAA/pages/1/retry"}, 404, "JobNotFoundError"),
        ({"url": f"{url}/pages/9/retry"}, 404, "JobNotFoundError"),
        ({"url": f"{url}/pages/0/retry"}, 422, "ValidationError"),
        ({"url": f"{url}/pages/1/retry", "json": {"engine": "gpt"}}, 422, "InvalidRequestError"),
        ({"url": f"{url}/pages/1/retry", "json": {"engines": "auto"}}, 422, "InvalidRequestError"),
        ({"url": f"{url}/pages/1/retry", "json": ["auto"]}, 422, "InvalidRequestError"),
        ({"url": f"{url}/pages/1/retry", "content": b"{", "headers": {"content-type": "application/json"}}, 422, ""),
        ({"url": f"{url}/pages/1/retry", "content": b"x" * 5000, "headers": {"content-type": "text/plain"}}, 413, ""),
        (
            {
                "url": f"{url}/pages/1/retry",
                "content": b"--b\r\n[]--b--\r\n",
                "headers": {"content-type": "multipart/form-data; boundary=b"},
            },
            400,
            "BadUploadError",
        ),
    ]
    for kwargs, status, kind in cases:
        response = app.client.post(**kwargs)
        assert response.status_code == status, (kwargs.get("url"), response.text)
        error = response.json()["error"]
        assert error["message"] and (not kind or error["type"] == kind)
    assert app.client.get(url).json()["status"] == "done"  # nothing was changed by them
