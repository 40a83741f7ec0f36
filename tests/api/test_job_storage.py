"""Job storage on object stores (fake-gcs-server for gs://, moto for s3://) and on local disk: results, deletion,
retention, and taking over the unfinished jobs of an instance that went silent."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gnosis_ocr.errors import JobOwnershipLostError
from gnosis_ocr.jobs.record import DocumentEntry, JobRecord, PageEntry, new_job_id, utcnow
from gnosis_ocr.jobs.runner import JobRunner, RunnerOptions
from gnosis_ocr.jobs.store import JobStore
from gnosis_ocr.settings import Settings
from tests.api.conftest import Live, make_settings
from tests.api.jobclient import submit, wait_finished
from tests.documents import make
from tests.support.fakeengine import FakeEngine
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
    pages = ["pages/1.webp", "pages/1.words.json", "pages/2.webp", "pages/2.words.json"]  # words: the PDF's layer
    assert names == ["inputs/0", "job.json", *pages]
    pdf = app.client.get(f"/api/v1/jobs/{job['id']}/result.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")  # built from the store, gs:// and s3:// too
    archive = zipfile.ZipFile(io.BytesIO(app.client.get(f"/api/v1/jobs/{job['id']}/result.zip").content))
    assert {"images/1.webp", "images/2.webp", "two.md", "result.json"} == set(archive.namelist())

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


class _Slow:
    def __init__(self, delay: float) -> None:
        self.engine = FakeEngine(delay=delay, batch_size=1)

    def get(self, name: str) -> FakeEngine:
        return self.engine


def _shared_runner(gcs: FakeGcs, bucket: str, tmp_path: Path, name: str, delay: float) -> JobRunner:
    store = JobStore(f"gs://{bucket}/service", filesystem=gcs.fs())
    settings = Settings(storage=str(tmp_path / "storage"))
    options = RunnerOptions(limits=settings.limits(), stale_seconds=30.0, save_interval=0.05)
    return JobRunner(store, _Slow(delay), options, instance=name)


def test_two_instances_taking_over_one_job_at_once_run_it_once(gcs: FakeGcs, tmp_path: Path) -> None:
    """Both find the same orphan on start-up; the bucket's generation precondition lets exactly one take it."""
    bucket = gcs.new_bucket("race")
    store = JobStore(f"gs://{bucket}/service", filesystem=gcs.fs())
    orphan = _orphan(store, "gone-instance", make.text_pdf(PDF_PAGES), tmp_path)
    runners = [_shared_runner(gcs, bucket, tmp_path, f"instance-{i}", 0.05) for i in range(2)]
    barrier = threading.Barrier(2)

    def start(runner: JobRunner) -> None:
        barrier.wait()
        runner.start()

    threads = [threading.Thread(target=start, args=(r,)) for r in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        owners = [r for r in runners if r.owns(orphan.id) or r.table.record(orphan.id) is not None]
        assert len(owners) == 1, [r.instance for r in owners]
        deadline = time.monotonic() + 30
        while (stored := store.load(orphan.id)) is None or not stored.finished:
            assert time.monotonic() < deadline, "the job never finished"
            time.sleep(0.05)
        assert stored.status == "done" and stored.owner == owners[0].instance
        assert stored.pages[0].markdown == "kept from before"
    finally:
        for runner in runners:
            runner.close()


def test_an_instance_whose_job_was_taken_over_stops_and_writes_nothing_more(gcs: FakeGcs, tmp_path: Path) -> None:
    bucket = gcs.new_bucket("takeover")
    first = _shared_runner(gcs, bucket, tmp_path, "first", 0.3)
    first.start()
    try:
        pdf = make.text_pdf([[f"page {i}"] for i in range(12)])
        record = JobRecord(
            id=new_job_id(),
            documents=[DocumentEntry(index=0, name="d.pdf", size_bytes=len(pdf), kind="pdf", page_count=12)],
            pages=[PageEntry(n=i, document=0, page=i) for i in range(1, 13)],
        )
        staged = tmp_path / "d.upload"
        staged.write_bytes(pdf)
        first.store.put_input(record.id, 0, staged)
        first.submit(record)
        deadline = time.monotonic() + 30
        while first.snapshot(record.id).progress().pages_done < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # another instance takes the job over (as it would from an instance it took for dead)
        store = JobStore(f"gs://{bucket}/service", filesystem=gcs.fs())
        store.heartbeat("second")  # alive: the first instance must not take it back
        while True:  # as a real take-over does: on the version read, again if the owner wrote in between
            loaded = store.load_versioned(record.id)
            assert loaded is not None
            taken, token = loaded
            taken.owner, taken.status = "second", "queued"
            try:
                store.save(taken, expect=token)
                break
            except JobOwnershipLostError:
                assert time.monotonic() < deadline

        while first.owns(record.id):  # its next write is refused: it lets the job go
            assert time.monotonic() < deadline, "the first instance kept writing the job"
            time.sleep(0.05)
        time.sleep(0.5)
        after = store.load(record.id)
        assert after is not None and after.owner == "second" and after.status == "queued"
        assert first.snapshot(record.id).owner == "second"  # read from the store now
    finally:
        first.close()
    final = store.load(record.id)
    assert final is not None and final.owner == "second"  # the shutdown did not write it back either
