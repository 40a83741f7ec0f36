"""The remote engine against a real loopback HTTP server of our own (tests/support/openaifault.py) that answers as
an OpenAI-compatible server would, and fails on demand (vLLM will not produce a 429, a 503 or a dropped connection
when asked): retries, backoff and Retry-After, timeouts, cancelling a page, the concurrency bound, the API key,
the model check.

The same engine against a real ``vllm serve`` is tested in tests/e2e/test_remote_service.py.
"""

from __future__ import annotations

import base64
import io
import logging
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError
from dataclasses import replace
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gnosis_ocr.documents.model import Page
from gnosis_ocr.engines.base import Decoding
from gnosis_ocr.engines.profiles import NANONETS_OCR_S, OLMOCR_2
from gnosis_ocr.engines.remote import RemoteEngine, backoff_delay, parse_url, retry_after
from gnosis_ocr.errors import ConfigError, EngineUnavailableError
from gnosis_ocr.settings import Settings
from tests.api.conftest import wait_for
from tests.support.objectstores import free_port
from tests.support.openaifault import KEY, MODEL, FaultServer


@pytest.fixture
def server() -> Iterator[FaultServer]:
    fault = FaultServer()
    try:
        yield fault
    finally:
        fault.stop()


def engine_for(server: FaultServer, **options: Any) -> RemoteEngine:
    defaults: dict[str, Any] = {
        "model": MODEL,
        "profile": NANONETS_OCR_S,
        "tries": 4,
        "backoff": 0.01,
        "backoff_max": 2.0,
        "startup_wait": 0,
        "read_timeout": 10,
    }
    return RemoteEngine(server.url, **(defaults | options))


@pytest.fixture
def engine(server: FaultServer) -> Iterator[RemoteEngine]:
    remote = engine_for(server)
    try:
        yield remote
    finally:
        remote.close()


def page(number: int = 1, size: tuple[int, int] = (400, 300)) -> Page:
    rng = random.Random(number)  # noqa: S311 (test data)
    return Page(number=number, image=Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3)))


