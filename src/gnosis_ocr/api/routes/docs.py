"""``/docs``: Swagger UI served from the installed package, so the page works where no CDN is reachable.

FastAPI's own ``/docs`` page loads Swagger UI from cdn.jsdelivr.net. The app is built with ``docs_url=None`` and
``install_docs`` adds the page plus exactly three assets, read once from the ``fastapi_offline`` package's
``static/`` folder. Each asset is its own route: no part of a request path ever reaches the filesystem.
The page's asset URLs carry a hash of the asset (``?v=...``), so browsers may cache them for a year.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"
ASSET_TYPES = {  # the allowlist: name in fastapi_offline/static -> media type
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon.png": "image/png",
}
CACHE_CONTROL = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Asset:
    name: str
    body: bytes
    media_type: str
    digest: str  # first 16 hex digits of the SHA-256

    @property
    def etag(self) -> str:
        return f'"{self.digest}"'


def load_assets() -> dict[str, Asset]:
    """The allow-listed Swagger UI files from the installed ``fastapi_offline`` package."""
    folder = importlib.resources.files("fastapi_offline") / "static"
    assets = {}
    for name, media_type in ASSET_TYPES.items():
        try:
            body = (folder / name).read_bytes()
        except FileNotFoundError as exc:
            raise RuntimeError(
                f"Swagger UI asset {name} is missing from the fastapi_offline package ({folder}); "
                "reinstall it (pip install --force-reinstall fastapi-offline) or build the app without install_docs"
            ) from exc
        assets[name] = Asset(name, body, media_type, hashlib.sha256(body).hexdigest()[:16])
    return assets


def install_docs(app: FastAPI) -> None:
    """Add ``GET /docs`` and its assets to ``app``, which must be built with ``docs_url=None`` and serve its
    OpenAPI schema (``openapi_url``, by default ``/openapi.json``)."""
    openapi_url = app.openapi_url
    if openapi_url is None:
        raise ValueError("install_docs needs the OpenAPI schema: build the app with openapi_url set")
    if app.docs_url is not None:
        raise ValueError(f"the app already has FastAPI's CDN docs at {app.docs_url}: build it with docs_url=None")
    assets = load_assets()
    parameters = {**(app.swagger_ui_parameters or {}), "validatorUrl": None}  # no badge from validator.swagger.io
    title = f"{app.title} - Swagger UI"

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")  # behind a proxy that strips a prefix

        def url(name: str) -> str:
            return f"{root}{ASSETS_URL}/{name}?v={assets[name].digest}"

        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=title,
            swagger_js_url=url("swagger-ui-bundle.js"),
            swagger_css_url=url("swagger-ui.css"),
            swagger_favicon_url=url("favicon.png"),
            swagger_ui_parameters=parameters,
        )

    app.add_api_route(DOCS_URL, swagger_ui, methods=["GET"], include_in_schema=False, response_class=HTMLResponse)
    for asset in assets.values():
        path = f"{ASSETS_URL}/{asset.name}"
        app.add_api_route(path, _serve(asset), methods=["GET"], include_in_schema=False, name=f"docs:{asset.name}")


def _serve(asset: Asset) -> Callable[[Request], Awaitable[Response]]:
    headers = {"Cache-Control": CACHE_CONTROL, "ETag": asset.etag, "X-Content-Type-Options": "nosniff"}

    async def serve_asset(request: Request) -> Response:
        if asset.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    return serve_asset
