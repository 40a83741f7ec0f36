"""Callbacks from the sender's side: the address rules, signing, retries and redirects, against a real receiver on
loopback (127.0.0.1 allowed the way an operator allows it). DNS answers are injected at ``socket.getaddrinfo``, the
lowest seam, to play a name that resolves to loopback or changes its answer between check and send."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gnosis_ocr.errors import CallbackRefusedError
from gnosis_ocr.jobs import webhooks
from gnosis_ocr.jobs.record import CallbackStatus
from gnosis_ocr.jobs.webhooks import (
    WebhookOptions,
    WebhookSender,
    callback_target,
    check_callback_url,
    refusal,
    signature,
    split_url,
)
from tests.support.receiver import receiving

SECRET = "s3cret-for-the-tests-0123456789"  # noqa: S105 - a test key
LOOPBACK = frozenset({"127.0.0.1"})


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),  # carrier-grade NAT
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.7", "private"),  # documentation
        ("255.255.255.255", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("2002:a9fe:a9fe::", "link-local"),  # 6to4 of 169.254.169.254
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2001:db8::1", "private"),  # documentation
    ],
)
def test_every_non_public_range_is_refused(address: str, kind: str) -> None:
    why = refusal(address)
    assert why is not None and kind in why and address in why


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2001:4860:4860::8888"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(address) is None


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://example.org/hook", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("example.org/hook", "without a scheme"),
        ("https://user:pw@example.org/hook", "credentials"),
        ("https://token@example.org/hook", "credentials"),
        ("https:///hook", "no host"),
        ("https://exa mple.org/", "spaces"),
        ("https://example.org:99999/", "not a usable URL"),
        ("https://example.org/" + "a" * 2100, "longer than"),
    ],
)
def test_unusable_urls_say_why(url: str, words: str) -> None:
    with pytest.raises(CallbackRefusedError) as refused:
        split_url(url)
    assert words in refused.value.message and refused.value.hint


def test_split_keeps_path_and_query_and_default_ports() -> None:
    assert split_url("https://Hooks.Example.ORG./in?token=abc") == ("https", "hooks.example.org", 443, "/in?token=abc")
    assert split_url("http://[::1]:8080") == ("http", "::1", 8080, "/")


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names answered here instead of by the resolver (a test may change an answer between two lookups)."""
    answers: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host in answers:
            if not answers[host]:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [
                (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in answers[host]
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def test_a_name_is_refused_when_any_of_its_addresses_is_not_public(dns: dict[str, list[str]]) -> None:
    dns["mixed.example"] = ["93.184.216.34", "10.0.0.5"]
    with pytest.raises(CallbackRefusedError, match=r"10\.0\.0\.5 is a private address"):
        check_callback_url("https://mixed.example/hook", frozenset())
    dns["public.example"] = ["93.184.216.34"]
    assert callback_target("https://public.example/hook", frozenset()).addresses == ("93.184.216.34",)


def test_the_allowlist_names_a_host_not_an_address(dns: dict[str, list[str]]) -> None:
    dns["hooks.internal"] = ["127.0.0.1"]
    assert callback_target("http://hooks.internal:8080/", frozenset({"hooks.internal"})).addresses == ("127.0.0.1",)
    with pytest.raises(CallbackRefusedError, match="GNOSIS_WEBHOOK_ALLOWED_HOSTS"):
        callback_target("http://hooks.internal:8080/", frozenset({"127.0.0.1"}))  # the address is not the name


def test_a_name_that_does_not_resolve_is_refused_at_upload(dns: dict[str, list[str]]) -> None:
    dns["nowhere.example"] = []
    with pytest.raises(CallbackRefusedError, match="does not resolve"):
        check_callback_url("https://nowhere.example/hook", frozenset())


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    sig = signature(b"key", 1700000000, b'{"a":1}')
    # echo -n '1700000000.{"a":1}' | openssl dgst -sha256 -hmac key
    assert sig == "sha256=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
    assert sig != signature(b"key", 1700000001, b'{"a":1}') != signature(b"other", 1700000000, b'{"a":1}')


# -- the sender, against a real receiver ---------------------------------------------------------------------


class Results:
    def __init__(self) -> None:
        self.items: list[tuple[str, CallbackStatus]] = []
        self._cond = threading.Condition()

    def __call__(self, job_id: str, status: CallbackStatus) -> None:
        with self._cond:
            self.items.append((job_id, status))
            self._cond.notify_all()

    def wait(self, count: int = 1, timeout: float = 20.0) -> list[tuple[str, CallbackStatus]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.items) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.items)} of {count} results in {timeout} s"
                self._cond.wait(left)
            return list(self.items)