# -- pure parts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("http://vlm:8000/v1", "http://vlm:8000/v1"),
        ("https://vlm.example.com/v1/", "https://vlm.example.com/v1"),
        ("http://10.0.0.7:8000", "http://10.0.0.7:8000/v1"),  # no path: where OpenAI-compatible servers answer
        ("http://[::1]:8000/openai/v1", "http://[::1]:8000/openai/v1"),
    ],
)
def test_the_server_url_is_normalised(url: str, base: str) -> None:
    assert parse_url(url).base == base


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("file:///etc/passwd", "http:// or https://"),
        ("ftp://vlm/v1", "http:// or https://"),
        ("vlm:8000/v1", "http:// or https://"),
        ("http:///v1", "no host"),
        ("http://user:secret@vlm:8000/v1", "credentials"),
        ("http://vlm:8000/v1?key=secret", "query"),
        ("http://vlm:port/v1", "not a URL"),
    ],
)
def test_a_bad_server_url_is_refused_with_the_fix(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_url(url)
    assert problem in caught.value.message
    assert "secret" not in str(caught.value)
    assert "GNOSIS_VLM" in (caught.value.hint or "")


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = time.time()
    assert retry_after("7") == 7.0
    assert retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0  # a date gone by: at once
    assert retry_after(None) is None
    assert retry_after("soon") is None


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    rng = random.Random(1)  # noqa: S311 (jitter)
    delays = [backoff_delay(n, base=1.0, cap=8.0, rng=rng) for n in range(1, 7)]
    for n, delay in enumerate(delays, start=1):
        full = min(8.0, 2.0 ** (n - 1))
        assert full / 2 <= delay < full
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, not a fixed ladder


# -- load: the model check -----------------------------------------------------------------------------------


def test_load_checks_the_served_model_and_takes_the_snapshot_commit(server: FaultServer) -> None:
    commit = "3baad18f" * 5
    server.script.models = [{"id": MODEL, "root": f"/cache/huggingface/models--x--y/snapshots/{commit}"}]
    remote = engine_for(server)
    try:
        remote.load()
        info = remote.info
        assert (info.name, info.backend, info.model, info.revision) == ("remote", "remote", MODEL, commit)
        assert info.vlm and info.profile == "nanonets-ocr-s" and info.endpoint == server.url
        assert [(s.method, s.path) for s in server.seen] == [("GET", "/v1/models")]
    finally:
        remote.close()


def test_a_server_serving_another_model_is_a_clear_error(server: FaultServer) -> None:
    server.script.models = [{"id": "Qwen/Qwen2.5-VL-7B-Instruct", "root": "/m"}]
    remote = engine_for(server)
    with pytest.raises(EngineUnavailableError) as caught:
        remote.load()
    message = caught.value.message
    assert "'Qwen/Qwen2.5-VL-7B-Instruct'" in message and f"not {MODEL!r}" in message and server.url in message
    assert "GNOSIS_VLM_SERVED_MODEL" in (caught.value.hint or "")
    assert "--served-model-name" in (caught.value.hint or "")
    remote.close()


def test_a_server_that_is_down_is_a_clear_error_after_the_startup_wait() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    remote = RemoteEngine(url, model=MODEL, profile=NANONETS_OCR_S, startup_wait=0.5, backoff=0.05)
    began = time.monotonic()
    with pytest.raises(EngineUnavailableError) as caught:
        remote.load()
    assert time.monotonic() - began < 5
    assert "does not answer" in caught.value.message and url in caught.value.message
    assert "connection failed" in caught.value.message
    assert "GNOSIS_VLM_STARTUP_WAIT_SECONDS" in (caught.value.hint or "")
    remote.close()


def test_load_waits_for_a_server_that_starts_late() -> None:
    port = free_port()
    remote = RemoteEngine(
        f"http://127.0.0.1:{port}/v1",
        model=MODEL,
        profile=NANONETS_OCR_S,
        startup_wait=20,
        backoff=0.1,
        backoff_max=0.3,
    )
    late: list[FaultServer] = []

    def start_late() -> None:
        time.sleep(1.0)
        late.append(FaultServer(port))

    starter = threading.Thread(target=start_late)
    starter.start()
    try:
        began = time.monotonic()
        remote.load()
        assert remote.info.model == MODEL
        assert time.monotonic() - began >= 0.9
        assert late[0].seen[-1].path == "/v1/models"
    finally:
        starter.join()
        remote.close()
        for fault in late:
            fault.stop()


def test_a_refused_api_key_says_which_setting_fixes_it(server: FaultServer) -> None:
    server.script.models_status = 401
    for key, words in ((None, "needs an API key"), (KEY, "refused the API key")):
        remote = engine_for(server, api_key=key)
        with pytest.raises(EngineUnavailableError) as caught:
            remote.load()
        assert words in caught.value.message and "GNOSIS_VLM_API_KEY" in (caught.value.hint or "")
        assert KEY not in str(caught.value) + (caught.value.hint or "")
        remote.close()


def test_settings_build_the_remote_engine_and_refuse_a_missing_url(tmp_path: Path) -> None:
    from gnosis_ocr.engines import engine_from_settings
    from gnosis_ocr.modelcache import ModelCache

    cache = ModelCache(tmp_path, endpoint="http://127.0.0.1:9")  # never asked: remote loads no model
    with pytest.raises(EngineUnavailableError, match="GNOSIS_VLM_URL is not set"):
        engine_from_settings(Settings(engine="remote"), cache)
    with pytest.raises(ConfigError, match="http:// or https://"):
        engine_from_settings(Settings(engine="remote", vlm_url="file:///srv/model"), cache)
    settings = Settings(engine="remote", vlm_url="http://vlm:8000", vlm_profile="olmocr-2", vlm_api_key=KEY)
    remote = engine_from_settings(settings, cache)
    info = remote.info
    # the profile names the model: its repo id is the served name unless GNOSIS_VLM_SERVED_MODEL says otherwise
    assert (info.name, info.model, info.profile, info.endpoint) == (
        "remote",
        "allenai/olmOCR-2-7B-1025",
        "olmocr-2",
        "http://vlm:8000/v1",
    )
    assert KEY not in repr(settings) and KEY not in str(info)
    named = engine_from_settings(settings.model_copy(update={"vlm_served_model": "olmocr"}), cache)
    assert named.info.model == "olmocr"
    blank = Settings(engine="remote", vlm_url="http://vlm:8000/v1", vlm_api_key="")
    assert blank.vlm_api_key is None  # set but empty is no key
    remote.close()
    named.close()


# -- one page ------------------------------------------------------------------------------------------------


def test_a_page_goes_as_an_image_with_the_profiles_prompt_and_the_decoding(
    server: FaultServer, engine: RemoteEngine
) -> None:
    big = page(3, size=(2400, 1800))  # 4.3 MP: scaled down to the profile's 2.4 MP budget before it is sent
    result = engine.submit(big, Decoding(temperature=0.5, max_tokens=321, seed=9)).result(timeout=30)
    assert result.ok and result.number == 3
    assert result.markdown == server.script.content.strip()
    assert result.meta == {"page_number": "3/9", "new_tokens": 17, "finish_reason": "stop"}

    (post,) = server.posts()
    assert post.path == "/v1/chat/completions"
    body = post.body
    assert body is not None
    assert (body["model"], body["max_tokens"], body["temperature"], body["seed"]) == (MODEL, 321, 0.5, 9)
    assert "ignore_eos" not in body  # a vLLM extension, sent only by a profile that asks for it
    system, user = body["messages"]
    assert system == {"role": "system", "content": NANONETS_OCR_S.system}
    image, text = user["content"]  # Nanonets: the image, then the prompt
    assert text == {"type": "text", "text": NANONETS_OCR_S.prompt}
    prefix, data = image["image_url"]["url"].split(",", 1)
    assert prefix == "data:image/png;base64"
    sent = Image.open(io.BytesIO(base64.b64decode(data)))
    assert sent.format == "PNG" and sent.size == NANONETS_OCR_S.scaled_size(2400, 1800)


def test_greedy_uses_the_profiles_token_bound_and_the_prompt_order(server: FaultServer) -> None:
    looping = replace(OLMOCR_2, ignore_eos=True, max_tokens=50)
    remote = engine_for(server, profile=looping, image_format="jpeg")
    try:
        assert remote.submit(page()).result(timeout=30).ok
    finally:
        remote.close()
    body = server.posts()[0].body
    assert body is not None
    assert (body["max_tokens"], body["temperature"], body["ignore_eos"]) == (50, 0.0, True)
    assert "seed" not in body
    text, image = body["messages"][-1]["content"]  # olmOCR: the prompt, then the image
    assert text["text"] == OLMOCR_2.prompt and image["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_a_page_cut_at_max_tokens_is_marked_truncated_for_the_loop_guard(
    server: FaultServer, engine: RemoteEngine
) -> None:
    server.script.finish_reason = "length"
    result = engine.submit(page()).result(timeout=30)
    assert result.ok and result.meta["truncated"] is True and result.meta["finish_reason"] == "length"


def test_429_waits_as_long_as_retry_after_says_then_the_page_is_read(server: FaultServer, engine: RemoteEngine) -> None:
    server.script.steps.extend([("status", (429, {"Retry-After": "1"})), ("ok", None)])
    result = engine.submit(page()).result(timeout=30)
    assert result.ok
    first, second = server.posts()
    assert second.at - first.at >= 0.95  # backoff alone would have waited ~0.01 s


def test_5xx_and_dropped_connections_are_tried_again(server: FaultServer, engine: RemoteEngine) -> None:
    server.script.steps.extend([("status", (503, None)), ("drop", None), ("status", (502, None)), ("ok", None)])
    result = engine.submit(page()).result(timeout=30)
    assert result.ok, result.error
    assert len(server.posts()) == 4
    assert engine.requests == 4


def test_a_page_that_keeps_failing_fails_with_the_reason_after_the_bounded_tries(
    server: FaultServer, engine: RemoteEngine
) -> None:
    server.script.steps.extend([("status", (500, None))] * 4)
    result = engine.submit(page(5)).result(timeout=30)
    assert not result.ok and result.number == 5
    assert result.error == f"the model server at {server.url} failed after 4 tries: HTTP 500: scripted 500"
    assert result.meta == {"tries": 4}
    assert len(server.posts()) == 4
    # the engine goes on: the next page is read
    assert engine.submit(page(6)).result(timeout=30).ok


def test_a_page_the_server_refuses_is_not_tried_again(server: FaultServer, engine: RemoteEngine) -> None:
    server.script.steps.append(("status", (400, None)))
    result = engine.submit(page()).result(timeout=30)
    assert result.error == f"the model server at {server.url} failed: HTTP 400: scripted 400"
    assert len(server.posts()) == 1


def test_an_answer_that_is_not_a_completion_fails_the_page(server: FaultServer, engine: RemoteEngine) -> None:
    server.script.steps.append(("garbage", None))
    result = engine.submit(page()).result(timeout=30)
    assert result.error is not None and "not a chat completion" in result.error and "<html>" in result.error


def test_a_page_past_the_read_timeout_is_tried_again_then_fails(server: FaultServer) -> None:
    server.script.steps.extend([("hang", None)] * 2)
    remote = engine_for(server, read_timeout=0.5, tries=2)
    try:
        began = time.monotonic()
        result = remote.submit(page()).result(timeout=30)
        assert not result.ok and result.error is not None and "timed out (ReadTimeout)" in result.error
        assert 1.0 <= time.monotonic() - began < 10
        assert len(server.posts()) == 2
    finally:
        remote.close()


def test_cancel_aborts_the_request_on_the_wire(server: FaultServer, engine: RemoteEngine) -> None:
    server.script.steps.append(("hang", None))
    future = engine.submit(page())
    wait_for(lambda: server.active == 1, 10, "the request to reach the server")
    assert future.cancel()  # pending while its request runs: cancellable
    wait_for(lambda: server.disconnects == 1, 5, "the server to see the client go away")
    assert engine.aborted == 1
    with pytest.raises(CancelledError):
        future.result()
    assert engine.submit(page(2)).result(timeout=30).ok  # the engine goes on


def test_no_more_than_capacity_requests_at_once(server: FaultServer) -> None:
    server.script.steps.extend([("ok", 0.3)] * 6)
    remote = engine_for(server, capacity=2)
    try:
        assert remote.capacity == 2
        results = remote.recognize([page(n) for n in range(1, 7)])
        assert [r.number for r in results] == list(range(1, 7)) and all(r.ok for r in results)
        assert server.most_active == 2
    finally:
        remote.close()


def test_close_cancels_the_pages_in_flight_and_refuses_new_ones(server: FaultServer) -> None:
    server.script.steps.extend([("hang", None)] * 2)
    remote = engine_for(server)
    futures = [remote.submit(page(n)) for n in (1, 2)]
    wait_for(lambda: server.active == 2, 10, "both requests to reach the server")
    remote.close()
    assert all(f.cancelled() for f in futures)
    wait_for(lambda: server.disconnects == 2, 5, "both connections closed")
    with pytest.raises(EngineUnavailableError, match="closed"):
        remote.submit(page(3))


def test_the_api_key_is_a_bearer_token_and_never_logged(server: FaultServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore included
    server.script.steps.extend(
        [("status", (503, None)), ("status", (400, None)), ("drop", None)] + [("drop", None)] * 4
    )
    remote = engine_for(server, api_key=KEY)
    try:
        remote.load()
        results = remote.recognize([page(1), page(2)])
    finally:
        remote.close()
    assert {s.headers.get("Authorization") for s in server.seen} == {f"Bearer {KEY}"}
    assert any(not r.ok for r in results)  # failures were logged too
    assert caplog.records and KEY not in caplog.text
    assert all(KEY not in (r.error or "") for r in results)
