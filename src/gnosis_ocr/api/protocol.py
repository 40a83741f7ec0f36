"""uvicorn's httptools protocol with bounds on what one client connection may cost before it has made a request.

uvicorn bounds neither the time a client takes to send a request's line and headers (a "slowloris" sending one
byte a second holds its connection for ever) nor their size with httptools (``h11_max_incomplete_event_size`` is
for h11 only; a 64 MiB header line costs the event loop seconds of copying), nor the number of open connections
(``limit_concurrency`` answers 503 only once a request's headers are complete, so idle sockets still pile up to
the descriptor limit). This subclass adds the three, and ``gnosis-ocr serve`` runs it:

- a request's head (request line and headers) must arrive within ``header_timeout`` seconds of its first byte, and
  a new connection must start one within that time: 408 (or a silent close when nothing came), then close;
- a head over ``max_header_bytes``: 431 and close, checked as the bytes arrive, before the parser buffers more;
- a connection over ``max_connections`` open at once: 503 with Retry-After and close, at once.

Idle keep-alive connections are closed after uvicorn's ``timeout_keep_alive``. Every refusal carries the service's
error JSON. Nothing here reads settings: ``configured`` makes a subclass bound to the values it is given.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 5


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: ClassVar[float] = 10.0
    max_header_bytes: ClassVar[int] = 64 * 1024
    max_connections: ClassVar[int] = 1000

    @classmethod
    def configured(
        cls, *, header_timeout: float, max_header_bytes: int, max_connections: int
    ) -> type[BoundedHttpToolsProtocol]:
        attrs = {
            "header_timeout": header_timeout,
            "max_header_bytes": max_header_bytes,
            "max_connections": max_connections,
        }
        return type("ConfiguredBoundedHttpToolsProtocol", (cls,), attrs)

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._reading_head = True  # the next bytes belong to a request line and headers
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            logger.warning(
                "%s: refused, %d connections are open (GNOSIS_HTTP_MAX_CONNECTIONS=%d)",
                self._peer(),
                len(self.connections) - 1,
                self.max_connections,
            )
            self._refuse(
                503,
                "TooManyConnectionsError",
                f"The server has {self.max_connections} connections open, the most it takes.",
                "Retry in a few seconds.",
                extra=[(b"retry-after", str(RETRY_AFTER_S).encode())],
            )
            return
        self._arm_head_timer()  # a connection that never starts a request is closed like a slow one

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
            if self._head_timer is None:
                self._arm_head_timer()
        super().data_received(data)
        if self._reading_head and self._head_bytes > self.max_header_bytes and not self.transport.is_closing():
            logger.warning(
                "%s: request head over %d bytes (GNOSIS_HTTP_MAX_HEADER_BYTES), closing",
                self._peer(),
                self.max_header_bytes,
            )
            self._refuse(
                431,
                "HeaderTooLargeError",
                f"The request line and headers are longer than the {self.max_header_bytes} bytes they may be.",
                "Send shorter headers (cookies, tokens); GNOSIS_HTTP_MAX_HEADER_BYTES on the server sets the bound.",
            )

    # -- parser callbacks --

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True  # what comes next on this connection is another request's head

    # -- the head timer --

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._reading_head:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_timer()  # a response is still going out (an event stream): the next head can wait
            return
        if self._head_bytes == 0:
            self.transport.close()  # nothing was asked: close quietly, as an idle keep-alive connection
            return
        logger.warning(
            "%s: request head not complete after %.0f s (GNOSIS_HTTP_HEADER_TIMEOUT), closing",
            self._peer(),
            self.header_timeout,
        )
        self._refuse(
            408,
            "RequestTimeoutError",
            f"The request line and headers did not arrive within {self.header_timeout:g} s.",
            "Send the request again; the operator sets the bound with GNOSIS_HTTP_HEADER_TIMEOUT.",
        )

    # -- answers written by hand (no request cycle to answer through) --

    def _refuse(
        self, status: int, kind: str, message: str, hint: str, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self._cancel_head_timer()
        body = json.dumps({"error": {"type": kind, "message": message, "hint": hint}}).encode()
        lines = [f"HTTP/1.1 {status} {_PHRASES[status]}\r\n".encode()]
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *(extra or []),
        ]
        lines.extend(name + b": " + value + b"\r\n" for name, value in headers)
        self.transport.write(b"".join([*lines, b"\r\n", body]))
        self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "client"


_PHRASES = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}
