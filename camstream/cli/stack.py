"""The local stack: `camstream setup`, `up` and `status` (`--watch`: the table of
camstream.stack.health)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from camstream.cli.common import new_app, out, settings, stop_event
from camstream.settings import Settings, load_settings

if TYPE_CHECKING:
    from camstream.stack.process import StackLock

app = new_app()


@app.command()
def setup() -> None:
    """Fetch Kafka's jars and the sample videos/photos, export the model, build its
    drift reference profile. Idempotent: cached steps return at once."""
    from camstream.stack.setup import prepare

    prepared = prepare(settings())
    out(f"set-up complete in {prepared.seconds:.1f}s")


@app.command()
def up(
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: until Ctrl-C).")
    ] = None,
    producers: Annotated[bool, typer.Option(help="Start the sample cameras' producers.")] = True,
    quiet: Annotated[bool, typer.Option(help="Do not print predictions as they flow.")] = False,
    view: Annotated[
        bool, typer.Option(help="Start the live view (`camstream view`) on 127.0.0.1.")
    ] = True,
    prometheus: Annotated[
        bool,
        typer.Option(
            help="Run Prometheus (Debian's) on 127.0.0.1: it scrapes every process of "
            "the stack and evaluates the repository's alert rules."
        ),
    ] = False,
    workers: Annotated[int, typer.Option(min=1, help="Stream workers in the group.")] = 1,
    triton: Annotated[
        int,
        typer.Option(
            "--triton",
            min=1,
            help="Triton servers on the same model repository: each worker sends each "
            "request to the healthy one with the fewest in flight.",
        ),
    ] = 1,
) -> None:
    """Start the local stack (Kafka, Triton, Feast, a worker, sample producers, the live
    view and, with --prometheus, Prometheus) and show predictions as they flow. One
    stack per state folder (CAMSTREAM_STATE_DIR): a second `up` there refuses at once.
    Every service is watched: one that exits is reported in one line and started again
    on the same ports; one that keeps failing stops the stack. Ctrl-C or SIGTERM stops
    every process it started."""
    from camstream.stack.process import StackLock

    config = settings()
    # Before anything else: a refused `up` touches nothing of the running stack.
    lock = StackLock(config.state_dir.resolve()).acquire()
    try:
        with _native_stderr_to(config.state_dir.resolve() / "logs" / "up.log", config):
            _run_stack(config, lock, duration, producers, quiet, view, prometheus, workers, triton)
    finally:
        lock.release()


@contextmanager
def _native_stderr_to(path: Path, config: Settings) -> Iterator[None]:
    """Send this process's stderr (file descriptor 2) to ``path`` while the stack runs:
    the client libraries write there themselves (librdkafka: a line per refused
    connection while Kafka is down), and so do the launcher's own logs (JSON at INFO,
    as in its children's log files). The console keeps stdout: the stack's summary, the
    supervisor's lines, predictions; and, once this ends, the one line of an error."""
    from camstream.observability import configure_logging

    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    console = os.dup(2)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    explicit = config.log_level if "log_level" in config.model_fields_set else None
    configure_logging(explicit)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(console, 2)
        os.close(console)
        configure_logging(explicit)


def _say(text: str) -> None:
    out(f"{time.strftime('%H:%M:%S')} {text}")


