"""``GET /`` and ``GET /static/{name}`` over HTTP: the allowlist, content types, caching and security headers, and
markup that a strict Content-Security-Policy can run (no inline script or style, only files that are served)."""

from __future__ import annotations

import re
from collections.abc import Callable

from tests.api.conftest import Live

from gnosis_ocr.api.routes import web
from gnosis_ocr.web import STATIC_DIR

CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def test_the_page_and_its_files_with_types_and_headers(ui_server: Callable[..., Live]) -> None:
    client = ui_server().client
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-cache"

    types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
    assert {"app.js", "app.css", "logo.svg", "sse.js", "api.js"} <= set(web.ASSETS)
    for name in web.ASSETS:
        response = client.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert response.content == (STATIC_DIR / name).read_bytes()
        suffix = name[name.rindex(".") :]
        if suffix in types:
            assert response.headers["content-type"] == types[suffix], name
        assert response.headers["x-content-type-options"] == "nosniff"

    etag = client.get("/static/app.js").headers["etag"]
    again = client.get("/static/app.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    head = client.head("/static/app.css")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == (STATIC_DIR / "app.css").stat().st_size


OUTSIDE = (
    "/static/nope.js",
    "/static/..%2Fapp.py",
    "/static/%2e%2e%2f%2e%2e%2fsettings.py",
    "/static/../../pyproject.toml",
    "/static/..%5C__init__.py",
    "/static/",
    "/static/app.js%00.css",
    "/static/APP.JS",
    "/static/__init__.py",
)


def test_nothing_outside_the_allowlist_is_served(ui_server: Callable[..., Live]) -> None:
    client = ui_server().client
    for path in OUTSIDE:
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/json", path


def test_the_ui_needs_no_key_but_the_api_does(ui_server: Callable[..., Live]) -> None:
    client = ui_server(api_key="s3cret").client
    assert client.get("/").status_code == 200
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/api/v1/jobs/AAAAAAAAAAAAAAAAAAAAAA").status_code == 401


def test_the_markup_runs_under_the_policy() -> None:
    """No inline script, inline style or event handler attribute (the CSP would block them), and every file the
    page or a module names is one the allowlist serves."""
    html = (STATIC_DIR / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script>"
    assert "<style" not in html and not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html, re.IGNORECASE)
    named = re.findall(r'(?:src|href)="/static/([^"]+)"', html)
    for module in STATIC_DIR.glob("*.js"):
        named += re.findall(r'from "\./([^"]+)"', module.read_text())
    assert named and set(named) <= set(web.ASSETS), set(named) - set(web.ASSETS)
