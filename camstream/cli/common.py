"""What every command shares: settings and logging, stop signals, output, and the
error boundary that turns camstream's errors into a message and an exit code."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperGroup

from camstream.errors import CamstreamError, ConfigError
from camstream.settings import Settings, load_settings

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn

# Exit codes: a setting, file or flag to fix; anything else camstream reports.
EXIT_CONFIG = 2
EXIT_ERROR = 1


class ErrorBoundary(TyperGroup):
    """A command group whose commands' CamstreamErrors end as one line on stderr, no
    traceback: ConfigError exits 2, any other CamstreamError 1. Other exceptions are
    bugs and keep their traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except CamstreamError as exc:
            command = " ".join(filter(None, (ctx.command_path, ctx.invoked_subcommand)))
            sys.stderr.write(f"{command}: {exc}\n")
            sys.stderr.flush()
            code = EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_ERROR
            raise typer.Exit(code) from None


def new_app(**options: Any) -> typer.Typer:
    """A Typer app (or command group) behind the error boundary."""
    return typer.Typer(cls=ErrorBoundary, pretty_exceptions_enable=False, **options)


def settings() -> Settings:
    """The process's settings, with logging configured from them."""
    from camstream.observability import configure_logging

    loaded = load_settings()
    # An unset CAMSTREAM_LOG_LEVEL means: quiet on a terminal, INFO in files and pipes.
    configure_logging(loaded.log_level if "log_level" in loaded.model_fields_set else None)
    return loaded


def stop_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so loops can end and flush."""
    stop = threading.Event()

    def handler(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def out(text: str) -> None:
    """One line of the command's own output (stdout; logs go to stderr)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@contextmanager
def progress_bar(*columns: ProgressColumn) -> Iterator[Progress | None]:
    """A rich progress bar (description, bar, done/total, then ``columns``) on stderr,
    so stdout stays the command's output; None where stderr is not a terminal (logs,
    pipes, tests), and the command draws nothing."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        *columns,
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        yield bar
