"""Cross-site requests as Chromium really sends them: a page of another site posts a form to the server (the
classic CSRF, which needs no CORS) and is refused with 403, while the UI on the server's own origin uploads."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

pytest.importorskip("playwright.sync_api", reason="Playwright (a dev dependency) drives the browser")
from tests.api.conftest import Live
from tests.documents import make
from tests.web.conftest import UiPage
from tests.web.test_ui import assert_clean, pdf_file, upload, wait_done

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Route

ATTACK = """<!doctype html><html><body>
<form id="f" method="post" enctype="multipart/form-data" action="TARGET/api/v1/jobs">
  <input type="file" name="file" id="file">
</form>
<form id="w" method="post" action="TARGET/api/v1/cache/warm"></form>
</body></html>"""


def test_another_sites_page_cannot_start_anything_but_the_ui_can(
    ui_server: Callable[..., Live], browser: Browser, open_page: Callable[..., UiPage]
) -> None:
    server = ui_server()
    attacker = server.url.replace("127.0.0.1", "localhost") + "/attack"  # another site (localhost, not the IP)
    context = browser.new_context()
    try:
        page = context.new_page()
        answers: list[tuple[str, int]] = []
        page.on("response", lambda response: answers.append((response.url, response.status)))

        def serve_attack(route: Route) -> None:
            route.fulfill(status=200, content_type="text/html", body=ATTACK.replace("TARGET", server.url))

        page.route(attacker, serve_attack)  # the attacker's page; the form goes to the real server
        page.goto(attacker)
        page.set_input_files("#file", files=[{"name": "x.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1"}])
        with page.expect_navigation():
            page.evaluate("document.getElementById('f').submit()")
        page.goto(attacker)
        with page.expect_navigation():
            page.evaluate("document.getElementById('w').submit()")
    finally:
        context.close()
    refused = [(url, status) for url, status in answers if url.startswith(server.url)]
    assert refused == [(f"{server.url}/api/v1/jobs", 403), (f"{server.url}/api/v1/cache/warm", 403)], answers
    assert not server.metric("gnosis_jobs_submitted_total")

    ui = open_page(server)  # the UI itself, same origin, uploads and downloads as before
    upload(ui, pdf_file("报告📄.pdf", make.text_pdf([["same origin"]])))
    wait_done(ui, pages=1)
    with ui.page.expect_download() as info:
        ui.testid("download-md").click()
    assert info.value.suggested_filename == "报告📄.md"  # the name from filename*, not the ASCII fallback
    assert_clean(ui)
