"""Reading a page again from the web UI, in headless Chromium against a live app with the fake engine: a page taken
from its PDF text layer offers "Read this page again", the click asks the server, and the new reading shows."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api", reason="Playwright (a dev dependency) drives the browser")
from playwright.sync_api import expect
from tests.api.conftest import Live
from tests.documents import make
from tests.web.conftest import UiPage

TEXT_PDF = make.text_pdf([["A letter with a text layer"], ["Its second page, also text"]])


def artifacts() -> Path:
    folder = Path(os.environ.get("GNOSIS_TEST_ARTIFACTS", "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_a_text_layer_page_is_read_again_and_shows_its_new_text(
    ui_server: Callable[..., Live], open_page: Callable[..., UiPage]
) -> None:
    server = ui_server()
    ui = open_page(server, 1280, 900)
    ui.testid("file-input").set_input_files([{"name": "letter.pdf", "mimeType": "application/pdf", "buffer": TEXT_PDF}])
    ui.testid("submit").click()
    expect(ui.page.locator("[data-testid=page-item][data-status=done]")).to_have_count(2)
    expect(ui.testid("job-status")).to_contain_text("Done")

    ui.page.locator("[data-testid=page-item][data-page='2']").click()
    expect(ui.testid("page-html")).to_contain_text("Its second page")  # from the text layer (no OCR ran)
    expect(ui.testid("page-retry")).to_be_visible()
    expect(ui.testid("retry-page")).to_be_enabled()
    ui.page.screenshot(path=str(artifacts() / "web-ui-page-retry-offer.png"), full_page=True)

    ui.testid("retry-page").click()
    expect(ui.testid("page-html").locator("h1")).to_have_text("Page 2")  # the engine's reading now
    expect(ui.testid("page-retry-note")).to_contain_text("read 2 times")
    expect(ui.testid("retry-page")).to_be_hidden()  # read by the engine itself: nothing more to offer
    expect(ui.testid("job-status")).to_contain_text("Done")

    job_id = ui.page.url.rsplit("#job=", 1)[1]
    job = server.client.get(f"/api/v1/jobs/{job_id}").json()
    page = job["pages"][1]
    assert page["source"] == "ocr" and page["markdown"].startswith("# Page 2")
    assert page["history"][0]["source"] == "text-layer" and "second page" in page["history"][0]["markdown"]
    assert job["pages"][0]["history"] == []  # the other page was left alone

    ui.page.locator("[data-testid=page-item][data-page='1']").click()
    expect(ui.testid("page-retry")).to_be_visible()  # still from its text layer: the offer stays
    ui.page.locator("[data-testid=page-item][data-page='2']").click()
    expect(ui.testid("page-html").locator("h1")).to_have_text("Page 2")
    ui.page.screenshot(path=str(artifacts() / "web-ui-page-retry.png"), full_page=True)
    assert ui.log.off_host() == [] and ui.log.script_problems() == [] and ui.log.dialogs == []
