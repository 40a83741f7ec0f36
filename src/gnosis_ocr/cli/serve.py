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
    """Run the HTTP service: the REST API (OpenAPI at /docs), /healthz, /readyz and /metrics.

    It answers at once; the model is resolved in the background as GNOSIS_CACHE_MODE says: a complete cache
    loads with no network, `auto` warms a missing model (progress in /readyz and GET /api/v1/cache), `offline`
    stays not ready and says which command fixes it. With GNOSIS_API_KEY set, every route but the health probes
    needs the key. SIGINT or SIGTERM stops it gracefully.
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

    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # our handler and format (set by the CLI); uvicorn's loggers propagate to it
        log_level=level.lower(),
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
    )
    uvicorn.Server(config).run()
