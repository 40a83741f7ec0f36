"""Reading one page of a finished job again, in the runner: only that page is read, the old reading moves to the
page's history, the state survives a restart at every step, and a cancelled re-reading leaves the job as it was."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from gnosis_ocr.documents.model import Page
from gnosis_ocr.engines.base import GREEDY, Decoding, PageText
from gnosis_ocr.errors import JobBusyError, JobNotFoundError
from gnosis_ocr.jobs.record import DocumentEntry, JobRecord, PageEntry, new_job_id
from gnosis_ocr.jobs.runner import READINGS_KEPT, JobRunner, RunnerOptions
from gnosis_ocr.jobs.store import JobStore
from gnosis_ocr.settings import Settings
from tests.documents import make
from tests.support.fakeengine import FakeEngine


class Flaky(FakeEngine):
    """Fails the pages in ``fail_once`` the first time each is read; every later reading works."""

    def __init__(self, fail_once: set[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_once = set(fail_once)

    def recognize(self, pages: Sequence[Page], decoding: Decoding = GREEDY) -> list[PageText]:
        out = super().recognize(pages, decoding)
        for i, text in enumerate(out):
            if text.number in self.fail_once:
                self.fail_once.discard(text.number)
                out[i] = PageText(text.number, "", text.seconds, error="the first reading failed")
        return out


class Engines:
    def __init__(self, **engines: FakeEngine) -> None:
        self.engines = engines

    def get(self, name: str) -> FakeEngine:
        return self.engines["main" if name == "auto" else name]


def job(store: JobStore, tmp_path: Path, pages: int) -> JobRecord:
    pdf = make.text_pdf([[f"p{i}"] for i in range(1, pages + 1)])
    record = JobRecord(
        id=new_job_id(),
        documents=[DocumentEntry(index=0, name="d.pdf", size_bytes=len(pdf), kind="pdf", page_count=pages)],
        pages=[PageEntry(n=i, document=0, page=i) for i in range(1, pages + 1)],
    )
    record.documents[0].pages = list(range(1, pages + 1))
    staged = tmp_path / f"{record.id}.upload"
    staged.write_bytes(pdf)
    store.put_input(record.id, 0, staged)
    record.options.text_layer = "never"
    return record


def start(tmp_path: Path, engines: Engines, **options: Any) -> JobRunner:
    values: dict[str, Any] = {"limits": Settings(storage=str(tmp_path)).limits(), "save_interval": 0.0, **options}
    runner = JobRunner(JobStore(str(tmp_path / "storage")), engines, RunnerOptions(**values))
    runner.start()
    return runner


def wait(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def finished(runner: JobRunner, job_id: str) -> Callable[[], bool]:
    return lambda: runner.snapshot(job_id).status in ("done", "failed", "cancelled")


def test_only_the_page_is_read_again_and_its_old_reading_is_kept(tmp_path: Path) -> None:
    main, other = Flaky({2}, batch_size=1), FakeEngine(batch_size=1)
    runner = start(tmp_path, Engines(main=main, other=other))
    try:
        record = runner.submit(job(runner.store, tmp_path, 3))
        wait(finished(runner, record.id))
        before = runner.snapshot(record.id)
        assert before.status == "done" and before.pages[1].status == "failed" and before.pages[1].engine == "fake"
        main.calls.clear()

        marked = runner.retry_page(record.id, 2)
        assert marked.pages[1].rerun == "auto" and marked.status in ("queued", "processing")
        assert marked.pages[1].status == "failed"  # the reading stays until the new one lands
        with pytest.raises(JobBusyError, match="being read again"):
            runner.retry_page(record.id, 2)
        wait(finished(runner, record.id))
        after = runner.snapshot(record.id)
        assert [n for call in main.calls for n in call] == [2]  # that page, nothing else
        page = after.pages[1]
        assert page.status == "done" and page.markdown and page.markdown.startswith("# Page 2") and page.rerun is None
        assert [(h.status, h.error, h.engine) for h in page.history] == [("failed", "the first reading failed", "fake")]
        assert after.status == "done" and after.error is None and after.progress().pages_failed == 0
        assert [p.model_dump() for p in after.pages if p.n != 2] == [p.model_dump() for p in before.pages if p.n != 2]

        runner.retry_page(record.id, 1, "other")  # another engine
        wait(lambda: runner.snapshot(record.id).pages[0].history != [])
        wait(finished(runner, record.id))
        assert [n for call in other.calls for n in call] == [1]
        stored = runner.store.load(record.id)
        assert stored is not None and stored.pages[0].history[0].markdown == before.pages[0].markdown
        assert stored.pages[1].history[0].error == "the first reading failed" and stored.status == "done"
    finally:
        runner.close()


def test_what_may_not_be_read_again(tmp_path: Path) -> None:
    slow = FakeEngine(batch_size=1, delay=0.3)
    runner = start(tmp_path, Engines(main=slow))
    try:
        record = runner.submit(job(runner.store, tmp_path, 3))
        with pytest.raises(JobBusyError, match="only the pages of a finished job"):
            runner.retry_page(record.id, 1)  # still running
        wait(finished(runner, record.id))
        with pytest.raises(JobNotFoundError, match="has no page 4"):
            runner.retry_page(record.id, 4)
        with pytest.raises(JobNotFoundError):
            runner.retry_page(new_job_id(), 1)
        for _ in range(READINGS_KEPT - 1):
            runner.retry_page(record.id, 3)
            wait(lambda: runner.snapshot(record.id).pages[2].rerun is None)
            wait(finished(runner, record.id))
        assert len(runner.snapshot(record.id).pages[2].history) == READINGS_KEPT - 1
        with pytest.raises(JobBusyError, match="the most a page keeps"):
            runner.retry_page(record.id, 3)

        cancelled = runner.submit(job(runner.store, tmp_path, 4))
        runner.cancel(cancelled.id)
        wait(finished(runner, cancelled.id))
        with pytest.raises(JobBusyError, match="was cancelled"):
            runner.retry_page(cancelled.id, 1)
    finally:
        runner.close()


class Gate(FakeEngine):
    """Holds every reading until ``open`` is set (the page is in flight as long as the test wants)."""

    def __init__(self) -> None:
        super().__init__(batch_size=1)
        import threading

        self.open = threading.Event()

    def recognize(self, pages: Sequence[Page], decoding: Decoding = GREEDY) -> list[PageText]:
        self.open.wait(30)
        return super().recognize(pages, decoding)


def test_a_re_reading_cut_by_a_restart_resumes_and_ends_done(tmp_path: Path) -> None:
    gate = Gate()
    gate.open.set()
    runner = start(tmp_path, Engines(main=gate), shutdown_grace=0.0)
    record = runner.submit(job(runner.store, tmp_path, 2))
    wait(finished(runner, record.id))
    gate.open.clear()
    runner.retry_page(record.id, 2)
    wait(lambda: runner.snapshot(record.id).status == "processing")
    runner.close()  # the page in flight is handed back: still marked, the job queued, its old reading there
    stored = runner.store.load(record.id)
    assert stored is not None and stored.status == "queued" and stored.finished_at is None
    assert stored.pages[1].rerun == "auto" and stored.pages[1].status == "done" and stored.pages[1].history == []

    gate.open.set()
    gate.calls.clear()
    again = start(tmp_path, Engines(main=gate))
    try:
        wait(finished(again, record.id))
        done = again.snapshot(record.id)
        assert [n for call in gate.calls for n in call] == [2]
        assert done.status == "done" and done.pages[1].rerun is None and len(done.pages[1].history) == 1
        assert done.finished_at is not None
    finally:
        again.close()


def test_a_cancelled_re_reading_leaves_the_job_as_it_was(tmp_path: Path) -> None:
    gate = Gate()
    gate.open.set()
    runner = start(tmp_path, Engines(main=gate))
    try:
        record = runner.submit(job(runner.store, tmp_path, 2))
        wait(finished(runner, record.id))
        before = runner.snapshot(record.id).pages[1]
        gate.open.clear()
        runner.retry_page(record.id, 2)
        wait(lambda: runner.snapshot(record.id).status == "processing")
        runner.cancel(record.id)
        gate.open.set()
        wait(finished(runner, record.id))
        after = runner.snapshot(record.id)
        assert after.status == "done" and after.error is None
        assert after.pages[1].rerun is None and after.pages[1].markdown == before.markdown
        assert after.documents[0].status == "done"
    finally:
        runner.close()
