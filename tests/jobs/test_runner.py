"""The job runner without HTTP: versions move with every change, shared views are never stale, jobs read together
and fairly, cancel, delete and shutdown."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gnosis_ocr.api.job_views import JobViews
from gnosis_ocr.jobs.record import DocumentEntry, JobRecord, PageEntry, new_job_id
from gnosis_ocr.jobs.runner import JobRunner, RunnerOptions
from gnosis_ocr.jobs.store import JobStore
from gnosis_ocr.settings import Settings
from tests.documents import make
from tests.support.fakeengine import FakeEngine


class _Engines:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    def get(self, name: str) -> FakeEngine:
        return self.engine


def _job(store: JobStore, tmp_path: Path, pages: int) -> JobRecord:
    pdf = make.text_pdf([[f"p{i}"] for i in range(pages)])
    record = JobRecord(
        id=new_job_id(),
        documents=[
            DocumentEntry(
                index=0,
                name="d.pdf",
                size_bytes=len(pdf),
                kind="pdf",
                page_count=pages,
                pages=list(range(1, pages + 1)),
            )
        ],
        pages=[PageEntry(n=i, document=0, page=i) for i in range(1, pages + 1)],
    )
    record.documents[0].pages = list(range(1, pages + 1))
    staged = tmp_path / f"{record.id}.upload"
    staged.write_bytes(pdf)
    store.put_input(record.id, 0, staged)
    return record


def _runner(tmp_path: Path, engine: FakeEngine, **options: Any) -> JobRunner:
    store = JobStore(str(tmp_path / "storage"))
    values: dict[str, Any] = {"limits": Settings(storage=str(tmp_path)).limits(), "save_interval": 0.0, **options}
    runner = JobRunner(store, _Engines(engine), RunnerOptions(**values))
    runner.start()
    return runner


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[JobRunner]:
    runner = _runner(tmp_path, FakeEngine(delay=0.05, batch_size=1))
    yield runner
    runner.close()


def _wait(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_every_change_moves_the_version_and_views_follow(runner: JobRunner, tmp_path: Path) -> None:
    views = JobViews(runner)
    record = runner.submit(_job(runner.store, tmp_path, 6))
    versions: list[int] = []
    done_seen: list[int] = []  # pages done as a poller sees them
    while True:
        before = runner.version(record.id)
        body = json.loads(views.json(record.id))
        after = runner.version(record.id)
        assert before is not None and after is not None and before <= after
        versions.append(after)
        done_seen.append(body["progress"]["pages_done"])
        if body["status"] == "done":
            break
        time.sleep(0.005)
    assert versions == sorted(versions) and done_seen == sorted(done_seen)  # never back in time
    assert done_seen[-1] == 6 and len(set(versions)) > 6  # at least one change per page
    final = runner.version(record.id)
    assert views.json(record.id) is views.json(record.id)  # one body per version, shared
    assert views.json(record.id, text=False) is not views.json(record.id)
    stored = runner.store.load(record.id)
    assert stored is not None and stored.model_dump() == views.record(record.id).model_dump()
    assert runner.version(record.id) == final  # reading changes nothing


def test_a_shared_copy_does_not_change_under_its_reader(runner: JobRunner, tmp_path: Path) -> None:
    views = JobViews(runner)
    record = runner.submit(_job(runner.store, tmp_path, 5))
    first = views.record(record.id)
    before = first.model_dump_json()
    _wait(lambda: runner.snapshot(record.id).status == "done")
    assert first.model_dump_json() == before  # the worker changed its own record, not the readers' copy
    assert views.record(record.id).status == "done"


def test_cancel_while_queued_and_delete_while_running(tmp_path: Path) -> None:
    runner = _runner(tmp_path, FakeEngine(delay=0.05, batch_size=1), max_running=1)
    running = runner.submit(_job(runner.store, tmp_path, 30))
    waiting = runner.submit(_job(runner.store, tmp_path, 2))
    _wait(lambda: runner.snapshot(running.id).status == "processing")
    cancelled = runner.cancel(waiting.id)
    assert cancelled.status == "cancelled" and all(p.status == "pending" for p in cancelled.pages)
    runner.delete(running.id)
    assert runner.version(running.id) is None  # hidden at once
    with pytest.raises(LookupError):
        runner.snapshot(running.id)  # 404 at once, while its pages are still being aborted
    _wait(lambda: not Path(runner.store.root, "jobs", running.id).exists())
    with pytest.raises(LookupError):
        runner.snapshot(running.id)
    time.sleep(0.3)
    assert not Path(runner.store.root, "jobs", running.id).exists()  # nothing wrote it back
    runner.close()


def test_jobs_submitted_together_all_progress_and_a_small_one_is_not_starved(tmp_path: Path) -> None:
    runner = _runner(tmp_path, FakeEngine(delay=0.05, batch_size=2))
    try:
        big = runner.submit(_job(runner.store, tmp_path, 30))
        others = [runner.submit(_job(runner.store, tmp_path, 3)) for _ in range(2)]
        small = runner.submit(_job(runner.store, tmp_path, 1))
        _wait(lambda: runner.snapshot(small.id).status == "done")
        assert runner.snapshot(big.id).status == "processing"  # the 1-page job did not wait for the 30-page one
        for job in others:
            _wait(lambda job=job: runner.snapshot(job.id).status == "done")
        assert runner.snapshot(big.id).progress().pages_done < 30
        _wait(lambda: runner.snapshot(big.id).status == "done")
        assert all(p.status == "done" for p in runner.snapshot(big.id).pages)
    finally:
        runner.close()


def test_shutdown_hands_back_the_page_in_flight_and_the_next_start_reads_it(tmp_path: Path) -> None:
    engine = FakeEngine(delay=0.4, batch_size=1)
    runner = _runner(tmp_path, engine, shutdown_grace=0.0)
    record = runner.submit(_job(runner.store, tmp_path, 6))
    _wait(lambda: runner.snapshot(record.id).progress().pages_done >= 1)
    runner.close()
    stored = runner.store.load(record.id)
    assert stored is not None and stored.status == "queued"
    assert not [p for p in stored.pages if p.status == "failed"]  # the page in flight was not failed
    left = [p.n for p in stored.pages if p.status == "pending"]
    assert left and len(left) < 6
    engine.calls.clear()
    again = _runner(tmp_path, engine)
    try:
        _wait(lambda: again.snapshot(record.id).status == "done")
        assert sorted(n for call in engine.calls for n in call) == left  # only the pages left were read
        assert all(p.status == "done" for p in again.snapshot(record.id).pages)
    finally:
        again.close()


def test_start_removes_what_killed_uploads_left(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "storage"))
    left = store.staging_root / "upload-killed"
    left.mkdir()
    (left / "part-0").write_bytes(b"x" * 1000)
    kept = _job(store, tmp_path, 1)
    store.save(kept)
    orphan = _job(store, tmp_path, 1)  # its input stored, then the upload died before job.json
    runner = _runner(tmp_path, FakeEngine())
    try:
        assert not left.exists()
        assert store.job_ids() == [kept.id]
        assert orphan.id not in store.job_ids()
        _wait(lambda: runner.snapshot(kept.id).status == "done")
    finally:
        runner.close()
