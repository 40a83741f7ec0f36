"""A loopback HTTP server that answers as an OpenAI-compatible model server would, and fails on demand.

vLLM will not produce a 429, a 503, a dropped connection or a hung request when asked; this server does, one
scripted step per chat-completions request (then ``ok`` for every request), and records what it was sent. Used by
the remote engine's tests (tests/engines/test_remote.py, tests/api/test_remote_readiness.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "nanonets/Nanonets-OCR-s"
KEY = "sk-remote-test-7f3a9c"  # a key whose every appearance in a log would be found


@dataclass
class Script:
    """What the server answers to chat completions, one step per request; then ``ok`` for every request."""

    steps: deque[tuple[str, Any]] = field(default_factory=deque)
    models: list[dict[str, str]] = field(default_factory=lambda: [{"id": MODEL, "root": "/models/x"}])
    models_status: int = 200
    content: str = "# Page\n\nHello <page_number>3/9</page_number>"
    finish_reason: str = "stop"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    at: float


class FaultServer:
    """A ThreadingHTTPServer on 127.0.0.1: ``GET /v1/models`` and ``POST /v1/chat/completions`` as scripted."""

    def __init__(self, port: int = 0) -> None:
        self.script = Script()
        self.seen: list[Seen] = []
        self.active = 0  # chat requests being answered now
        self.most_active = 0
        self.disconnects = 0  # hung requests whose client went away
        self.lock = threading.Lock()
        self.release = threading.Event()  # ends every "hang" step
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _send(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                server.seen.append(Seen("GET", self.path, dict(self.headers), None, time.monotonic()))
                if server.script.models_status != 200:
                    self._send(server.script.models_status, {"error": "Unauthorized"})
                else:
                    self._send(200, {"object": "list", "data": server.script.models})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with server.lock:
                    server.seen.append(Seen("POST", self.path, dict(self.headers), body, time.monotonic()))
                    step = server.script.steps.popleft() if server.script.steps else ("ok", None)
                    server.active += 1
                    server.most_active = max(server.most_active, server.active)
                try:
                    self._answer(*step)
                finally:
                    with server.lock:
                        server.active -= 1

            def _answer(self, kind: str, arg: Any) -> None:
                if kind == "ok":
                    time.sleep(arg or 0)
                    self._send(200, completion(server.script.content, server.script.finish_reason))
                elif kind == "status":
                    status, headers = arg
                    self._send(status, {"error": {"message": f"scripted {status}", "code": status}}, headers)
                elif kind == "drop":  # close the connection without an answer
                    self.close_connection = True
                    self.connection.shutdown(2)
                elif kind == "hang":  # answer nothing until released or the client goes away
                    self.connection.settimeout(0.05)
                    while not server.release.is_set():
                        try:
                            if self.connection.recv(1) == b"":
                                with server.lock:
                                    server.disconnects += 1
                                return
                        except TimeoutError:
                            continue
                        except OSError:
                            with server.lock:
                                server.disconnects += 1
                            return
                    self._send(200, completion(server.script.content, "stop"))
                elif kind == "garbage":
                    data = b"<html>not json</html>"
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def posts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(content: str, finish_reason: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 17, "total_tokens": 117},
    }
