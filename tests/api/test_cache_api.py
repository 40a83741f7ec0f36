"""The cache endpoints: status, warm in the background (one at a time), full verify, and shutdown mid-warm."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gnosis_ocr.modelcache import ModelCache
from tests.api.conftest import Live, make_settings, wait_for
from tests.conftest import REPO
from tests.support.hubserver import LocalHub


def _finished(app: Live, revision: str | None = None) -> Callable[[], dict[str, Any] | None]:
    def probe() -> dict[str, Any] | None:
        params = {"revision": revision} if revision else None
        doc: dict[str, Any] = app.client.get("/api/v1/cache", params=params).json()
        return doc if not doc["warm"]["running"] else None

    return probe


def test_status_is_the_cli_report(
    hub: LocalHub, cache: ModelCache, cache_root: Path, live: Callable[..., Live]
) -> None:
    cache.warm(REPO)
    app = live(make_settings(cache_root, hub.endpoint))
    doc = app.client.get("/api/v1/cache").json()
    cli_keys = {"model", "revision", "commit", "state", "check", "path", "files", "size_bytes", "expected_bytes"}
    cli_keys |= {"faults", "leftovers", "cache_root", "policy"}
    assert cli_keys <= set(doc) and "warm" in doc
    assert doc["state"] == "complete" and doc["check"] == "fast" and doc["faults"] == []
    assert doc["size_bytes"] == doc["expected_bytes"] > 0 and doc["cache_root"] == str(cache_root)
    other = app.client.get("/api/v1/cache", params={"revision": "no-such-branch"}).json()
    assert other["state"] != "complete" and other["commit"] is None and other["revision"] == "no-such-branch"


@pytest.fixture
def second_commit(hub: LocalHub, tiny_model: Path, tmp_path: Path) -> str:
    """Branch ``v2`` of the repository: the tiny model plus one file."""
    v2 = tmp_path / "v2"
    shutil.copytree(tiny_model, v2)
    (v2 / "NOTES.md").write_text("a second commit\n")
    return hub.add_repo(REPO, v2, revision="v2")


def test_second_warm_is_409_while_the_first_runs(
    hub: LocalHub, cache: ModelCache, cache_root: Path, second_commit: str, live: Callable[..., Live]
) -> None:
    cache.warm(REPO)
    app = live(make_settings(cache_root, hub.endpoint))
    wait_for(app.ready, 60, "readiness")

    hub.throttle_bytes_per_s = 600_000
    first = app.client.post("/api/v1/cache/warm", json={"revision": "v2"})
    assert first.status_code == 202, first.text
    assert first.headers["location"] == "/api/v1/cache"
    accepted = first.json()
    assert accepted["revision"] == "v2" and accepted["warm"]["running"] and accepted["warm"]["kind"] == "warm"

    second = app.client.post("/api/v1/cache/warm", json={"revision": "v2"})
    assert second.status_code == 409
    assert "already running" in second.json()["error"]["message"]
    verify = app.client.post("/api/v1/cache/verify")
    assert verify.status_code == 409 and verify.json()["error"]["type"] == "ConflictError"
    assert app.client.get("/readyz").status_code == 200  # the served revision is untouched

    done = wait_for(_finished(app, "v2"), 20, "the v2 warm")
    assert done["warm"]["error"] is None and done["warm"]["bytes_done"] == done["warm"]["bytes_total"] > 0
    assert done["state"] == "complete" and done["commit"] == second_commit
    served = app.client.get("/readyz").json()
    assert served["ready"] and served["commit"] != second_commit


def test_verify_finds_a_zeroed_shard_and_warm_repairs_it(
    hub: LocalHub, cache: ModelCache, cache_root: Path, live: Callable[..., Live]
) -> None:
    snapshot = cache.warm(REPO).snapshot_dir
    app = live(make_settings(cache_root, hub.endpoint))
    wait_for(app.ready, 60, "readiness")

    shard = sorted(snapshot.glob("*.safetensors"))[0]
    shard.write_bytes(bytes(shard.stat().st_size))  # same size: only a hash finds it
    assert app.client.get("/api/v1/cache").json()["state"] == "complete"

    verify = app.client.post("/api/v1/cache/verify")
    assert verify.status_code == 200
    report = verify.json()
    assert report["check"] == "full" and report["state"] == "incomplete"
    assert [(f["path"], f["kind"]) for f in report["faults"]] == [(shard.name, "hash")]
    assert "cache repair" in (report["fix"] or "")  # the verdict names its repair, over HTTP too
    assert app.metric("gnosis_cache_verifications_total", check="full", result="incomplete") == 1

    not_ready = app.client.get("/readyz")
    assert not_ready.status_code == 503
    assert shard.name in not_ready.json()["reason"] and not_ready.json()["cache"]["faults"][0]["kind"] == "hash"

    repair = app.client.post("/api/v1/cache/warm")
    assert repair.status_code == 202 and repair.json()["warm"]["kind"] == "repair"
    wait_for(app.ready, 30, "readiness after the repair")
    again = app.client.post("/api/v1/cache/verify").json()
    assert again["state"] == "complete" and again["faults"] == []


def test_shutdown_stops_a_running_warm_and_leaves_no_temp_files(
    hub: LocalHub, cache_root: Path, live: Callable[..., Live], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gnosis_ocr")
    hub.throttle_bytes_per_s = 100_000  # about six seconds a shard: still running when we stop
    app = live(make_settings(cache_root, hub.endpoint))
    wait_for(lambda: app.client.get("/readyz").json()["warm"]["bytes_done"] > 0, 10, "download progress")
    assert app.stop() < 4, "shutdown must not wait for the download"
    assert "startup of gnosis-test/tiny-qwen2.5-vl@main stopped by shutdown" in caplog.text
    assert not list(cache_root.rglob("*.gnosis-tmp-*")), "a stopped warm must not leave temp files"
    reopened = ModelCache(cache_root, endpoint=hub.endpoint).status(REPO)
    assert reopened.state != "complete"
