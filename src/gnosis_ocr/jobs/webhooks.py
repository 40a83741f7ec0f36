"""Job callbacks: when a job ends, POST its summary to the ``callback_url`` the upload gave, signed, from the
background, retried with backoff, and only ever to a public address (or one the operator allowed).

The parts, pure logic apart from I/O:

- ``callback_target(url, allowed)``: the address check. The URL must be http(s) without credentials; its host is
  resolved and every address must be public: loopback, private, link-local, shared (CGNAT), multicast, reserved,
  unspecified and documentation ranges are refused, IPv4 and IPv6 alike, including IPv4 inside IPv6 (mapped,
  6to4, Teredo, NAT64). A host named in ``allowed`` (GNOSIS_WEBHOOK_ALLOWED_HOSTS) skips the range check. The
  upload runs it (a refusal is 422), and so does every attempt, which then connects to exactly the addresses it
  checked (a DNS answer that changed in between is checked again, never trusted).
- ``signature(secret, timestamp, body)``: ``sha256=`` and the hex HMAC-SHA256 of ``f"{timestamp}.{body}"``, sent
  as ``X-Gnosis-Signature`` beside ``X-Gnosis-Timestamp`` (Unix seconds, new for each attempt) so a receiver can
  refuse old or replayed deliveries; ``X-Gnosis-Delivery`` (``<job id>.<n>``) is the same for every attempt of one
  delivery, so a receiver can drop repeats.
- ``post_once``: one POST with http.client to the checked address (TLS verified against the URL's host name);
  redirects are never followed (a 3xx is a failed delivery).
- ``WebhookSender``: a few worker threads and a bounded schedule; ``send`` never blocks. Connection errors, 5xx
  and 429 are retried with exponential backoff (``Retry-After`` honoured up to the cap) up to ``max_attempts``
  attempts; anything else ends the delivery. Each delivery's end goes to ``on_result`` (the runner saves it in the
  job). Deliveries still scheduled at shutdown stay ``pending`` in the job record and are sent again by the next
  start: delivery is at least once.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import http.client
import ipaddress
import itertools
import json
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge

from gnosis_ocr import __version__
from gnosis_ocr.errors import CallbackRefusedError
from gnosis_ocr.jobs.record import CallbackStatus, utcnow

logger = logging.getLogger(__name__)

MAX_URL_CHARS = 2048
QUEUE_SIZE = 1000  # deliveries scheduled at once; more are dropped (counted, and marked failed in the job)
BACKOFF_MAX = 300.0  # seconds between two attempts at most
RESPONSE_BYTES = 64 * 1024  # read of a receiver's answer, then the connection closes
EVENT = "job.finished"

Outcome = Literal[
    "delivered", "server_error", "rate_limited", "client_error", "redirect", "connection_error", "refused"
]
RETRIED: frozenset[str] = frozenset({"server_error", "rate_limited", "connection_error"})

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT; not is_private in every Python


# -- the address check -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A callback URL taken apart, with the addresses its host resolved to when it was checked."""

    scheme: Literal["http", "https"]
    host: str  # lower-case; an IPv6 literal without brackets
    port: int
    path: str  # path and query, as sent in the request line
    addresses: tuple[str, ...]

    @property
    def shown(self) -> str:
        """The URL without its query (which may hold the receiver's token), for logs and messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path.split('?', 1)[0]}"


class Unresolvable(Exception):
    """The host did not resolve (DNS down, or no such name): at upload a refusal, at send time a retry."""


def split_url(url: str) -> tuple[Literal["http", "https"], str, int, str]:
    """(scheme, host, port, path with query) of a usable callback URL; CallbackRefusedError says what is wrong."""
    hint = "Give an http:// or https:// URL of a receiver on a public address, without user:password@."
    if len(url) > MAX_URL_CHARS:
        raise CallbackRefusedError(f"callback_url is longer than {MAX_URL_CHARS} characters.", hint=hint)
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise CallbackRefusedError("callback_url holds spaces or control characters.", hint=hint)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackRefusedError(f"callback_url is not a usable URL: {exc}.", hint=hint) from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise CallbackRefusedError(
            f"callback_url must be http or https, not {scheme[:20] or 'a URL without a scheme'!r}.", hint=hint
        )
    if parts.username is not None or parts.password is not None:
        raise CallbackRefusedError(
            "callback_url must not carry credentials (user:password@).",
            hint="Put a token in the path or query instead, and check the X-Gnosis-Signature header.",
        )
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise CallbackRefusedError("callback_url has no host.", hint=hint)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return ("https" if scheme == "https" else "http"), host, port or (443 if scheme == "https" else 80), path


def refusal(address: str) -> str | None:
    """Why the server will not call ``address`` (an IP literal), None when it is public."""
    ip = ipaddress.ip_address(address)
    checked: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    if isinstance(ip, ipaddress.IPv6Address):  # the IPv4 address inside first: it says most
        embedded = [ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None]
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        checked += [e for e in embedded if e is not None]
    checked.append(ip)
    for one in checked:
        for kind, hit in (
            ("unspecified", one.is_unspecified),
            ("loopback", one.is_loopback),
            ("link-local", one.is_link_local),
            ("multicast", one.is_multicast),
            ("reserved", one.is_reserved),
            ("private", one.is_private or (isinstance(one, ipaddress.IPv4Address) and one in _SHARED)),
            ("not globally routable", not one.is_global),
        ):
            if hit:
                return f"{address} is a {kind} address" if kind != "not globally routable" else f"{address} is {kind}"
    return None


def resolve(host: str, port: int) -> tuple[str, ...]:
    """The addresses ``host`` resolves to (an IP literal: itself), in the resolver's order."""
    try:
        return (str(ipaddress.ip_address(host)),)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise Unresolvable(f"{host} does not resolve ({exc})") from exc
    addresses = list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))
    if not addresses:
        raise Unresolvable(f"{host} does not resolve (no address)")
    return tuple(addresses)


