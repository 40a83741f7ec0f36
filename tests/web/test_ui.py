"""The web UI in headless Chromium against a live app with the fake engine: upload, live pages, the page image
beside its text, raw Markdown, downloads, a phone-sized screen, errors in words, the API key, hostile names."""

from __future__ import annotations

import base64
import io
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api", reason="Playwright (a dev dependency) drives the browser")
from playwright.sync_api import Locator, expect
from tests.api.conftest import Live
from tests.documents import make
from tests.web.conftest import UiPage


def scanned_pdf(pages: int) -> bytes:
    """A PDF of page images with no text layer, as a scanner makes them, so every page goes to the engine."""
    from PIL import Image, ImageDraw
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=make.LETTER, invariant=True)
    for number in range(1, pages + 1):
        image = Image.new("L", (425, 550), 255)
        draw = ImageDraw.Draw(image)
        draw.text((40, 40), f"Scanned page {number}", fill=0)
        draw.rectangle((40, 80, 40 + 60 * number, 100), fill=0)
        pdf.drawImage(ImageReader(image), 0, 0, *make.LETTER)
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()


THREE_PAGES = scanned_pdf(3)
DONE = "[data-testid=page-item][data-status=done]"


def artifacts() -> Path:
    folder = Path(os.environ.get("GNOSIS_TEST_ARTIFACTS", "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pdf_file(name: str = "letter.pdf", data: bytes = THREE_PAGES) -> dict[str, object]:
    return {"name": name, "mimeType": "application/pdf", "buffer": data}


def upload(ui: UiPage, *files: dict[str, object]) -> None:
    ui.testid("file-input").set_input_files(list(files))
    ui.testid("submit").click()


def wait_done(ui: UiPage, pages: int = 3) -> None:
    expect(ui.page.locator(DONE)).to_have_count(pages)
    expect(ui.testid("job-status")).to_contain_text("Done")


def page_item(ui: UiPage, n: int) -> Locator:
    return ui.page.locator(f"[data-testid=page-item][data-page='{n}']")


def assert_clean(ui: UiPage) -> None:
    assert ui.log.off_host() == [], "the UI must not load anything from elsewhere"
    assert ui.log.script_problems() == []
    assert ui.log.dialogs == []


def watch_page_items(ui: UiPage) -> None:
    """Record every status each page item shows, in order (a MutationObserver; evaluate is not subject to CSP)."""
    ui.page.evaluate(
        """() => {
            window.__seen = [];
            const note = (el) => window.__seen.push([el.dataset.page, el.dataset.status]);
            new MutationObserver((records) => {
                for (const r of records) {
                    if (r.type === "attributes") note(r.target);
                    for (const node of r.addedNodes) {
                        if (node.nodeType === 1) node.querySelectorAll("[data-testid=page-item]").forEach(note);
                    }
                }
            }).observe(document.body, {subtree: true, childList: true, attributes: true,
                                       attributeFilter: ["data-status"]});
        }"""
    )


def test_upload_follow_read_and_download(ui_server: Callable[..., Live], open_page: Callable[..., UiPage]) -> None:
    server = ui_server()
    ui = open_page(server, 1280, 900)
    index = ui.page.request.get(server.url + "/")
    assert "default-src 'self'" in index.headers["content-security-policy"]
    watch_page_items(ui)

    upload(ui, pdf_file("letter.pdf"))
    wait_done(ui)
    assert re.search(r"#job=[A-Za-z0-9_-]{22}$", ui.page.url)
    expect(ui.testid("job-title")).to_have_text("letter.pdf")
    seen: list[list[str]] = ui.page.evaluate("window.__seen")
    for n in "123":
        statuses = [status for page, status in seen if page == n]
        assert statuses[0] == "pending" and statuses[-1] == "done", (n, statuses)  # listed first, then done
        assert "pending" not in statuses[statuses.index("done") :], (n, statuses)

    page_item(ui, 2).click()
    expect(page_item(ui, 2)).to_have_attribute("aria-current", "page")
    expect(ui.testid("page-html").locator("h1")).to_have_text("Page 2")  # rendered Markdown, not source
    ui.until("document.querySelector('[data-testid=page-image]').naturalWidth > 0")
    expect(ui.testid("page-image")).to_have_attribute("alt", re.compile(r"^Page 2\b"))
    assert ui.page.evaluate("document.querySelector('[data-testid=page-image]').src").startswith("blob:")

    ui.testid("raw-toggle").click()
    expect(ui.testid("raw-toggle")).to_have_attribute("aria-pressed", "true")
    expect(ui.testid("page-raw")).to_be_visible()
    expect(ui.testid("page-raw")).to_contain_text("# Page 2")
    expect(ui.testid("page-html")).to_be_hidden()
    ui.testid("raw-toggle").click()
    expect(ui.testid("page-html")).to_be_visible()

    ui.page.keyboard.press("ArrowRight")
    expect(page_item(ui, 3)).to_have_attribute("aria-current", "page")
    expect(ui.testid("page-html")).to_contain_text("Page 3")
    ui.page.keyboard.press("ArrowLeft")
    expect(ui.testid("page-html")).to_contain_text("Page 2")

    with ui.page.expect_download() as info:
        ui.testid("download-md").click()
    download = info.value
    assert download.suggested_filename == "letter.md"
    markdown = Path(download.path()).read_text()
    markers = [markdown.index(f"<!-- page {n} -->") for n in (1, 2, 3)]
    assert markers == sorted(markers)

    ui.page.screenshot(path=str(artifacts() / "web-ui-desktop.png"), full_page=True)
    assert_clean(ui)


def test_phone_sized_screen(ui_server: Callable[..., Live], open_page: Callable[..., UiPage]) -> None:
    ui = open_page(ui_server(), 375, 812, is_mobile=True, has_touch=True, device_scale_factor=2)
    assert ui.page.evaluate("document.documentElement.scrollWidth") <= 375

    upload(ui, pdf_file("a-rather-long-file-name-for-a-phone-screen-scan-2026-11-28.pdf"))
    wait_done(ui)
    page_item(ui, 2).tap()
    expect(ui.testid("page-html")).to_contain_text("Page 2")
    ui.until("document.querySelector('[data-testid=page-image]').naturalWidth > 0")

    image, text = ui.testid("page-image").bounding_box(), ui.testid("page-html").bounding_box()
    assert image is not None and text is not None
    assert image["y"] + image["height"] <= text["y"], "one column: the page image above its text"
    assert image["width"] <= 375 and text["width"] <= 375
    item = page_item(ui, 1).bounding_box()
    assert item is not None and item["height"] >= 44 and item["width"] >= 44, "tap targets of at least 44 px"
    assert ui.page.evaluate("document.documentElement.scrollWidth") <= 375, "no horizontal scrolling"

    ui.page.screenshot(path=str(artifacts() / "web-ui-phone.png"), full_page=True)
    assert_clean(ui)


def test_a_refused_file_is_explained_and_the_page_stays_usable(
    ui_server: Callable[..., Live], open_page: Callable[..., UiPage]
) -> None:
    ui = open_page(ui_server())
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("notes.txt", "not a document")
    statuses: list[int] = []
    ui.page.on("response", lambda r: r.url.endswith("/api/v1/jobs") and statuses.append(r.status))

    upload(ui, pdf_file("notes.pdf", archive.getvalue()))
    alert = ui.testid("alert")
    expect(alert).to_be_visible()
    expect(alert).to_have_attribute("role", "alert")
    expect(alert).to_contain_text("notes.pdf")
    expect(alert).to_contain_text("ZIP")
    assert statuses == [415]
    assert "#job=" not in ui.page.url

    ui.page.get_by_role("button", name="Remove notes.pdf").click()
    upload(ui, pdf_file("letter.pdf"))
    wait_done(ui)
    expect(alert).to_be_hidden()
    assert statuses == [415, 202]
    assert_clean(ui)


def test_the_api_key_is_asked_for_kept_in_the_tab_and_never_put_in_a_url(
    ui_server: Callable[..., Live], open_page: Callable[..., UiPage]
) -> None:
    server = ui_server(api_key="s3cret")
    ui = open_page(server)  # the UI itself needs no key

    upload(ui, pdf_file("letter.pdf"))
    key = ui.testid("api-key")
    expect(key).to_be_visible()
    expect(key).to_be_focused()
    key.fill("wrong")
    ui.testid("api-key-submit").click()
    expect(ui.page.locator("#key-reason")).to_contain_text("refused")
    key.fill("s3cret")
    ui.testid("api-key-submit").click()  # the upload goes again with the key
    wait_done(ui)
    expect(ui.testid("api-key")).to_be_hidden()
    assert ui.page.evaluate("sessionStorage.getItem('gnosis-ocr.api-key')") == "s3cret"

    ui.page.reload()  # the job id in the URL hash reattaches; the key is still in this tab
    ui.page.wait_for_selector("html[data-ready='true']", state="attached")
    wait_done(ui)
    page_item(ui, 2).click()
    ui.until("document.querySelector('[data-testid=page-image]').naturalWidth > 0")

    assert all("s3cret" not in url for url in ui.log.urls())
    keyed = [r.url for r in ui.log.requests if r.headers.get("x-api-key") == "s3cret"]
    for path in ("/api/v1/jobs", "/events", "/pages/2", "/pages/2/image"):
        assert any(url.split("?")[0].endswith(path) for url in keyed), f"{path} without the key header"
    assert_clean(ui)


def test_a_hostile_file_name_is_shown_as_text(ui_server: Callable[..., Live], open_page: Callable[..., UiPage]) -> None:
    ui = open_page(ui_server())
    name = "<img src=x onerror=alert(1)>.pdf"

    ui.testid("file-input").set_input_files([pdf_file(name)])
    expect(ui.page.locator("#file-list")).to_contain_text(name)
    ui.testid("submit").click()
    wait_done(ui)
    expect(ui.testid("job-title")).to_have_text(name)

    assert ui.page.locator("img[src='x'], [onerror]").count() == 0
    assert ui.log.dialogs == []
    assert_clean(ui)


def test_a_dropped_file_is_followed_by_polling_when_the_event_stream_fails(
    ui_server: Callable[..., Live], open_page: Callable[..., UiPage]
) -> None:
    ui = open_page(ui_server())
    ui.page.route("**/events", lambda route: route.abort())  # a proxy that breaks streams, say
    ui.page.evaluate(
        """(data) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const files = new DataTransfer();
            files.items.add(new File([bytes], "dropped.pdf", {type: "application/pdf"}));
            const zone = document.querySelector("[data-testid=dropzone]");
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, {dataTransfer: files, bubbles: true, cancelable: true}));
            }
        }""",
        base64.b64encode(THREE_PAGES).decode(),
    )
    expect(ui.page.locator("#file-list")).to_contain_text("dropped.pdf")
    ui.testid("submit").click()
    wait_done(ui)
    assert any(url.endswith("?text=false") for url in ui.log.urls()), "polled GET /api/v1/jobs/{id}?text=false"
    assert ui.log.off_host() == [] and ui.log.page_errors == [] and ui.log.dialogs == []


def test_cancel_a_running_job_then_start_a_new_one(
    ui_server: Callable[..., Live], open_page: Callable[..., UiPage]
) -> None:
    ui = open_page(ui_server(fake_engine_delay=0.3))
    upload(ui, pdf_file("long.pdf", scanned_pdf(12)))  # three batches of the fake engine: time to cancel
    expect(ui.testid("job-status")).to_contain_text("Reading")
    ui.testid("cancel").click()
    expect(ui.testid("job-status")).to_contain_text("Cancelled")
    expect(ui.testid("cancel")).to_be_hidden()
    assert ui.page.locator(DONE).count() < 12
    expect(ui.testid("download-md")).to_be_enabled()

    ui.testid("new-job").click()
    expect(ui.testid("dropzone")).to_be_visible()
    assert "#job=" not in ui.page.url
    upload(ui, pdf_file("letter.pdf"))
    wait_done(ui)
    assert_clean(ui)
