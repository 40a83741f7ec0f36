"""Job storage on object stores (fake-gcs-server for gs://, moto for s3://) and on local disk: results, deletion,
retention, and taking over the unfinished jobs of an instance that went silent."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gnosis_ocr.engines.fake import FakeEngine
from gnosis_ocr.jobs.record import DocumentEntry, JobRecord, PageEntry, new_job_id, utcnow
from gnosis_ocr.jobs.runner import JobRunner, RunnerOptions
from gnosis_ocr.jobs.store import JobStore
from gnosis_ocr.settings import Settings
from tests.api.conftest import Live, make_settings
from tests.api.jobclient import submit, wait_finished
from tests.documents import make
from tests.support.objectstores import FakeGcs, MotoS3

PDF_PAGES = [["first page"], ["second page"]]


def _store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[JobStore, Any]:
    if kind == "local":
        store = JobStore(str(tmp_path / "storage"))
        return store, store.fs
    emulator: FakeGcs | MotoS3 = request.getfixturevalue("gcs" if kind == "gs" else "s3")
    bucket = emulator.new_bucket("jobs")
    fs = emulator.fs()
    return JobStore(f"{kind}://{bucket}/service", filesystem=fs), fs


@pytest.mark.parametrize("kind", ["local", "gs", "s3"])
def test_a_job_lives_in_the_store_and_delete_removes_it(
    kind: str, request: pytest.FixtureRequest, cache_root: Path, tmp_path: Path, live: Callable[..., Live]
) -> None:
    store, fs = _store(kind, request, tmp_path)
    app = live(make_settings(cache_root, engine="fake"), store=store)
    job = submit(app.client, [("two.pdf", make.text_pdf(PDF_PAGES))])
    final = wait_finished(app.client, job["id"])
    assert final["status"] == "done"

    prefix = f"{store.root}/jobs/{job['id']}"
    names = sorted(p.removeprefix(prefix + "/") for p in fs.find(prefix))
    assert names == ["inputs/0", "job.json", "pages/1.png", "pages/2.png"]
    archive = zipfile.ZipFile(io.BytesIO(app.client.get(f"/api/v1/jobs/{job['id']}/result.zip").content))
    assert {"images/1.png", "images/2.png", "two.md", "result.json"} == set(archive.namelist())

    assert app.client.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    fs.invalidate_cache()
    assert fs.find(prefix) == []
    assert app.client.get(f"/api/v1/jobs/{job['id']}").status_code == 404


def _orphan(store: JobStore, owner: str, pdf: bytes, staging: Path) -> JobRecord:
    """A job another instance was processing: page 1 done, page 2 pending, input stored."""
    record = JobRecord(
        id=new_job_id(),
        status="processing",
        owner=owner,
        attempts=1,
        documents=[DocumentEntry(index=0, name="two.pdf", size_bytes=len(pdf), kind="pdf", page_count=2, pages=[1, 2])],
        pages=[
            PageEntry(n=1, document=0, page=1, status="done", source="ocr", markdown="kept from before"),
            PageEntry(n=2, document=0, page=2),
        ],
    )
    staged = staging / f"{record.id}.upload"
    staged.write_bytes(pdf)
    store.put_input(record.id, 0, staged)
    store.save(record)
    return record


def test_jobs_of_a_silent_instance_are_taken_over_on_shared_storage(
    gcs: FakeGcs, cache_root: Path, tmp_path: Path, live: Callable[..., Live]
) -> None:
    bucket = gcs.new_bucket("shared")
    store = JobStore(f"gs://{bucket}/service", filesystem=gcs.fs())
    pdf = make.text_pdf(PDF_PAGES)
    silent = _orphan(store, "silent-instance", pdf, tmp_path)  # never wrote a heartbeat
    busy = _orphan(store, "busy-instance", pdf, tmp_path)
    store.heartbeat("busy-instance")  # alive a moment ago: its job is not taken

    app = live(make_settings(cache_root, engine="fake", job_stale_seconds=30), store=store)
    final = wait_finished(app.client, silent.id)
    assert final["status"] == "done"
    assert final["pages"][0]["markdown"] == "kept from before"  # resumed, not redone
    assert final["pages"][1]["markdown"].startswith("# Page 2")
    time.sleep(0.5)
    other = app.client.get(f"/api/v1/jobs/{busy.id}").json()  # read from the store: still the other's
    assert other["status"] == "processing"
    stored = store.load(busy.id)
    assert stored is not None and stored.owner == "busy-instance"


class _Engines:
    def get(self, name: str) -> FakeEngine:
        return FakeEngine()


def test_retention_deletes_only_jobs_finished_long_enough_ago(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "storage"))
    settings = Settings(storage=str(tmp_path / "storage"))
    runner = JobRunner(store, _Engines(), RunnerOptions(limits=settings.limits(), ttl_seconds=3600))
    old, recent, running = (JobRecord(id=new_job_id()) for _ in range(3))
    old.status, old.finished_at = "done", utcnow() - timedelta(hours=2)
    recent.status, recent.finished_at = "failed", utcnow() - timedelta(minutes=5)
    running.status = "processing"
    for record in (old, recent, running):
        store.save(record)
    assert runner.sweep() == 1
    assert store.job_ids() == sorted([recent.id, running.id])
    assert runner.sweep(now=utcnow() + timedelta(hours=2)) == 1  # recent's turn; never an unfinished job
    assert store.job_ids() == [running.id]