def callback_target(url: str, allowed: frozenset[str]) -> Target:
    """Check ``url`` and resolve it: CallbackRefusedError when it must not be called, ``Unresolvable`` when its
    host does not resolve now."""
    scheme, host, port, path = split_url(url)
    addresses = resolve(host, port)
    if host not in allowed:
        for address in addresses:
            why = refusal(address)
            if why is not None:
                raise CallbackRefusedError(
                    f"callback_url {scheme}://{host}:{port}/... is refused: {why}; the server calls only public "
                    "addresses.",
                    hint="Use a receiver on a public address, or have the operator name this host in "
                    "GNOSIS_WEBHOOK_ALLOWED_HOSTS.",
                )
    return Target(scheme, host, port, path, addresses)


def check_callback_url(url: str, allowed: frozenset[str]) -> str:
    """The upload's check: the URL as it will be stored, or CallbackRefusedError (also for a host that does not
    resolve)."""
    try:
        callback_target(url, allowed)
    except Unresolvable as exc:
        raise CallbackRefusedError(
            f"callback_url's host does not resolve: {exc}.", hint="Check the host name in callback_url."
        ) from exc
    return url


# -- signing and one attempt -------------------------------------------------------------------------------


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 with ``secret`` over ``f"{timestamp}."`` followed by the body's bytes."""
    return "sha256=" + hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Attempt:
    outcome: Outcome
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the address that was checked, whatever the host name resolves to by now."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)  # the certificate must name the host


def post_once(target: Target, headers: dict[str, str], body: bytes, timeout: float) -> Attempt:
    """One POST to ``target``'s checked addresses (the first that accepts a connection); never follows a redirect."""
    last: Exception | None = None
    for address in target.addresses:
        connection: http.client.HTTPConnection
        if target.scheme == "https":
            connection = _PinnedHTTPS(target.host, target.port, address, timeout, ssl.create_default_context())
        else:
            connection = _PinnedHTTP(target.host, target.port, address, timeout)
        try:
            connection.request("POST", target.path, body=body, headers=headers)
            response = connection.getresponse()
            response.read(RESPONSE_BYTES)
            return _judge(response.status, response.getheader("Retry-After"))
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        finally:
            connection.close()
    return Attempt("connection_error", error=f"{type(last).__name__}: {last}" if last else "no address")


