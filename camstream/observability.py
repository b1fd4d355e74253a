"""Logging and metrics set-up shared by every long-running camstream process.

Logs are structured, one event per line (JSON when not on a terminal). Metrics are
served by prometheus_client on the settings' port (0 picks a free one).
"""

from __future__ import annotations

import logging
import sys

import structlog
from prometheus_client import start_http_server


def configure_logging(level: str = "INFO", json: bool | None = None) -> None:
    """Configure structlog and stdlib logging once, at process start (never at import)."""
    if json is None:
        json = not sys.stderr.isatty()
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(name)s %(message)s")
    # Feast logs every registry refresh at INFO.
    logging.getLogger("feast").setLevel(max(numeric, logging.WARNING))
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def serve_metrics(port: int) -> int:
    """Serve Prometheus metrics on 127.0.0.1-or-all:port; returns the port bound."""
    server, _thread = start_http_server(port)
    bound = int(server.server_port)
    structlog.get_logger(__name__).info("metrics.serving", port=bound)
    return bound