def _run_stack(
    config: Settings,
    lock: StackLock,
    duration: float | None,
    producers: bool,
    quiet: bool,
    view: bool = True,
    prometheus: bool = False,
    workers: int = 1,
    tritons: int = 1,
) -> None:
    from camstream.errors import ServiceError
    from camstream.stack.local import LocalStack
    from camstream.stack.setup import prepare, sample_cameras
    from camstream.topics import follow

    stop = stop_event()
    prepared = prepare(config)
    cameras = sample_cameras(prepared.assets, prepared.conveyor) if producers else []
    stack = LocalStack(
        config,
        cameras,
        workers=workers,
        supervise=True,
        lock=lock,
        on_event=_say,
        on_failure=lambda _reason: stop.set(),
        metrics_port=config.metrics_port,
        view=view,
        prometheus=prometheus,
        tritons=tritons,
    )
    try:
        info = stack.start()
        out(f"camstream stack up in {info.startup_s}s (state: {info.state_dir}/stack.json)")
        out(f"  kafka bootstrap : {info.kafka_bootstrap}")
        out(f"  triton grpc     : {info.triton_grpc}  (http {info.triton_http})")
        for port in info.triton_metrics_ports:
            out(f"  triton metrics  : http://127.0.0.1:{port}/metrics")
        out(f"  feast repo      : {info.feast_repo}")
        if info.view_url:
            out(f"  live view       : {info.view_url}")
        if info.prometheus_url:
            out(f"  prometheus      : {info.prometheus_url}")
        for name, port in info.metrics_ports.items():
            out(f"  {name + ' metrics':<16}: http://127.0.0.1:{port}/metrics")
        for name, path in {**info.logs, "up": f"{info.state_dir}/logs/up.log"}.items():
            out(f"  {name + ' log':<16}: {path}")
        deadline = None if duration is None else time.monotonic() + duration
        summary = follow(
            stack.child_settings(),
            config.predictions_topic,
            stop,
            deadline,
            on_line=None if quiet else out,
        )
        out(f"predictions: {summary.line()}")
    finally:
        out("stopping the stack ...")
        stack.stop()
        out("stopped")
    if stack.failure:
        raise ServiceError(f"the stack stopped: {stack.failure}")


@app.command()
def status(
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Show the stack's health as a table, refreshed until Ctrl-C: services "
            "(state, restarts, lag, rates), cameras (fps in and out, state), alerts.",
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", "-n", min=0.2, help="Seconds between refreshes.")
    ] = 2.0,
) -> None:
    """Print the local stack of the state folder as JSON: endpoints, and per service
    (``services``) its state (running, down, waiting, restarting, failed), pid, restart
    count, last exit and log. Exits 1 when no stack runs there. With --watch, the same
    health as a table for a person (on SSH too), refreshed every --interval seconds;
    Ctrl-C or SIGTERM ends it (exit 0)."""
    from dataclasses import asdict

    from camstream.stack.local import read_state, stack_holder

    config = load_settings()
    state_dir = config.state_dir.resolve()
    if watch:
        _watch_status(state_dir, interval)
        return
    holder = stack_holder(state_dir)
    info = read_state(state_dir)
    if holder is None:
        report: dict[str, object] = {"running": False, "state_dir": str(state_dir)}
        if info is not None:
            from camstream.stack.health import left_note

            report["note"] = left_note(info)
        out(json.dumps(report))
        raise typer.Exit(1)
    if info is None:  # locked, the state file not written yet
        out(json.dumps({"running": True, "state": "starting", "launcher_pid": holder.pid}))
        return
    out(json.dumps({"running": True, **asdict(info), "env": info.env()}, indent=2))


def _watch_status(state_dir: Path, interval_s: float) -> None:
    """Redraw the table in place on a terminal; print one after another into a pipe."""
    from rich.console import Console
    from rich.live import Live

    from camstream.stack.health import collect_status, status_table

    stop = stop_event()
    console = Console()
    snapshot = collect_status(state_dir)
    if not console.is_terminal:
        console.print(status_table(snapshot, interval_s=interval_s))
        while not stop.wait(interval_s):
            snapshot, before = collect_status(state_dir), snapshot
            console.print(status_table(snapshot, before, interval_s))
        return
    table = status_table(snapshot, interval_s=interval_s)
    with Live(table, console=console, auto_refresh=False) as live:
        while not stop.wait(interval_s):
            snapshot, before = collect_status(state_dir), snapshot
            live.update(status_table(snapshot, before, interval_s), refresh=True)