def _judge(status: int, retry_after: str | None) -> Attempt:
    if 200 <= status < 300:
        return Attempt("delivered", status)
    if 300 <= status < 400:
        return Attempt("redirect", status, f"the receiver answered {status}; redirects are not followed")
    wait: float | None = None
    if retry_after is not None and retry_after.strip().isdigit():
        wait = float(retry_after.strip())
    if status == 429:
        return Attempt("rate_limited", status, "the receiver answered 429", wait)
    if status >= 500:
        return Attempt("server_error", status, f"the receiver answered {status}", wait)
    return Attempt("client_error", status, f"the receiver answered {status}")


# -- the sender --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookOptions:
    secret: bytes
    allowed_hosts: frozenset[str] = frozenset()
    max_attempts: int = 8
    backoff: float = 2.0  # seconds before the 2nd attempt; doubles each time, at most BACKOFF_MAX
    timeout: float = 10.0  # seconds to connect, and to wait for the answer
    workers: int = 2


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "gnosis_webhook_attempts",
            "Callback POSTs by outcome: delivered (2xx), server_error (5xx), rate_limited (429), client_error "
            "(other 4xx), redirect (3xx, never followed), connection_error, refused (the address check failed "
            "at send time).",
            ["outcome"],
            registry=registry,
        )
        self.deliveries = Counter(
            "gnosis_webhook_deliveries",
            "Callback deliveries by how they ended: delivered, failed (gave up or refused), dropped (queue full).",
            ["result"],
            registry=registry,
        )
        self.scheduled = Gauge("gnosis_webhook_scheduled", "Callback deliveries waiting to be sent.", registry=registry)


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    job_id: str = field(compare=False)
    url: str = field(compare=False)
    number: int = field(compare=False)
    body: bytes = field(compare=False)
    attempts: int = field(default=0, compare=False)

    @property
    def id(self) -> str:
        return f"{self.job_id}.{self.number}"


ResultHandler = Callable[[str, CallbackStatus], None]


