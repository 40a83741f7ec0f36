"""The web UI: ``GET /`` (index.html) and ``GET /static/{name}`` (its scripts, stylesheet and logo).

What can be served is fixed when this module is imported: the plain files in ``gnosis_ocr/web/static`` with a
known suffix. A request's ``name`` is only a key into that mapping, never joined onto a path, so nothing the
client sends reaches the filesystem; anything else is 404. No API key: the UI asks for one when the API answers
401 (docs/API.md). Every answer carries a strict Content-Security-Policy (no inline script or style, nothing
from other origins) and ``Cache-Control: no-cache`` with an ETag, so an upgrade never mixes old and new files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Final

from fastapi import APIRouter, HTTPException, Request, Response

from gnosis_ocr.web import STATIC_DIR

MEDIA_TYPES: Final[Mapping[str, str]] = MappingProxyType(
    {
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".svg": "image/svg+xml",
        ".png": "image/png",
        ".ico": "image/x-icon",
    }
)

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
HEADERS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
)
INDEX: Final = "index.html"


def static_files(folder: Path) -> Mapping[str, Path]:
    """Name -> path of every servable file directly in ``folder`` (no dot files, no folders, known suffixes)."""
    if not folder.is_dir():
        return MappingProxyType({})
    found = {
        path.name: path
        for path in sorted(folder.iterdir())
        if path.is_file() and not path.name.startswith(".") and path.suffix in MEDIA_TYPES
    }
    return MappingProxyType(found)


ASSETS: Final = static_files(STATIC_DIR)


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@cache
def _asset(name: str) -> Asset:
    """The file ``name`` of ``ASSETS``, read once (the package's files do not change while it runs)."""
    path = ASSETS[name]
    body = path.read_bytes()
    return Asset(body, MEDIA_TYPES[path.suffix], '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def _answer(request: Request, name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(status_code=404)
    asset = _asset(name)
    headers = {**HEADERS, "ETag": asset.etag}
    if asset.etag in _etags(request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else asset.body
    response = Response(body, media_type=asset.media_type, headers=headers)
    if request.method == "HEAD":
        response.headers["Content-Length"] = str(len(asset.body))
    return response


def _etags(value: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in value.split(",") if tag.strip()}


router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
def index(request: Request) -> Response:
    """The single page of the UI."""
    return _answer(request, INDEX)


@router.api_route("/static/{name}", methods=["GET", "HEAD"])
def static(request: Request, name: str) -> Response:
    """One file of the UI, by its name in the allowlist."""
    return _answer(request, name)
