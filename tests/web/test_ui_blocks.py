"""The viewer outlines the layout engine's blocks on the page image (a toggle), in headless Chromium."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api", reason="Playwright (a dev dependency) drives the browser")
import pypdfium2 as pdfium
from playwright.sync_api import expect
from tests.api.conftest import Live
from tests.documents import make
from tests.support import layoutpages as lp
from tests.web.conftest import UiPage
from tests.web.test_ui import artifacts, assert_clean, page_item, pdf_file, upload, wait_done

from gnosis_ocr.engines.layout import find_layout_model
from gnosis_ocr.errors import EngineUnavailableError

try:
    find_layout_model()
except EngineUnavailableError as exc:  # pragma: no cover - the dev install has it
    pytest.skip(f"no layout model here: {exc.message}", allow_module_level=True)


def test_blocks_are_outlined_on_the_page_image(
    ui_server: Callable[..., Live], open_page: Callable[..., UiPage], tmp_path: Path
) -> None:
    server = ui_server(engine="layout", ocr_workers=1)
    ui = open_page(server, 1280, 900)
    report, _ = lp.layout_pdf(tmp_path / "report.pdf", [lp.report_page(1)])
    # as a scan (a PNG): the typeset PDF's text layer would be taken as it is, and such a page has no blocks
    scan = io.BytesIO()
    pdfium.PdfDocument(report)[0].render(scale=150 / 72).to_pil().save(scan, format="PNG")
    upload(ui, {"name": "report.png", "mimeType": "image/png", "buffer": scan.getvalue()})
    wait_done(ui, pages=1)
    job_id = ui.page.url.rsplit("#job=", 1)[1]
    page = server.client.get(f"/api/v1/jobs/{job_id}").json()["pages"][0]
    blocks = page["meta"]["blocks"] + page["meta"]["furniture"]
    assert any(b["type"] == "table" for b in blocks), blocks

    toggle = ui.testid("blocks-toggle")
    outlines = ui.testid("block-outlines")
    image = ui.testid("page-image")
    expect(image).to_be_visible()
    expect(toggle).to_be_visible()
    expect(toggle).to_have_attribute("aria-pressed", "false")
    expect(outlines).to_be_hidden()

    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "true")
    expect(outlines).to_be_visible()
    drawn = outlines.locator(".block-outline")
    expect(drawn).to_have_count(len(blocks))
    expect(outlines.locator(".block-table")).to_have_count(sum(b["type"] == "table" for b in blocks))
    expect(outlines.locator(".block-title .block-label")).to_have_text(["1 title"])  # first in reading order

    # each box sits where the engine found it, at the size the image is shown at
    shown = image.bounding_box()
    assert shown is not None
    scale = shown["width"] / page["width"]
    for n, block in enumerate(blocks):
        box = drawn.nth(n).bounding_box()
        assert box is not None
        x0, y0, x1, y1 = block["bbox"]
        assert abs(box["x"] - (shown["x"] + x0 * scale)) <= 2, (block, box)
        assert abs(box["y"] - (shown["y"] + y0 * scale)) <= 2, (block, box)
        assert abs(box["width"] - (x1 - x0) * scale) <= 2, (block, box)
        assert abs(box["height"] - (y1 - y0) * scale) <= 2, (block, box)
    ui.page.screenshot(path=str(artifacts() / "web-ui-block-outlines.png"), full_page=False)

    toggle.click()
    expect(outlines).to_be_hidden()
    assert_clean(ui)


def test_pages_without_blocks_offer_no_outlines(
    ui_server: Callable[..., Live], open_page: Callable[..., UiPage]
) -> None:
    server = ui_server(engine="tesseract", ocr_workers=1, text_layer="never")
    ui = open_page(server, 1280, 900)
    upload(ui, pdf_file("letter.pdf", make.text_pdf([["Invoice 2026-17 for March"]], font_size=16)))
    wait_done(ui, pages=1)
    page_item(ui, 1).click()
    expect(ui.testid("page-image")).to_be_visible()
    expect(ui.testid("blocks-toggle")).to_be_hidden()
    expect(ui.testid("block-outlines")).to_be_hidden()
    assert_clean(ui)
