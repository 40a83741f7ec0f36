"""Job callbacks over real HTTP: a live app POSTs to a real receiver on 127.0.0.1 (allowed the way an operator
allows it, GNOSIS_WEBHOOK_ALLOWED_HOSTS), which checks every signature the way docs/API.md tells receivers to."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gnosis_ocr.engines.base import Engine, StreamingEngine
from gnosis_ocr.errors import EngineUnavailableError
from gnosis_ocr.modelcache import ModelCache
from gnosis_ocr.settings import EngineName, Settings
from tests.api.conftest import Live, make_settings, wait_for
from tests.api.jobclient import submit, upload, wait_finished
from tests.documents import make
from tests.support.fakeengine import FakeEngine
from tests.support.receiver import receiving

SECRET = "receiver-and-server-share-this-0123"  # noqa: S105 - a test key
PDF = make.text_pdf([["One"], ["Two"], ["Three"]])


def hook_settings(cache_root: Path, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "engine": "fake",
        "storage": str(tmp_path / "storage"),
        "webhook_secret": SECRET,
        "webhook_allowed_hosts": "127.0.0.1",
        "webhook_backoff_seconds": 0.05,
        **overrides,
    }
    return make_settings(cache_root, **values)


def no_tesseract(settings: Settings, cache: ModelCache, name: EngineName) -> Engine | StreamingEngine:
    """The fake engine; tesseract cannot load (so a job asking for it fails)."""
    if name == "tesseract":
        raise EngineUnavailableError("tesseract is not available on this test server.")
    return FakeEngine(delay=getattr(settings, "fake_engine_delay", 0.0))


def job_of(live: Live, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = live.client.get(f"/api/v1/jobs/{job_id}", params={"text": "false"}).json()
    return body


def delivered(live: Live, job_id: str) -> dict[str, Any] | None:
    callback: dict[str, Any] | None = job_of(live, job_id).get("callback")
    return callback if callback and callback["state"] != "pending" else None


def test_one_signed_post_per_end_state(cache_root: Path, tmp_path: Path, live: Callable[..., Live]) -> None:
    app = live(hook_settings(cache_root, tmp_path, fake_engine_delay=0.3), engine_factory=no_tesseract)
    wait_for(app.ready, 30, "readyz")
    with receiving() as receiver:
        url = f"{receiver.url}/hooks/gnosis?token=abc"
        done = submit(app.client, [("a.pdf", PDF)], callback_url=url, text_layer="never")
        failed = submit(app.client, [("b.pdf", PDF)], callback_url=url, engine="tesseract")
        cancelled = submit(app.client, [("c.pdf", PDF)], callback_url=url, text_layer="never")
        assert app.client.post(f"/api/v1/jobs/{cancelled['id']}/cancel").status_code == 202
        plain = submit(app.client, [("d.pdf", PDF)])  # no callback_url: nothing is sent for it
        for job in (done, failed, cancelled, plain):
            wait_finished(app.client, job["id"])
        got = receiver.wait(3)
        wait_for(lambda: all(delivered(app, j["id"]) for j in (done, failed, cancelled)), 10, "callbacks noted")

    assert len(got) == 3 and all(r.path == "/hooks/gnosis?token=abc" and r.signed_by(SECRET) for r in got)
    bodies = {r.json()["job"]["id"]: r for r in got}
    expected = {done["id"]: "done", failed["id"]: "failed", cancelled["id"]: "cancelled"}
    assert {job_id: r.json()["job"]["status"] for job_id, r in bodies.items()} == expected
    for job_id, request in bodies.items():
        body = request.json()
        assert body["event"] == "job.finished" and body["delivery"] == f"{job_id}.1"
        assert request.headers["x-gnosis-delivery"] == f"{job_id}.1"
        job = body["job"]
        assert "pages" not in job and "callback_url" not in job and "token=abc" not in request.body.decode()
        assert job["urls"]["result_md"] == f"/api/v1/jobs/{job_id}/result.md"
        assert job["finished_at"] and job["created_at"] and job["progress"]["pages_total"] == 3
    assert bodies[done["id"]].json()["job"]["progress"]["pages_done"] == 3
    assert "tesseract" in bodies[failed["id"]].json()["job"]["error"]["message"]

    for job in (done, failed, cancelled):
        callback = delivered(app, job["id"])
        assert callback is not None
        assert callback["state"] == "delivered" and callback["attempts"] == 1 and callback["last_status"] == 200
    assert job_of(app, plain["id"])["callback"] is None
    assert "callback_url" not in app.client.get(f"/api/v1/jobs/{done['id']}").text
    assert app.metric("gnosis_webhook_attempts_total", outcome="delivered") == 3
    assert app.metric("gnosis_webhook_deliveries_total", result="delivered") == 3


def test_503s_are_retried_until_the_receiver_takes_it(
    cache_root: Path, tmp_path: Path, live: Callable[..., Live]
) -> None:
    app = live(hook_settings(cache_root, tmp_path))
    wait_for(app.ready, 30, "readyz")
    with receiving([503, 503, 200]) as receiver:
        job = submit(app.client, [("a.pdf", PDF)], callback_url=f"{receiver.url}/in")
        got = receiver.wait(3)
        callback = wait_for(lambda: delivered(app, job["id"]), 10, "the callback noted")
    assert [r.headers["x-gnosis-delivery"] for r in got] == [f"{job['id']}.1"] * 3
    assert all(r.signed_by(SECRET) for r in got)
    assert callback["state"] == "delivered" and callback["attempts"] == 3
    assert app.metric("gnosis_webhook_attempts_total", outcome="server_error") == 2
    assert app.metric("gnosis_webhook_attempts_total", outcome="delivered") == 1


def test_a_redirect_is_not_followed(cache_root: Path, tmp_path: Path, live: Callable[..., Live]) -> None:
    app = live(hook_settings(cache_root, tmp_path))
    wait_for(app.ready, 30, "readyz")
    with receiving() as target, receiving([(302, {"Location": "http://127.0.0.1:9/"})]) as redirecting:
        redirecting.answers = [(302, {"Location": f"{target.url}/elsewhere"})]
        job = submit(app.client, [("a.pdf", PDF)], callback_url=f"{redirecting.url}/in")
        callback = wait_for(lambda: delivered(app, job["id"]), 20, "the callback noted")
        assert len(redirecting.received) == 1 and target.received == []
    assert callback["state"] == "failed" and callback["last_status"] == 302
    assert "redirects are not followed" in callback["error"]


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://127.0.0.1:{port}/in", "127.0.0.1 is a loopback address"),
        ("http://localhost:{port}/in", "loopback address"),
        ("http://[::1]:{port}/in", "::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]:{port}/in", "loopback"),
        ("http://10.0.0.1/in", "10.0.0.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://0.0.0.0:{port}/", "unspecified"),
        ("ftp://127.0.0.1/in", "must be http or https"),
        ("http://user:pw@127.0.0.1:{port}/in", "credentials"),
    ],
)
def test_refused_targets_create_no_job_and_get_no_post(
    cache_root: Path, tmp_path: Path, live: Callable[..., Live], url: str, words: str
) -> None:
    app = live(hook_settings(cache_root, tmp_path, webhook_allowed_hosts=""))  # nothing allowed: the default
    wait_for(app.ready, 30, "readyz")
    with receiving() as receiver:
        response = upload(app.client, [("a.pdf", PDF)], callback_url=url.format(port=receiver.port))
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["type"] == "CallbackRefusedError" and words in error["message"] and error["hint"]
        assert not list((tmp_path / "storage" / "jobs").glob("*/job.json"))  # no job was created
        ok = submit(app.client, [("b.pdf", PDF)])  # the server goes on serving
        wait_finished(app.client, ok["id"])
        assert receiver.received == []


def test_the_allowlist_makes_loopback_legal(cache_root: Path, tmp_path: Path, live: Callable[..., Live]) -> None:
    app = live(hook_settings(cache_root, tmp_path, webhook_allowed_hosts="hooks.internal, 127.0.0.1"))
    wait_for(app.ready, 30, "readyz")
    with receiving() as receiver:
        job = submit(app.client, [("a.pdf", PDF)], callback_url=f"{receiver.url}/in")
        (request,) = receiver.wait(1)
        assert request.json()["job"]["id"] == job["id"] and request.signed_by(SECRET)


def test_without_a_secret_callback_url_is_refused(cache_root: Path, tmp_path: Path, live: Callable[..., Live]) -> None:
    app = live(hook_settings(cache_root, tmp_path, webhook_secret=None))
    wait_for(app.ready, 30, "readyz")
    response = upload(app.client, [("a.pdf", PDF)], callback_url="https://hooks.example.org/in")
    assert response.status_code == 422
    assert "GNOSIS_WEBHOOK_SECRET" in response.json()["error"]["message"]


def test_a_delivery_the_stop_interrupted_is_sent_again_by_the_next_start(
    cache_root: Path, tmp_path: Path, live: Callable[..., Live]
) -> None:
    settings = hook_settings(cache_root, tmp_path, webhook_backoff_seconds=60)
    first = live(settings)
    wait_for(first.ready, 30, "readyz")
    with receiving([503, 200]) as receiver:
        job = submit(first.client, [("a.pdf", PDF)], callback_url=f"{receiver.url}/in")
        receiver.wait(1)  # answered 503; the next attempt is a minute away
        assert job_of(first, job["id"])["callback"]["state"] == "pending"
        first.stop()
        second = live(settings)
        got = receiver.wait(2)
        callback = wait_for(lambda: delivered(second, job["id"]), 10, "the callback noted")
    assert got[1].headers["x-gnosis-delivery"] == got[0].headers["x-gnosis-delivery"] == f"{job['id']}.1"
    assert got[1].signed_by(SECRET) and got[1].json()["job"]["status"] == "done"
    assert callback["state"] == "delivered"


def test_the_address_is_checked_again_at_send_time(cache_root: Path, tmp_path: Path, live: Callable[..., Live]) -> None:
    settings = hook_settings(cache_root, tmp_path, webhook_backoff_seconds=60)
    first = live(settings)
    wait_for(first.ready, 30, "readyz")
    with receiving([503]) as receiver:
        job = submit(first.client, [("a.pdf", PDF)], callback_url=f"{receiver.url}/in")
        receiver.wait(1)
        first.stop()
        second = live(settings.model_copy(update={"webhook_allowed_hosts": ()}))  # loopback no longer allowed
        callback = wait_for(lambda: delivered(second, job["id"]), 20, "the callback noted")
        assert len(receiver.received) == 1
    assert callback["state"] == "failed" and "loopback" in callback["error"]
    assert second.metric("gnosis_webhook_attempts_total", outcome="refused") == 1
