"""A live app per test: uvicorn on 127.0.0.1 with an ephemeral port, in a thread, stopped with ``should_exit``."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

from gnosis_ocr.api import create_app
from gnosis_ocr.settings import Settings
from tests.conftest import REPO
from tests.support.fakeengine import FakeEngineSettings

UNREACHABLE = "http://127.0.0.1:9"  # nothing listens on the discard port
T = TypeVar("T")


def make_settings(cache_root: Path, endpoint: str = UNREACHABLE, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model_cache_path": cache_root,
        "model_name": REPO,
        "hf_endpoint": endpoint,
        "cache_download_workers": 2,
        "cache_lease_ttl": 5,
        "cache_lease_wait": 30,
        # the VLM by default: the model's life (resolve, warm, verify) is what /readyz and the cache routes follow
        "engine": "nanonets",
        "device": "cpu",
        "vlm_max_new_tokens": 8,
        "vlm_loop_guard": False,  # 8 tokens of a random model always stop at max tokens: no loop to guard here
        **overrides,
    }
    return FakeEngineSettings(**values)  # Settings, plus the fake engine's delay (tests/support/fakeengine.py)


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


@dataclass
class Live:
    server: uvicorn.Server
    thread: threading.Thread
    url: str
    client: httpx.Client
    started_in: float
    stopped_in: float | None = field(default=None)

    def stop(self, timeout: float = 15.0) -> float:
        """Ask uvicorn to exit and wait for its thread; the seconds it took."""
        if self.stopped_in is not None:
            return self.stopped_in
        began = time.monotonic()
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"server did not stop within {timeout} s"
        self.stopped_in = time.monotonic() - began
        return self.stopped_in

    def ready(self) -> dict[str, Any] | None:
        response = self.client.get("/readyz")
        return response.json() if response.status_code == 200 else None

    def metric(self, name: str, /, **labels: str) -> float | None:
        """One sample of /metrics (None when absent)."""
        text = self.client.get("/metrics").text
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if _canonical(key) == want:
                return float(value)
        return None


def _canonical(key: str) -> str:
    if "{" not in key:
        return key
    name, _, rest = key.partition("{")
    pairs = sorted(p for p in rest.rstrip("}").split(",") if p)
    return name + "{" + ",".join(pairs) + "}"


@pytest.fixture
def live() -> Iterator[Callable[..., Live]]:
    """``live(settings, **create_app kwargs)`` starts an app; every one started is stopped after the test."""
    servers: list[Live] = []

    def start(settings: Settings, headers: dict[str, str] | None = None, **kwargs: Any) -> Live:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(settings, **kwargs),
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="live-uvicorn", daemon=True)
        began = time.monotonic()
        thread.start()
        wait_for(lambda: server.started or not thread.is_alive(), 10, "uvicorn to start")
        assert server.started, "uvicorn exited during start-up"
        url = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=url, timeout=10, trust_env=False, headers=headers)
        live = Live(server, thread, url, client, time.monotonic() - began)
        servers.append(live)
        return live

    yield start
    for server in servers:
        server.stop()