class WebhookSender:
    def __init__(self, options: WebhookOptions, registry: CollectorRegistry, on_result: ResultHandler) -> None:
        self.options = options
        self.metrics = WebhookMetrics(registry)
        self._on_result = on_result
        self._cond = threading.Condition()
        self._heap: list[_Delivery] = []
        self._seq = itertools.count()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(max(1, self.options.workers)):
            thread = threading.Thread(target=self._work, name=f"gnosis-webhook-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self, timeout: float = 5.0) -> int:
        """Stop; the attempts in progress get ``timeout`` seconds. The number of deliveries left unsent (they stay
        pending in their jobs and are sent again by the next start)."""
        with self._cond:
            self._stopping = True
            left = len(self._heap)
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if left:
            logger.info("%d callback delivery(ies) left for the next start", left)
        return left

    def send(self, job_id: str, url: str, number: int, body: bytes) -> bool:
        """Schedule a delivery now; False (and nothing scheduled) when the schedule is full. Never blocks."""
        with self._cond:
            if self._stopping or len(self._heap) >= QUEUE_SIZE:
                full = not self._stopping
            else:
                heapq.heappush(self._heap, _Delivery(time.monotonic(), next(self._seq), job_id, url, number, body))
                self.metrics.scheduled.set(len(self._heap))
                self._cond.notify()
                return True
        if full:
            self.metrics.deliveries.labels(result="dropped").inc()
            logger.error(
                "job %s: callback %s.%d dropped: %d deliveries are waiting", job_id, job_id, number, QUEUE_SIZE
            )
            self._on_result(
                job_id,
                CallbackStatus(
                    state="failed", delivery=number, error="too many callbacks were waiting to be sent", at=utcnow()
                ),
            )
        return False

    def _next(self) -> _Delivery | None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                if self._heap and self._heap[0].due <= now:
                    delivery = heapq.heappop(self._heap)
                    self.metrics.scheduled.set(len(self._heap))
                    return delivery
                self._cond.wait(self._heap[0].due - now if self._heap else None)
            return None

    def _work(self) -> None:
        while (delivery := self._next()) is not None:
            try:
                self._attempt(delivery)
            except Exception:  # a bug of ours: logged with its traceback, the delivery given up, the worker lives
                logger.exception("job %s: callback %s failed unexpectedly", delivery.job_id, delivery.id)
                self._end(delivery, "failed", None, "the server failed while sending the callback")

    def _attempt(self, delivery: _Delivery) -> None:
        delivery.attempts += 1
        shown = delivery.url.split("?", 1)[0]
        try:
            target = callback_target(delivery.url, self.options.allowed_hosts)
        except CallbackRefusedError as exc:
            self.metrics.attempts.labels(outcome="refused").inc()
            logger.warning("job %s: callback %s not sent: %s", delivery.job_id, delivery.id, exc.message)
            self._end(delivery, "failed", None, exc.message)
            return
        except Unresolvable as exc:
            result = Attempt("connection_error", error=str(exc))
        else:
            shown = target.shown
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": f"gnosis-ocr/{__version__}",
                "X-Gnosis-Event": EVENT,
                "X-Gnosis-Delivery": delivery.id,
                "X-Gnosis-Timestamp": str(timestamp),
                "X-Gnosis-Signature": signature(self.options.secret, timestamp, delivery.body),
            }
            result = post_once(target, headers, delivery.body, self.options.timeout)
        self.metrics.attempts.labels(outcome=result.outcome).inc()
        if result.outcome == "delivered":
            logger.info("job %s: callback %s delivered to %s (%s)", delivery.job_id, delivery.id, shown, result.status)
            self._end(delivery, "delivered", result.status, None)
            return
        if result.outcome in RETRIED and delivery.attempts < self.options.max_attempts:
            delay = self._delay(delivery.attempts, result.retry_after)
            logger.info(
                "job %s: callback %s to %s: %s; attempt %d of %d in %.1f s",
                delivery.job_id,
                delivery.id,
                shown,
                result.error,
                delivery.attempts + 1,
                self.options.max_attempts,
                delay,
            )
            with self._cond:
                if not self._stopping:
                    delivery.due = time.monotonic() + delay
                    heapq.heappush(self._heap, delivery)
                    self.metrics.scheduled.set(len(self._heap))
                    self._cond.notify()
            return
        logger.warning(
            "job %s: callback %s to %s failed after %d attempt(s): %s",
            delivery.job_id,
            delivery.id,
            shown,
            delivery.attempts,
            result.error,
        )
        self._end(delivery, "failed", result.status, result.error)

    def _delay(self, attempts: int, retry_after: float | None) -> float:
        delay = self.options.backoff * 2.0 ** (attempts - 1) * random.uniform(0.9, 1.1)  # noqa: S311 - jitter only
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(BACKOFF_MAX, delay)

    def _end(
        self, delivery: _Delivery, state: Literal["delivered", "failed"], status: int | None, error: str | None
    ) -> None:
        self.metrics.deliveries.labels(result=state).inc()
        self._on_result(
            delivery.job_id,
            CallbackStatus(
                state=state,
                delivery=delivery.number,
                attempts=delivery.attempts,
                last_status=status,
                error=error,
                at=utcnow(),
            ),
        )


def callback_body(number: int, job_id: str, summary: dict[str, object]) -> bytes:
    """What a delivery POSTs: the event, the delivery's id, and the job's summary."""
    return json.dumps({"event": EVENT, "delivery": f"{job_id}.{number}", "job": summary}).encode()
