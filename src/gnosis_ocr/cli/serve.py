"""``gnosis-ocr serve``: the HTTP service under uvicorn."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer

from gnosis_ocr.errors import ConfigError
from gnosis_ocr.settings import Settings

LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
# Cloud Run kills 10 s after SIGTERM: drain requests for 5 s, then the lifespan stops a running warm (3 s)
GRACEFUL_SHUTDOWN_S = 5


def serve(
    host: Annotated[
        str | None,
        typer.Option(
            help="Address to bind. Default: GNOSIS_HOST or 127.0.0.1 (loopback only; 0.0.0.0 in a container).",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=1, max=65535, help="Port. Default: GNOSIS_PORT, then PORT (Cloud Run), then 7799.", show_default=False
        ),
    ] = None,
) -> None:
    """Run the HTTP service: the web UI at /, the jobs API under /api/v1 (OpenAPI at /docs), /healthz, /readyz and
    /metrics. docs/API.md describes every route.

    It answers at once and loads the default engine in the background (GNOSIS_ENGINE; auto takes the VLM with a
    GPU and the model complete in the cache, else the layout engine where its model file is installed, else tesseract;
    /readyz says which and why). For the VLM the model is resolved first as
    GNOSIS_CACHE_MODE says: a complete cache loads with no network, `auto` warms a missing model (progress in
    /readyz and GET /api/v1/cache), `offline` stays not ready and says which command fixes it.

    Jobs are kept in GNOSIS_STORAGE (a local folder by default; gs:// or s3:// to share them between instances)
    and deleted GNOSIS_JOB_TTL_SECONDS after they finish; a job a restart interrupted resumes on the next start.
    With GNOSIS_API_KEY set, every route but the health probes, the UI's files and the docs needs the key.
    State-changing requests from another site's page get 403 (GNOSIS_ALLOWED_ORIGINS names the exceptions); slow or
    oversized request heads and idle connections are closed (GNOSIS_HTTP_* bound them; docs/OPERATIONS.md).
    SIGINT or SIGTERM stops it gracefully: the running job stops at its next page and resumes on the next start.
    """
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    settings = Settings(**overrides)
    level = settings.log_level.upper()
    if level not in LOG_LEVELS:
        raise ConfigError(
            f"GNOSIS_LOG_LEVEL={settings.log_level!r} is not a log level.", hint=f"Use one of {', '.join(LOG_LEVELS)}."
        )
    logging.getLogger("gnosis_ocr").setLevel(level)

    import uvicorn

    from gnosis_ocr.api import create_app
    from gnosis_ocr.api.protocol import BoundedHttpToolsProtocol

    # slow and oversized clients: a bounded head (time, bytes), idle keep-alive and open connections
    protocol = BoundedHttpToolsProtocol.configured(
        header_timeout=settings.http_header_timeout,
        max_header_bytes=settings.http_max_header_bytes,
        max_connections=settings.http_max_connections,
    )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http=protocol,
        timeout_keep_alive=settings.http_keepalive_timeout,
        h11_max_incomplete_event_size=settings.http_max_header_bytes,  # the same bound should h11 ever be used
        log_config=None,  # our handler and format (set by the CLI); uvicorn's loggers propagate to it
        log_level=level.lower(),
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
    )
    uvicorn.Server(config).run()
