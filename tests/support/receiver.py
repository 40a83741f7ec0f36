"""A callback receiver for tests: a real HTTP server on 127.0.0.1 that records every request and answers from a
script (``answers``: statuses, or (status, headers) pairs, used in turn; the last one repeats)."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.monotonic()

    def json(self) -> Any:
        return json.loads(self.body)

    def signed_by(self, secret: str) -> bool:
        """The signature is HMAC-SHA256 over ``timestamp + "." + body``, as docs/API.md tells receivers."""
        timestamp = self.headers["x-gnosis-timestamp"]
        expected = hmac.new(secret.encode(), timestamp.encode() + b"." + self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers["x-gnosis-signature"], f"sha256={expected}")


class Receiver:
    def __init__(self, answers: list[int | tuple[int, dict[str, str]]] | None = None) -> None:
        self.answers: list[int | tuple[int, dict[str, str]]] = list(answers or [200])
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 1 << 20))
                with receiver._arrived:
                    receiver.received.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
                    )
                    answer = receiver.answers[min(len(receiver.received), len(receiver.answers)) - 1]
                    receiver._arrived.notify_all()
                status, headers = (answer, {}) if isinstance(answer, int) else answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def wait(self, count: int, timeout: float = 20.0) -> list[Received]:
        """The first ``count`` requests, once they have arrived (AssertionError after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.received)} of {count} callbacks arrived in {timeout} s")
                self._arrived.wait(left)
            return list(self.received)

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@contextmanager
def receiving(answers: list[int | tuple[int, dict[str, str]]] | None = None) -> Iterator[Receiver]:
    receiver = Receiver(answers).start()
    try:
        yield receiver
    finally:
        receiver.stop()
