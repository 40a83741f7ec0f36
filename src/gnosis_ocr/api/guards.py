"""ASGI guards at the HTTP edge: which requests are answered at all, and which connections end with the answer.

``SiteGuard`` refuses what a browser sends on another site's behalf: a POST, PUT, PATCH or DELETE whose
``Sec-Fetch-Site`` (or, from browsers that lack it, whose ``Origin``) says it comes from another origin gets 403,
unless GNOSIS_ALLOWED_ORIGINS names that origin. Clients that are not browsers send neither header and pass; so does
the web UI, which is same-origin. With GNOSIS_ALLOWED_HOSTS set it also answers 421 to a ``Host`` it does not name
(DNS rebinding), except on the probes, which the platform calls by address.

``CloseUnreadBody`` ends the connection after a response to a request whose body the app did not read to its end
(a 401, 403, 413 or a 503 for a full queue, answered before the upload was read): the response says
``Connection: close`` and the server stops reading, instead of reading and dropping gigabytes to keep the
connection alive.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gnosis_ocr.api.errors import CrossSiteError, HostNotAllowedError, ServiceError
from gnosis_ocr.api.handlers import error_response

logger = logging.getLogger(__name__)

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SAME_SITE_VALUES = frozenset({"same-origin", "none"})  # none: the user's own action (address bar, bookmark)
PROBES = frozenset({"/healthz", "/readyz"})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def split_host(value: str) -> tuple[str, str | None]:
    """``name[:port]`` (``[v6]:port`` too) as lower-case name and port (None when absent)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") and rest[1:] else None
    name, colon, port = value.rpartition(":")
    if not colon or ":" in name:  # no port, or a bare IPv6 address
        return value, None
    return name, port or None


def host_allowed(host: str | None, allowed: Iterable[str]) -> bool:
    """Whether a Host header matches one of ``allowed``: ``name`` (any port), ``name:port``, ``*.domain``."""
    if not host:
        return False
    name, port = split_host(host)
    for entry in allowed:
        want, want_port = split_host(entry)
        if want_port is not None and want_port != port:
            continue
        if want == name or (want.startswith("*.") and name.endswith(want[1:])):
            return True
    return False


def cross_site_reason(
    method: str, origin: str | None, fetch_site: str | None, host: str | None, allowed_origins: Iterable[str]
) -> str | None:
    """Why a request must be refused as cross-site, or None when it may go on."""
    origin = origin.strip().lower().rstrip("/") if origin is not None else None
    if method.upper() not in STATE_CHANGING or (origin and origin in allowed_origins):
        return None
    if fetch_site is not None:  # every current browser sends it; it is decided by the browser, not by a proxy
        site = fetch_site.strip().lower()
        if site in SAME_SITE_VALUES:
            return None
        return f"the browser marked it Sec-Fetch-Site: {site[:20]}" + (f" (Origin {origin[:80]})" if origin else "")
    if origin is None:
        return None  # not a browser, or a browser that sends no Origin on a same-origin request
    netloc = urlsplit(origin).netloc if origin != "null" else ""
    if netloc and host is not None and netloc == host.strip().lower():
        return None
    return f"its Origin {origin[:80]} is not this server's ({(host or '?')[:80]})"


class SiteGuard:
    """403 for state-changing cross-site browser requests, 421 for a Host not in ``allowed_hosts`` (when set)."""

    def __init__(self, app: ASGIApp, allowed_origins: tuple[str, ...], allowed_hosts: tuple[str, ...]) -> None:
        self.app = app
        self.allowed_origins = allowed_origins
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        logger.info(
            "%s %s -> %d %s: %s",
            scope["method"],
            scope["path"],
            refusal.status,
            type(refusal).__name__,
            refusal.message,
        )
        response = error_response(refusal.status, type(refusal).__name__, refusal.message, refusal.hint)
        await response(scope, receive, send)

    def _refusal(self, scope: Scope) -> ServiceError | None:
        host = _header(scope, b"host")
        if self.allowed_hosts and scope["path"] not in PROBES and not host_allowed(host, self.allowed_hosts):
            return HostNotAllowedError(
                f"This server does not answer for the host {(host or 'none')[:80]!r}.",
                hint="Use the server's own address; the operator lists its names in GNOSIS_ALLOWED_HOSTS.",
            )
        reason = cross_site_reason(
            scope["method"], _header(scope, b"origin"), _header(scope, b"sec-fetch-site"), host, self.allowed_origins
        )
        if reason is None:
            return None
        return CrossSiteError(
            f"{scope['method']} {scope['path'][:80]} was refused as a cross-site request: {reason}.",
            hint="Send it from the web UI or a program (no browser Origin), or have the operator add the page's "
            "origin to GNOSIS_ALLOWED_ORIGINS.",
        )


class CloseUnreadBody:
    """``Connection: close`` on a response that starts before the request's body was read to its end."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        body_done = False

        async def receive_and_note() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True  # the last chunk, or the client went away
            return message

        async def send_and_close(message: Message) -> None:
            if message["type"] == "http.response.start" and not body_done:
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
                logger.info(
                    "%s %s -> %d before its body was read: closing the connection",
                    scope.get("method"),
                    scope.get("path"),
                    message["status"],
                )
            await send(message)

        await self.app(scope, receive_and_note, send_and_close)


def _has_body(scope: Scope) -> bool:
    length = _header(scope, b"content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return _header(scope, b"transfer-encoding") is not None
