"""A page image that cannot be made costs the page its image, never the page, and never silently: the failure is
logged once with its traceback and the page's text still lands (before: one warning line without the cause, for
encoder bugs and storage errors alike)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gnosis_ocr.jobs.runner import JobRunner
from tests.jobs.test_runner import _job, _runner, _wait
from tests.support.fakeengine import FakeEngine


def test_an_image_the_encoder_refuses_is_logged_with_its_traceback_and_the_page_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_encoder(image: Image.Image, fp: Any, filename: str | bytes) -> None:
        raise ValueError("the WebP encoder choked")

    monkeypatch.setitem(Image.SAVE, "WEBP", broken_encoder)  # the lowest seam: PIL's WebP encoder itself
    caplog.set_level(logging.WARNING, logger="gnosis_ocr.jobs.sink")
    runner: JobRunner = _runner(tmp_path, FakeEngine(batch_size=1))
    try:
        record = runner.submit(_job(runner.store, tmp_path, 2))
        _wait(lambda: runner.snapshot(record.id).status == "done")
        done = runner.snapshot(record.id)
    finally:
        runner.close()
    assert [(p.status, p.image) for p in done.pages] == [("done", False), ("done", False)]
    assert all(p.markdown.startswith(f"# Page {p.n}") for p in done.pages)
    failures = [r for r in caplog.records if "page image not encoded" in r.getMessage()]
    assert len(failures) == 2 and all(r.levelno == logging.ERROR for r in failures)
    assert failures[0].exc_info is not None and "the WebP encoder choked" in str(failures[0].exc_info[1])
    assert record.id in failures[0].getMessage()
