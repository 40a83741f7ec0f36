"""``GET /api/v1/jobs/{id}/result.pdf`` over real HTTP: the searchable PDF of a job, read back with pypdfium2."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pytest
from PIL import Image, ImageDraw, ImageFont

from gnosis_ocr.jobs.searchable import NOMINAL_DPI, PageGeometry
from gnosis_ocr.jobs.store import JobStore
from tests.api.conftest import Live, make_settings, wait_for
from tests.api.jobclient import submit, wait_finished
from tests.documents import make

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def scan_png() -> bytes:
    """An image page with words for tesseract (no text layer): 1200 x 800 pixels."""
    image = Image.new("RGB", (1200, 800), "white")
    font = ImageFont.truetype(str(DEJAVU), 44) if DEJAVU.is_file() else ImageFont.load_default(44)
    ImageDraw.Draw(image).text((80, 120), "Delivery note March", fill="black", font=font)
    return make.image_bytes(image, "PNG")


def pdf_pages(data: bytes) -> list[tuple[tuple[float, float], str]]:
    pdf = pdfium.PdfDocument(data)
    return [(pdf[i].get_size(), pdf[i].get_textpage().get_text_range()) for i in range(len(pdf))]


def get_pdf(app: Live, job_id: str, **params: Any) -> Any:
    return app.client.get(f"/api/v1/jobs/{job_id}/result.pdf", params=params, timeout=60)


def test_a_job_as_one_searchable_pdf(cache_root: Path, tmp_path: Path, live: Callable[..., Live]) -> None:
    storage = tmp_path / "storage"
    app = live(make_settings(cache_root, engine="tesseract", ocr_workers=1, storage=str(storage)))
    letter = make.text_pdf([["Invoice 2026-17", "Total: 42 EUR"], ["Terms and conditions apply"]], font_size=16)
    job = submit(app.client, [("Rechnung März.pdf", letter), ("scan.png", scan_png())])
    final = wait_finished(app.client, job["id"], timeout=120)
    assert final["status"] == "done", final
    assert [p["source"] for p in final["pages"]] == ["text-layer", "text-layer", "ocr"]

    assert final["urls"]["result_pdf"] == f"/api/v1/jobs/{job['id']}/result.pdf"
    response = get_pdf(app, job["id"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["x-job-status"] == "done"
    assert response.headers["content-disposition"].startswith('attachment; filename="gnosis-')  # two documents
    assert int(response.headers["content-length"]) == len(response.content)
    pages = pdf_pages(response.content)
    assert len(pages) == 3  # PDF page n is job page n
    assert [size for size, _ in pages[:2]] == [(612.0, 792.0), (612.0, 792.0)]  # the PDF pages' own size
    scan = final["pages"][2]
    assert pages[2][0] == pytest.approx((scan["width"] * 72 / NOMINAL_DPI, scan["height"] * 72 / NOMINAL_DPI))
    for (_, text), page in zip(pages, final["pages"], strict=True):
        assert text.split() == page["markdown"].split()
    assert "Delivery" in pages[2][1] and "March" in pages[2][1]

    # the word boxes behind it are stored beside the page, not in job.json
    store = JobStore(str(storage))
    geometry = PageGeometry.from_json(store.words(job["id"], 3) or b"")
    assert geometry is not None and [w.text for w in geometry.words] == ["Delivery", "note", "March"]
    record = (storage / "jobs" / job["id"] / "job.json").read_text()
    assert '"Delivery",' not in record and "words.json" not in record  # job.json stays small

    one = get_pdf(app, job["id"], document=0)
    assert one.status_code == 200
    assert "Rechnung" in one.headers["content-disposition"] or "Rechnung_M" in one.headers["content-disposition"]
    assert [text.split() for _, text in pdf_pages(one.content)] == [p["markdown"].split() for p in final["pages"][:2]]
    assert len(pdf_pages(get_pdf(app, job["id"], document=1).content)) == 1
    missing = get_pdf(app, job["id"], document=2)
    assert missing.status_code == 404 and "no document 2" in missing.json()["error"]["message"]
    assert get_pdf(app, job["id"], document=-1).status_code == 422


def test_nothing_to_put_in_a_pdf_yet_is_409_and_an_unknown_job_404(
    cache_root: Path, tmp_path: Path, live: Callable[..., Live]
) -> None:
    app = live(
        make_settings(
            cache_root, engine="fake", storage=str(tmp_path / "storage"), fake_engine_delay=1.0, max_running_jobs=1
        )
    )
    busy = submit(app.client, [("busy.pdf", make.text_pdf([["a"], ["b"], ["c"]]))], text_layer="never")
    wait_for(lambda: app.client.get(f"/api/v1/jobs/{busy['id']}").json()["status"] == "processing", 30, "running")
    queued = submit(app.client, [("later.pdf", make.text_pdf([["later"]]))])
    assert app.client.get(f"/api/v1/jobs/{queued['id']}").json()["status"] == "queued"
    refused = get_pdf(app, queued["id"])
    assert refused.status_code == 409, refused.text
    body = refused.json()["error"]
    assert "no page rendered or read yet" in body["message"] and body["hint"]

    # while the busy job runs, its PDF is partial: every page, the ones read so far with their text
    wait_for(
        lambda: any(p["status"] == "done" for p in app.client.get(f"/api/v1/jobs/{busy['id']}").json()["pages"]),
        30,
        "a first page",
    )
    partial = get_pdf(app, busy["id"])
    assert partial.status_code == 200 and partial.headers["x-job-status"] == "processing"
    assert len(pdf_pages(partial.content)) == 3

    unknown = app.client.get("/api/v1/jobs/AAAAAAAAAAAAAAAAAAAAAA/result.pdf")
    assert unknown.status_code == 404
    for job in (busy, queued):
        app.client.post(f"/api/v1/jobs/{job['id']}/cancel")


def test_pdf_builds_at_once_are_bounded_and_a_slot_frees_when_the_body_is_sent(
    cache_root: Path, tmp_path: Path, live: Callable[..., Live]
) -> None:
    app = live(make_settings(cache_root, engine="fake", storage=str(tmp_path), max_pdf_builds=1))
    # 16 pages of noise: a PDF of ~14 MB, more than the loopback socket buffers take, so its body is still being sent
    # while the first response is not read
    noise = [Image.frombytes("L", (1600, 1200), os.urandom(1600 * 1200)) for _ in range(16)]
    job = submit(app.client, [(f"scan{n}.png", make.image_bytes(image, "PNG")) for n, image in enumerate(noise)])
    assert wait_finished(app.client, job["id"], timeout=60)["status"] == "done"
    url = f"/api/v1/jobs/{job['id']}/result.pdf"
    with app.client.stream("GET", url, timeout=60) as first:  # built, its body not all sent: the slot is held
        assert int(first.headers["content-length"]) > 12_000_000
        assert first.status_code == 200
        second = app.client.get(url, timeout=60)
        assert second.status_code == 503, second.text
        assert second.headers["retry-after"] == "5"
        error = second.json()["error"]
        assert error["type"] == "BusyError"
        assert "1 searchable PDF(s) are being built or sent already" in error["message"]
        assert "GNOSIS_MAX_PDF_BUILDS" in error["hint"]
        assert first.read().startswith(b"%PDF-")
    # the body was sent: the slot is free again, for as many downloads one after another as anyone wants
    for _ in range(2):
        again = app.client.get(url, timeout=60)
        assert again.status_code == 200 and again.content.startswith(b"%PDF-")
