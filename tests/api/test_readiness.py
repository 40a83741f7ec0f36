"""Start-up as operators meet it: /healthz at once, /readyz follows the cache policy, /metrics tells the story."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gnosis_ocr.modelcache import ModelCache
from tests.api.conftest import Live, make_settings, wait_for
from tests.conftest import REPO, model_size
from tests.support.hubserver import LocalHub


def test_empty_cache_auto_warms_in_the_background(
    hub: LocalHub, cache_root: Path, tiny_model: Path, live: Callable[..., Live]
) -> None:
    hub.throttle_bytes_per_s = 500_000  # the warm takes about a second: long enough to be seen
    began = time.monotonic()
    app = live(make_settings(cache_root, hub.endpoint))
    assert app.client.get("/healthz").json() == {"status": "ok"}
    assert time.monotonic() - began < 3, "health must not wait for the model"

    first = app.client.get("/readyz")
    assert first.status_code == 503
    body = first.json()
    assert body["ready"] is False and body["model"] == REPO and body["cache"]["mode"] == "auto"
    assert body["engine"]["name"] == "vlm" and body["engine"]["state"] == "waiting for the model"
    assert body["warm"]["kind"] == "startup" and body["warm"]["running"] is True

    def progress_seen() -> dict[str, Any] | None:
        warm = app.client.get("/api/v1/cache").json()["warm"]
        return warm if warm["bytes_done"] > 0 or not warm["running"] else None

    wait_for(progress_seen, 10, "download progress")
    ready = wait_for(app.ready, 60, "the background warm and the engine load")
    commit = app.client.get("/api/v1/cache").json()["commit"]
    assert ready["engine"] == {
        "name": "vlm",
        "state": "ready",
        "reason": "GNOSIS_ENGINE=nanonets",  # the older name of the VLM engine still works
        "device": "cpu",
        "backend": "transformers",
        "model": REPO,
        "revision": commit,
        "profile": "generic-qwen2.5-vl",
        "endpoint": None,  # the remote engine's server; an in-process engine has none
    }
    assert ready["commit"] == commit
    assert ready["cache"] == {"state": "complete", "root": str(cache_root), "mode": "auto", "faults": []}
    size = model_size(tiny_model)
    assert ready["warm"]["running"] is False and ready["warm"]["error"] is None
    assert ready["warm"]["bytes_done"] == ready["warm"]["bytes_total"] == size
    assert "warmed into the cache" in ready["reason"]

    assert app.metric("gnosis_cache_lookups_total", result="miss") == 1
    assert app.metric("gnosis_cache_lookups_total", result="hit") is None
    assert app.metric("gnosis_cache_downloaded_bytes_total") == size
    assert (app.metric("gnosis_http_requests_total", method="GET", route="/readyz", status="503") or 0) >= 1
    assert (app.metric("gnosis_http_requests_total", method="GET", route="/readyz", status="200") or 0) >= 1


def test_complete_cache_is_ready_at_once_without_the_hub(
    hub: LocalHub, cache: ModelCache, cache_root: Path, live: Callable[..., Live]
) -> None:
    commit = cache.warm(REPO).commit
    hub.reset_counters()
    app = live(make_settings(cache_root, hub.endpoint))
    ready = wait_for(app.ready, 60, "readiness from a complete cache")
    assert ready["commit"] == commit and ready["cache"]["state"] == "complete"
    assert "complete in the cache" in ready["reason"]
    assert ready["warm"]["bytes_total"] == 0
    assert app.metric("gnosis_cache_lookups_total", result="hit") == 1
    assert app.metric("gnosis_cache_lookups_total", result="miss") is None
    assert hub.request_count == 0, hub.requests


def test_offline_and_absent_is_not_ready_and_says_how_to_fix_it(cache_root: Path, live: Callable[..., Live]) -> None:
    app = live(make_settings(cache_root, cache_mode="offline"))

    def settled() -> dict[str, Any] | None:
        response = app.client.get("/readyz")
        assert response.status_code == 503
        body = response.json()
        return body if not body["warm"]["running"] else None

    body = wait_for(settled, 30, "the start-up check")
    assert body["engine"]["state"] == "waiting for the model"
    assert body["cache"]["state"] == "absent" and body["cache"]["mode"] == "offline"
    assert f"`gnosis-ocr cache warm {REPO}`" in str(body["reason"])
    assert "GNOSIS_CACHE_MODE=offline" in str(body["reason"])

    warm = app.client.post("/api/v1/cache/warm")
    assert warm.status_code == 409
    error = warm.json()["error"]
    assert error["type"] == "ConflictError" and "never downloads" in error["message"]
    assert "gnosis-ocr cache warm" in error["hint"]

    status = app.client.get("/api/v1/cache")
    assert status.status_code == 200
    assert status.json()["state"] == "absent" and status.json()["policy"] == "offline"
    assert app.metric("gnosis_cache_lookups_total", result="miss") == 1
