"""A job.json this version cannot read (another version wrote it, or it is damaged) is neither absent nor lost: GET
names the problem (500, not "no such job"), start-up and take-over leave it as it is, DELETE removes it, and the
retention sweep removes it once it is older than the retention time (before: it vanished from the API, and a
start-up on local storage deleted it at once as "an upload that failed")."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gnosis_ocr.errors import JobRecordUnreadableError
from gnosis_ocr.jobs.record import new_job_id
from gnosis_ocr.jobs.store import JobStore
from tests.api.conftest import Live, make_settings
from tests.api.jobclient import submit, wait_finished
from tests.documents import make

# What a later version might write: a field this one does not know, a status it has no name for.
NEWER = {"id": "", "status": "paused-for-review", "schema": 7, "documents": [], "pages": []}


def _unreadable_job(storage: Path, age: float = 0.0) -> tuple[str, Path]:
    job_id = new_job_id()
    record = storage / "jobs" / job_id / "job.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({**NEWER, "id": job_id}))
    (record.parent / "inputs").mkdir()
    (record.parent / "inputs" / "0").write_bytes(b"%PDF-1.7 kept")
    if age:
        then = time.time() - age
        os.utime(record, (then, then))
    return job_id, record


def test_the_store_names_an_unreadable_record_and_leaves_it(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "storage"))
    job_id, record = _unreadable_job(tmp_path / "storage")
    before = record.read_bytes()
    with pytest.raises(JobRecordUnreadableError, match=f"Job {job_id}'s record .* cannot be read") as info:
        store.load(job_id)
    assert info.value.job_id == job_id and "DELETE /api/v1/jobs/" in (info.value.hint or "")
    assert record.read_bytes() == before
    assert store.load(new_job_id()) is None  # absent is still just absent
    age = store.record_age(job_id)
    assert age is not None and 0 <= age < 60


def test_the_service_keeps_it_names_it_and_deletes_it_on_request(
    cache_root: Path, tmp_path: Path, live: Callable[..., Live], caplog: pytest.LogCaptureFixture
) -> None:
    storage = tmp_path / "storage"
    kept, kept_record = _unreadable_job(storage)
    doomed, doomed_record = _unreadable_job(storage)
    caplog.set_level(logging.WARNING, logger="gnosis_ocr.jobs.runner")
    app = live(make_settings(cache_root, engine="fake", storage=str(storage)))  # start-up sweeps and recovers

    assert kept_record.exists() and doomed_record.exists()  # start-up removed neither
    warned = [r.getMessage() for r in caplog.records if kept in r.getMessage()]
    assert len(warned) == 1 and "cannot be read by this version" in warned[0]

    answer = app.client.get(f"/api/v1/jobs/{kept}")
    assert answer.status_code == 500
    body = answer.json()
    assert "cannot be read by this version" in json.dumps(body) and kept in json.dumps(body)

    assert app.client.delete(f"/api/v1/jobs/{doomed}").status_code == 204
    assert not doomed_record.parent.exists()
    assert app.client.get(f"/api/v1/jobs/{doomed}").status_code == 404

    job = submit(app.client, [("one.pdf", make.text_pdf([["one page"]]))])  # the others go on as ever
    assert wait_finished(app.client, job["id"])["status"] == "done"
    assert kept_record.exists()


def test_the_sweep_removes_it_after_the_retention_time(cache_root: Path, tmp_path: Path) -> None:
    from gnosis_ocr.jobs.runner import JobRunner, RunnerOptions
    from gnosis_ocr.settings import Settings

    storage = tmp_path / "storage"
    _, young_record = _unreadable_job(storage, age=10)
    _, old_record = _unreadable_job(storage, age=7200)
    runner = JobRunner(
        JobStore(str(storage)),
        None,  # type: ignore[arg-type]  # the sweep reads no page
        RunnerOptions(limits=Settings(storage=str(tmp_path)).limits(), ttl_seconds=3600),
    )
    assert runner.sweep(starting=True) == 1
    assert young_record.exists() and not old_record.parent.exists()


@pytest.mark.parametrize("kind", ["gs", "s3"])
def test_a_bucket_store_names_it_and_ages_it_too(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from tests.api.test_job_storage import _store

    store, fs = _store(kind, request, tmp_path)
    job_id = new_job_id()
    fs.pipe_file(f"{store.root}/jobs/{job_id}/job.json", json.dumps({**NEWER, "id": job_id}).encode())
    with pytest.raises(JobRecordUnreadableError, match=job_id):
        store.load(job_id)
    with pytest.raises(JobRecordUnreadableError):
        store.load_versioned(job_id)
    age = store.record_age(job_id)
    assert age is not None and 0 <= age < 120  # the store's own clock, read as UTC: the sweep can age it
    assert store.record_age(new_job_id()) is None
