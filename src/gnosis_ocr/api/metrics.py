"""HTTP metrics on the app's own registry: requests by route template and status, and their durations.

Labelled by the route's template (``/api/v1/jobs/{job_id}``), never the raw path, so ids do not explode the
series; paths no route matches share the label ``unmatched``. A pure ASGI middleware (no response buffering), so
streamed responses pass straight through; event streams are counted but kept out of the duration histogram,
where their minutes-long lifetimes would drown the request latencies.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "gnosis_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            "gnosis_http_request_duration_seconds",
            "Seconds from request to the end of the response, by method and route template (event streams excluded).",
            ["method", "route"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering
        streaming = False

        async def send_and_note(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for key, value in message.get("headers", ()):
                    if key.lower() == b"content-type" and value.startswith(b"text/event-stream"):
                        streaming = True
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = route_template(scope)
            method = scope.get("method", "")
            method = method if method in METHODS else "other"
            self.metrics.requests.labels(method=method, route=route, status=str(status)).inc()
            if not streaming:
                self.metrics.seconds.labels(method=method, route=route).observe(time.perf_counter() - started)
