"""``/docs`` without a CDN: the page names only local URLs, the three assets come from the package, nothing else
is served, and in a real browser the Swagger UI renders while every request stays on 127.0.0.1."""

from __future__ import annotations

import asyncio
import importlib.resources
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gnosis_ocr.api.routes.docs import ASSET_TYPES, CACHE_CONTROL, install_docs

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"]
STATIC = importlib.resources.files("fastapi_offline") / "static"


def make_app(**kwargs: Any) -> FastAPI:
    app = FastAPI(title="docs-test", docs_url=None, redoc_url=None, **kwargs)

    @app.get("/api/v1/things/{thing_id}", summary="One thing")
    async def get_thing(thing_id: int) -> dict[str, int]:
        return {"id": thing_id}

    @app.post("/api/v1/things", summary="Make a thing")
    async def make_thing() -> dict[str, int]:
        return {"id": 1}

    install_docs(app)
    return app


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(make_app()) as test_client:
        yield test_client


def referenced_urls(page: str) -> list[str]:
    """Every URL the page loads: src/href attributes and the spec URL handed to SwaggerUIBundle."""
    return re.findall(r'(?:src|href)="([^"]*)"', page) + re.findall(r"url: '([^']*)'", page)


def test_docs_page_references_only_local_urls(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert re.findall(r"https?://", page) == []
    urls = referenced_urls(page)
    assert "/openapi.json" in urls
    for name in ASSET_TYPES:
        assert any(url.startswith(f"/docs/assets/{name}?v=") for url in urls), (name, urls)
    assert all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    assert '"validatorUrl": null' in page  # no badge fetched from validator.swagger.io


def test_docs_page_follows_root_path() -> None:
    with TestClient(make_app(), root_path="/ocr") as prefixed:
        urls = referenced_urls(prefixed.get("/docs").text)
    assert "/ocr/openapi.json" in urls
    assert all(url.startswith("/ocr/") for url in urls), urls


@pytest.mark.parametrize("name", sorted(ASSET_TYPES))
def test_each_asset_is_served_from_the_package(client: TestClient, name: str) -> None:
    response = client.get(f"/docs/assets/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == ASSET_TYPES[name]
    assert response.content == (STATIC / name).read_bytes()
    assert len(response.content) > 4000
    assert response.headers["cache-control"] == CACHE_CONTROL
    assert response.headers["x-content-type-options"] == "nosniff"
    again = client.get(f"/docs/assets/{name}", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""


def test_asset_urls_change_with_the_asset(client: TestClient) -> None:
    page = client.get("/docs").text
    bundle = next(url for url in referenced_urls(page) if "swagger-ui-bundle.js" in url)
    assert client.get(bundle).headers["etag"].strip('"') == bundle.rpartition("?v=")[2]


@pytest.mark.parametrize(
    "path",
    [
        "/docs/assets/../../etc/passwd",  # the client normalises this to /etc/passwd
        "/docs/assets/..%2F..%2Fetc%2Fpasswd",
        "/docs/assets/%2e%2e/%2e%2e/etc/passwd",
        "/docs/assets/redoc.standalone.js",  # in the package, not in the allowlist
        "/docs/assets/__init__.py",
        "/docs/assets/",
        "/docs/assets",
        "/docs/assets/swagger-ui.css/x",
        "/docs/assets/SWAGGER-UI.CSS",
    ],
)
def test_anything_else_is_404(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


def test_unnormalised_traversal_is_404() -> None:
    """The path exactly as a raw HTTP client could send it, straight into the ASGI app."""
    app = make_app()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for raw in (
        b"/docs/assets/../../etc/passwd",
        b"/docs/assets/./../../../etc/passwd",
        b"/docs/assets/..\\favicon.png",
    ):
        sent.clear()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": raw.decode(),
            "raw_path": raw,
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"testserver")],
            "client": ("127.0.0.1", 1),
            "server": ("testserver", 80),
        }
        asyncio.run(app(scope, receive, send))
        start = next(message for message in sent if message["type"] == "http.response.start")
        assert start["status"] == 404, raw
        body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
        assert b"root:" not in body


def test_docs_routes_stay_out_of_the_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) == {"/api/v1/things/{thing_id}", "/api/v1/things"}


def test_install_refuses_an_app_with_cdn_docs_or_no_schema() -> None:
    with pytest.raises(ValueError, match="docs_url=None"):
        install_docs(FastAPI())
    with pytest.raises(ValueError, match="openapi_url"):
        install_docs(FastAPI(docs_url=None, redoc_url=None, openapi_url=None))


# --- a real browser -------------------------------------------------------------------------------------------


@pytest.fixture
def server_url() -> Iterator[str]:
    """The test app under uvicorn on 127.0.0.1 (ephemeral port), stopped after the test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(make_app(), log_config=None, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="docs-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_swagger_ui_renders_offline_in_chromium(server_url: str) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian package chromium); this test needs a real browser")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright (a dev dependency) drives the browser")
    requested: list[str] = []
    failed: list[str] = []
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            context = browser.new_context()
            context.on("request", lambda request: requested.append(request.url))
            context.on("requestfailed", lambda request: failed.append(request.url))
            page = context.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{server_url}/docs")
            page.wait_for_selector(".opblock", timeout=20_000)
            summaries = page.locator(".opblock-summary-path").all_inner_texts()
            title = page.title()
        finally:
            browser.close()
    assert any("/api/v1/things/" in text for text in summaries), summaries
    assert any(text.strip() == "/api/v1/things" for text in summaries), summaries
    assert title == "docs-test - Swagger UI"
    assert f"{server_url}/openapi.json" in requested
    local = [url for url in requested if urlsplit(url).scheme in {"data", "blob"} or url.startswith(server_url + "/")]
    assert local == requested, f"requests that left 127.0.0.1: {sorted(set(requested) - set(local))}"
    assert failed == [] and errors == []
