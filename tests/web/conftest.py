"""The web UI in a real browser: Debian's Chromium driven by Playwright (no browser download), against a live app.

``ui_server(**settings)`` starts the app (fake engine, storage in tmp) on loopback; ``browser`` is one headless
Chromium per module; ``open_page(server, viewport)`` opens a fresh context whose every request, console error,
page error and dialog is recorded, so tests can prove that nothing left 127.0.0.1 and no script misbehaved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from tests.api import conftest as api_conftest
from tests.api.conftest import Live, make_settings, wait_for

from gnosis_ocr.api.routes import web

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, Request

live = api_conftest.live  # the live-server fixture of tests/api, shared

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"]
FAKE_ENGINE_DELAY = 0.15  # seconds per page, so a page list is seen before the pages finish


@pytest.fixture
def ui_server(live: Callable[..., Live], cache_root: Path, tmp_path: Path) -> Callable[..., Live]:
    """``ui_server(**overrides)``: a ready app on 127.0.0.1 with the fake engine and the web UI."""

    def start(**overrides: Any) -> Live:
        values: dict[str, Any] = {
            "engine": "fake",
            "storage": str(tmp_path / "storage"),
            "fake_engine_delay": FAKE_ENGINE_DELAY,
            **overrides,
        }
        server = live(make_settings(cache_root, **values))
        app = server.server.config.app
        if not any(getattr(route, "path", None) == "/" for route in app.routes):
            app.include_router(web.router)  # create_app does not serve the UI yet: add it the way it will
        wait_for(server.ready, 30, "readyz")
        return server

    return start


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian package chromium); the UI tests need a real browser")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright (a dev dependency) drives the browser")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class PageLog:
    """What one browser page did: requests by URL, console errors, uncaught exceptions, dialogs."""

    requests: list[Request] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def request(self, request: Request) -> None:
        self.requests.append(request)

    def urls(self) -> list[str]:
        return [request.url for request in self.requests]

    def off_host(self) -> list[str]:
        """Requests that went anywhere but 127.0.0.1 (blob: URLs of the page's own origin are fine)."""
        return [
            url
            for url in self.urls()
            if urlsplit(url.removeprefix("blob:")).hostname != "127.0.0.1" and not url.startswith("data:")
        ]

    def script_problems(self) -> list[str]:
        """Console errors other than the browser's own note on a 4xx answer, and uncaught exceptions."""
        noise = "Failed to load resource: the server responded with a status of 4"
        return [text for text in self.console_errors if not text.startswith(noise)] + self.page_errors


@dataclass
class UiPage:
    page: Page
    log: PageLog
    url: str

    def testid(self, name: str) -> Any:
        return self.page.get_by_test_id(name)

    def until(self, expression: str, timeout: float = 20.0) -> Any:
        """Poll a JavaScript expression until it is truthy. (Playwright's wait_for_function compiles its
        predicate with eval, which the UI's Content-Security-Policy rightly refuses; evaluate is not eval.)"""
        return wait_for(lambda: self.page.evaluate(expression), timeout, expression)


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., UiPage]]:
    """``open_page(server, width=1280, height=900, **context options)``: a fresh context at the UI's ``/``."""
    contexts = []

    def open_(server: Live, width: int = 1280, height: int = 900, **options: Any) -> UiPage:
        context = browser.new_context(viewport={"width": width, "height": height}, **options)
        contexts.append(context)
        log = PageLog()
        context.on("request", log.request)  # Playwright wants a Python function, not a bound builtin
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.on("console", lambda message: _console(log, message))
        page.on("pageerror", lambda error: log.page_errors.append(str(error)))
        page.on("dialog", lambda dialog: _dialog(log, dialog))
        page.goto(server.url + "/")
        page.wait_for_selector("html[data-ready='true']", state="attached")
        return UiPage(page, log, server.url)

    yield open_
    for context in contexts:
        context.close()


def _console(log: PageLog, message: ConsoleMessage) -> None:
    if message.type == "error":
        log.console_errors.append(message.text)


def _dialog(log: PageLog, dialog: Dialog) -> None:
    log.dialogs.append(f"{dialog.type}: {dialog.message}")
    dialog.dismiss()
