"""The edges of the API: the optional key, JSON errors for every failure, and `gnosis-ocr serve` itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import UNREACHABLE, Live, make_settings, wait_for
from tests.conftest import REPO

ROOT = Path(__file__).resolve().parents[2]
KEY = "s3cret-key-for-tests"


def test_api_key_guards_everything_but_the_probes(
    cache_root: Path, live: Callable[..., Live], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="gnosis_ocr")
    app = live(make_settings(cache_root, cache_mode="offline", api_key=KEY))
    c = app.client
    assert c.get("/healthz").status_code == 200
    assert c.get("/readyz").status_code == 503  # not 401: probes stay open
    assert c.get("/docs").status_code == 200 and c.get("/openapi.json").status_code == 200

    for method, path in (("GET", "/api/v1/cache"), ("POST", "/api/v1/cache/warm"), ("GET", "/metrics")):
        bare = c.request(method, path)
        assert bare.status_code == 401, path
        assert bare.json()["error"]["type"] == "UnauthorizedError"
        assert bare.headers["www-authenticate"].startswith("Bearer")
        wrong = c.request(method, path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "wrong" in wrong.json()["error"]["message"]

    assert c.get("/api/v1/cache", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert c.get("/api/v1/cache", headers={"X-API-Key": KEY}).status_code == 200
    assert c.get("/metrics", headers={"X-API-Key": KEY}).status_code == 200
    assert c.post("/api/v1/cache/warm", headers={"X-API-Key": KEY}).status_code == 409  # offline: authorised, refused
    assert c.get("/api/v1/cache", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    assert KEY not in caplog.text


def test_several_keys_are_accepted_for_rotation(cache_root: Path, live: Callable[..., Live]) -> None:
    app = live(make_settings(cache_root, cache_mode="offline", api_key=f" old-key , {KEY},"))
    for key in ("old-key", KEY):
        assert app.client.get("/api/v1/cache", headers={"X-API-Key": key}).status_code == 200, key
    for key in ("", "old-key,", f"old-key , {KEY}", "old"):
        assert app.client.get("/api/v1/cache", headers={"X-API-Key": key}).status_code == 401, key


def test_errors_are_json_with_a_type_message_and_hint(cache_root: Path, live: Callable[..., Live]) -> None:
    app = live(make_settings(cache_root, cache_mode="offline"))
    c = app.client

    missing = c.get("/no/such/route")
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "type": "NotFound",
        "message": "No route /no/such/route.",
        "hint": "The API is described at /docs.",
    }

    wrong_method = c.delete("/api/v1/cache")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"] == "MethodNotAllowed"

    for body in ({"refresh": "maybe"}, {"revision": "../../etc"}, {"revision": "a/./b"}, {"unknown": 1}):
        bad = c.post("/api/v1/cache/warm", json=body)
        assert bad.status_code == 422, body
        error = bad.json()["error"]
        assert error["type"] == "ValidationError" and error["message"].startswith("The request is not valid: body/")
        assert "etc" not in error["message"]  # the input is not echoed back
    assert c.get("/api/v1/cache", params={"revision": "x/.."}).status_code == 422
    not_json = c.post("/api/v1/cache/verify", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 422

    for response in (missing, wrong_method, not_json):
        assert "Traceback" not in response.text
    assert app.metric("gnosis_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert app.metric("gnosis_http_requests_total", method="DELETE", route="/api/v1/cache", status="405") == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_command_serves_and_stops(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "MODEL_CACHE_PATH": str(tmp_path / "cache"),
        "MODEL_NAME": REPO,
        "HF_ENDPOINT": UNREACHABLE,
        "GNOSIS_CACHE_MODE": "offline",
        "GNOSIS_ENGINE": "nanonets",  # the VLM: the start-up resolves (and here misses) the model
        "GNOSIS_STORAGE": str(tmp_path / "storage"),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("PORT", None)
    env.pop("GNOSIS_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gnosis_ocr", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                return httpx.get(f"{url}/healthz", timeout=1, trust_env=False).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, 20, "gnosis-ocr serve to answer", interval=0.1)
        ready = httpx.get(f"{url}/readyz", trust_env=False)
        assert ready.status_code == 503 and ready.json()["cache"]["root"] == str(tmp_path / "cache")
    finally:
        proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        _, stderr = proc.communicate(timeout=15)
    assert time.monotonic() - began < 10
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status still says SIGTERM
    assert proc.returncode == -signal.SIGTERM, stderr
    assert "Application shutdown complete" in stderr
    assert f"cache {tmp_path / 'cache'}, mode offline" in stderr
    assert f"model {REPO}@main is absent in {tmp_path / 'cache'}" in stderr
    assert f"Uvicorn running on http://127.0.0.1:{port}" in stderr
    assert "Traceback" not in stderr


def test_serve_help_explains() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gnosis_ocr", "serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0
    for words in ("--host", "--port", "/readyz", "GNOSIS_CACHE_MODE", "GNOSIS_API_KEY", "7799"):
        assert words in result.stdout, words
