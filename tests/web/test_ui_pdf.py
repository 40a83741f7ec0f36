"""The UI's PDF download in headless Chromium: the searchable PDF of the job, beside Markdown, JSON and ZIP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api", reason="Playwright (a dev dependency) drives the browser")
import pypdfium2 as pdfium
from playwright.sync_api import expect
from tests.api.conftest import Live
from tests.documents import make
from tests.web.conftest import UiPage
from tests.web.test_ui import artifacts, assert_clean, pdf_file, upload, wait_done


def test_download_the_searchable_pdf(ui_server: Callable[..., Live], open_page: Callable[..., UiPage]) -> None:
    server = ui_server(engine="tesseract", ocr_workers=1)
    ui = open_page(server, 1280, 900)
    letter = make.text_pdf([["Invoice 2026-17 for March"], ["Terms and conditions apply"]], font_size=16)
    expect(ui.testid("download-pdf")).to_be_hidden()  # no job yet
    upload(ui, pdf_file("letter.pdf", letter))
    wait_done(ui, pages=2)
    buttons = ui.page.locator(".downloads button")
    expect(buttons).to_have_text(["Markdown", "JSON", "ZIP", "PDF"])
    expect(ui.testid("download-pdf")).to_be_enabled()
    with ui.page.expect_download() as info:
        ui.testid("download-pdf").click()
    download = info.value
    assert download.suggested_filename == "letter.pdf"
    pdf = pdfium.PdfDocument(Path(download.path()).read_bytes())
    assert len(pdf) == 2
    assert pdf[0].get_textpage().get_text_range().split() == ["Invoice", "2026-17", "for", "March"]
    ui.page.screenshot(path=str(artifacts() / "web-ui-pdf-download.png"), full_page=False)
    assert_clean(ui)
