"""Logging and metrics set-up shared by every long-running camstream process.

Logs are structured, one event per line, on stderr. Where a person reads them (stderr
is a terminal) they are rendered for people, and quiet unless asked: warnings and
errors only, the things an operator must act on, while stdout carries the command's
own output (`camstream up`'s summary and predictions). Everywhere else (files, pipes:
the children of `camstream up` write to log files) every line is JSON at INFO, the
libraries' logging (Kafka clients, Faust, Feast) included. An explicit level
(CAMSTREAM_LOG_LEVEL) holds in both. Metrics are served by prometheus_client on the
settings' port (0 picks a free one).
"""

from __future__ import annotations

import logging
import sys

import structlog
from prometheus_client import start_http_server

# The level when none is given: a terminal shows what needs the operator, a file all.
TERMINAL_LEVEL = "WARNING"
FILE_LEVEL = "INFO"


def _renderer(json: bool) -> structlog.typing.Processor:
    if json:
        return structlog.processors.JSONRenderer()
    return structlog.dev.ConsoleRenderer(
        colors=sys.stderr.isatty(),
        exception_formatter=structlog.dev.plain_traceback,
        pad_event_to=0,
    )


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at each write, not the one at configure
    time: a caller that swaps it (a test capturing a CLI run, then closing its stream)
    leaves later log lines with a stream that is open."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str | None = None, json: bool | None = None) -> None:
    """Configure structlog and stdlib logging once, at process start (never at import).

    ``json``: None renders for people on a terminal and JSON elsewhere. ``level``: None
    is WARNING on a terminal and INFO elsewhere.
    """
    terminal = sys.stderr.isatty()
    if json is None:
        json = not terminal
    if level is None:
        level = TERMINAL_LEVEL if terminal else FILE_LEVEL
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    timestamper = (
        structlog.processors.TimeStamper(fmt="iso", utc=True)
        if json
        else structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False)
    )
    # format_exc_info turns a traceback into a JSON string; the console renders its own.
    exceptions: list[structlog.typing.Processor] = (
        [structlog.processors.format_exc_info] if json else []
    )
    renderer = _renderer(json)

    # The libraries' stdlib records, rendered like our own events.
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *exceptions,
                renderer,
            ],
        )
    )
    logging.basicConfig(level=numeric, handlers=[handler], force=True)
    # Feast logs every registry refresh at INFO.
    logging.getLogger("feast").setLevel(max(numeric, logging.WARNING))

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            *exceptions,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )


def serve_metrics(port: int) -> int:
    """Serve Prometheus metrics on 127.0.0.1-or-all:port; returns the port bound."""
    server, _thread = start_http_server(port)
    bound = int(server.server_port)
    structlog.get_logger(__name__).info("metrics.serving", port=bound)
    return bound