@pytest.fixture
def sender() -> Iterator[Callable[..., tuple[WebhookSender, Results, CollectorRegistry]]]:
    started: list[WebhookSender] = []

    def start(**options: Any) -> tuple[WebhookSender, Results, CollectorRegistry]:
        values: dict[str, Any] = {"secret": SECRET.encode(), "allowed_hosts": LOOPBACK, "backoff": 0.05, **options}
        registry, results = CollectorRegistry(), Results()
        one = WebhookSender(WebhookOptions(**values), registry, results)
        one.start()
        started.append(one)
        return one, results, registry

    yield start
    for one in started:
        one.close(2.0)


def attempts(registry: CollectorRegistry, outcome: str) -> float:
    return registry.get_sample_value("gnosis_webhook_attempts_total", {"outcome": outcome}) or 0.0


JOB = "J" * 22


def test_delivered_signed_with_the_delivery_id(sender: Callable[..., Any]) -> None:
    one, results, registry = sender()
    with receiving() as receiver:
        assert one.send(JOB, f"{receiver.url}/hook?token=t", 1, b'{"hello": 1}')
        (request,) = receiver.wait(1)
        assert request.path == "/hook?token=t" and request.body == b'{"hello": 1}'
        assert request.signed_by(SECRET) and not request.signed_by("another secret of 16+ chars")
        assert abs(int(request.headers["x-gnosis-timestamp"]) - time.time()) < 30
        assert request.headers["x-gnosis-delivery"] == f"{JOB}.1"
        assert request.headers["x-gnosis-event"] == "job.finished"
        assert request.headers["content-type"] == "application/json"
        (job_id, status), *_ = results.wait(1)
    assert job_id == JOB and status.state == "delivered" and status.attempts == 1 and status.last_status == 200
    assert attempts(registry, "delivered") == 1


def test_5xx_429_and_connection_errors_are_retried_with_backoff(sender: Callable[..., Any]) -> None:
    one, results, registry = sender(backoff=0.2)
    with receiving([503, (429, {"Retry-After": "0"}), 500, 200]) as receiver:
        one.send(JOB, f"{receiver.url}/hook", 1, b"{}")
        got = receiver.wait(4)
        status = results.wait(1)[0][1]
    assert status.state == "delivered" and status.attempts == 4
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    assert gaps[0] >= 0.15 and gaps[2] >= 0.6, gaps  # 0.2 s, then 0.4 s, then 0.8 s (+-10 %)
    assert len({r.headers["x-gnosis-delivery"] for r in got}) == 1  # one delivery, four attempts
    assert all(r.signed_by(SECRET) for r in got)
    assert (attempts(registry, "server_error"), attempts(registry, "rate_limited")) == (2, 1)

    one, results, registry = sender(max_attempts=3)
    one.send(JOB, "http://127.0.0.1:9/hook", 2, b"{}")  # nothing listens on the discard port
    status = results.wait(1)[0][1]
    assert status.state == "failed" and status.attempts == 3 and "Connection" in (status.error or "")
    assert attempts(registry, "connection_error") == 3
    assert registry.get_sample_value("gnosis_webhook_deliveries_total", {"result": "failed"}) == 1


