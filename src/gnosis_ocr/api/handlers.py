"""Errors to HTTP: one handler for the whole ``GnosisError`` tree, and the same JSON for everything else.

Every error body is ``{"error": {"type", "message", "hint"}}``. Routes raise ``GnosisError``s and never build
error responses themselves. Nothing answers or logs a traceback: an unexpected exception is logged by its type,
a short message and where it was raised, and the client gets a plain 500.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gnosis_ocr.api.errors import BusyError, StorageFullError, UnauthorizedError, status_for
from gnosis_ocr.errors import GnosisError, QueueFullError

logger = logging.getLogger(__name__)

AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="gnosis-ocr"'}
RETRY_LATER = {"Retry-After": "30"}
RETRY_SOON = {"Retry-After": "5"}


def error_body(kind: str, message: str, hint: str | None = None) -> dict[str, dict[str, str | None]]:
    return {"error": {"type": kind, "message": message, "hint": hint}}


def error_response(
    status: int, kind: str, message: str, hint: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(kind, message, hint), status_code=status, headers=headers)


async def _gnosis_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, GnosisError):  # pragma: no cover - registered for GnosisError only
        raise exc
    status = status_for(exc)
    log = logger.warning if status >= 500 else logger.info
    log("%s %s -> %d %s: %s", request.method, request.url.path, status, type(exc).__name__, exc.message)
    headers: Mapping[str, str] | None = None
    if isinstance(exc, UnauthorizedError):
        headers = AUTHENTICATE
    elif isinstance(exc, QueueFullError | StorageFullError):
        headers = RETRY_LATER
    elif isinstance(exc, BusyError):
        headers = RETRY_SOON
    return error_response(status, type(exc).__name__, exc.message, exc.hint, headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
        raise exc
    phrase = HTTPStatus(exc.status_code).phrase
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else phrase
    if exc.status_code == 404 and message == phrase:
        message = f"No route {request.url.path}."
    allowed = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow")
    if exc.status_code == 405 and message == phrase and allowed:
        message = f"{request.method} is not allowed on {request.url.path}; it takes {allowed}."
    hint = "The API is described at /docs." if exc.status_code in (404, 405) else None
    return error_response(exc.status_code, phrase.replace(" ", "").replace("-", ""), message, hint, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RequestValidationError):  # pragma: no cover
        raise exc
    # location and reason only: pydantic's "input" would echo what the client sent
    problems = ["/".join(str(p) for p in err.get("loc", ())) + ": " + str(err.get("msg", "")) for err in exc.errors()]
    return error_response(422, "ValidationError", "The request is not valid: " + "; ".join(problems) + ".")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GnosisError, _gnosis_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(CatchAllMiddleware)


class CatchAllMiddleware:
    """Anything no handler took becomes a JSON 500, logged once with its traceback (the client sees only that it
    failed).

    Starlette's own catch-all re-raises after answering, so the server would print the traceback a second time;
    this one sits inside it and ends the exception here.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_and_note(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:
            logger.error(
                "%s %s: unexpected %s at %s: %.200s",
                scope.get("method"),
                scope.get("path"),
                type(exc).__name__,
                _where(exc),
                exc,
                exc_info=exc,  # our own bug: its traceback belongs in the log, once
            )
            if started:
                return  # too late for a status; the server closes the unfinished response
            body = json.dumps(error_body("InternalError", "Internal server error.", "See the server log.")).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno} in {last.name}"
