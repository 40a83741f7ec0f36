"""/readyz on a server whose default engine is the remote one: what the model server answered at start."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gnosis_ocr.settings import Settings
from tests.api.conftest import Live, wait_for
from tests.support.openaifault import KEY, MODEL, FaultServer


@pytest.fixture
def server() -> Iterator[FaultServer]:
    fault = FaultServer()
    try:
        yield fault
    finally:
        fault.stop()


def test_readyz_says_what_the_model_server_answered(
    server: FaultServer, live: Callable[..., Live], tmp_path: Path
) -> None:
    settings = Settings(
        engine="remote",
        vlm_url=server.url,
        vlm_api_key=KEY,
        vlm_startup_wait_seconds=0,
        storage=str(tmp_path / "storage"),
        model_cache_path=tmp_path / "cache",
        hf_endpoint="http://127.0.0.1:9",  # never asked: the remote engine loads no model here
    )

    def settled(app: Live) -> httpx.Response | None:
        response = app.client.get("/readyz")
        return response if response.json()["engine"]["state"] in ("ready", "failed") else None

    server.script.models = [{"id": "Qwen/Qwen2.5-VL-7B-Instruct", "root": "/models/qwen"}]
    app = live(settings)
    refused = wait_for(lambda: settled(app), 15, "the engine to settle")
    assert refused.status_code == 503
    reason = refused.json()["reason"]
    assert f"serves 'Qwen/Qwen2.5-VL-7B-Instruct', not '{MODEL}'" in reason and "GNOSIS_VLM_SERVED_MODEL" in reason

    commit = "ade2630c" * 5
    server.script.models = [{"id": MODEL, "root": f"/cache/huggingface/hub/models--a--b/snapshots/{commit}"}]
    app = live(settings)
    ready = wait_for(lambda: settled(app), 15, "the engine to settle")
    assert ready.status_code == 200, ready.text
    engine = ready.json()["engine"]
    assert (engine["name"], engine["backend"], engine["model"], engine["revision"], engine["endpoint"]) == (
        "remote",
        "remote",
        MODEL,
        commit,
        server.url,
    )
    assert f"{server.url} serves {MODEL} (commit {commit[:7]})" in ready.json()["reason"]
    assert KEY not in ready.text