def test_a_redirect_is_never_followed_and_a_4xx_not_retried(sender: Callable[..., Any]) -> None:
    one, results, registry = sender()
    with receiving() as target, receiving([(302, {"Location": "http://127.0.0.1:1/x"})]) as redirecting:
        redirecting.answers = [(307, {"Location": f"{target.url}/stolen"})]
        one.send(JOB, f"{redirecting.url}/hook", 1, b"{}")
        status = results.wait(1)[0][1]
        time.sleep(0.3)
        assert len(redirecting.received) == 1 and target.received == []
    assert status.state == "failed" and status.last_status == 307 and "not followed" in (status.error or "")
    assert attempts(registry, "redirect") == 1

    with receiving([404]) as gone:
        one.send(JOB, f"{gone.url}/hook", 2, b"{}")
        status = results.wait(2)[1][1]
        assert len(gone.received) == 1
    assert status.state == "failed" and status.attempts == 1 and status.last_status == 404


def test_it_connects_to_the_address_it_checked_and_sends_the_host_name(
    sender: Callable[..., Any], dns: dict[str, list[str]]
) -> None:
    dns["hooks.example"] = ["127.0.0.1"]
    one, results, _ = sender(allowed_hosts=frozenset({"hooks.example"}))
    with receiving() as receiver:
        one.send(JOB, f"http://hooks.example:{receiver.port}/in", 1, b"{}")
        (request,) = receiver.wait(1)
        assert request.headers["host"] == f"hooks.example:{receiver.port}"
    assert results.wait(1)[0][1].state == "delivered"


def test_an_answer_that_changed_to_loopback_since_the_upload_is_refused_at_send_time(
    sender: Callable[..., Any], dns: dict[str, list[str]]
) -> None:
    dns["rebind.example"] = ["93.184.216.34"]
    with receiving() as receiver:
        url = check_callback_url(f"http://rebind.example:{receiver.port}/in", frozenset())  # public at upload
        dns["rebind.example"] = ["127.0.0.1"]  # ... loopback when it is sent
        one, results, registry = sender(allowed_hosts=frozenset())
        one.send(JOB, url, 1, b"{}")
        status = results.wait(1)[0][1]
        assert receiver.received == []
    assert status.state == "failed" and "loopback" in (status.error or "")
    assert attempts(registry, "refused") == 1


def test_a_full_schedule_drops_and_says_so_without_blocking(
    sender: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks, "QUEUE_SIZE", 2)
    one, results, registry = sender(workers=1, max_attempts=20, backoff=30.0)
    with receiving([503]) as receiver:
        began = time.monotonic()
        sent = [one.send(JOB, f"{receiver.url}/hook", n, b"{}") for n in (1, 2, 3, 4)]
        assert time.monotonic() - began < 0.5
        receiver.wait(2)
    assert sent[:2] == [True, True] and False in sent[2:]
    dropped = [s for _, s in results.items if s.state == "failed"]
    assert dropped and "too many callbacks" in (dropped[0].error or "")
    assert (registry.get_sample_value("gnosis_webhook_deliveries_total", {"result": "dropped"}) or 0) >= 1


def test_the_verification_snippet_in_the_docs_accepts_a_signature_and_refuses_a_forgery() -> None:
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "API.md").read_text()
    snippet = next(block for block in text.split("```python\n")[1:] if "def verify" in block).split("```")[0]
    scope: dict[str, Any] = {}
    exec(snippet, scope)  # noqa: S102 - our own documentation, run as a receiver would
    body, now = b'{"event": "job.finished"}', int(time.time())
    headers = {"X-Gnosis-Timestamp": str(now), "X-Gnosis-Signature": signature(SECRET.encode(), now, body)}
    assert scope["verify"](SECRET.encode(), headers, body)
    assert not scope["verify"](SECRET.encode(), headers, body + b" ")
    assert not scope["verify"](b"not the secret", headers, body)
    old = {"X-Gnosis-Timestamp": str(now - 3600), "X-Gnosis-Signature": signature(SECRET.encode(), now - 3600, body)}
    assert not scope["verify"](SECRET.encode(), old, body)
