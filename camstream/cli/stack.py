"""The local stack: `camstream setup`, `up` and `status`."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from camstream.cli.common import new_app, out, settings, stop_event
from camstream.settings import load_settings

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
) -> None:
    """Start the local stack (Kafka, Triton, Feast, a worker, sample producers) and show
    predictions as they flow; a worker that exits is started again. Ctrl-C or SIGTERM
    stops every process it started."""
    from camstream.stack.local import LocalStack
    from camstream.stack.setup import prepare, sample_cameras
    from camstream.topics import follow

    config = settings()
    stop = stop_event()
    prepared = prepare(config)
    cameras = sample_cameras(prepared.assets, prepared.conveyor) if producers else []
    stack = LocalStack(config, cameras, supervise=True)
    try:
        info = stack.start()
        out(f"camstream stack up in {info.startup_s}s (state: {info.state_dir}/stack.json)")
        out(f"  kafka bootstrap : {info.kafka_bootstrap}")
        out(f"  triton grpc     : {info.triton_grpc}  (http {info.triton_http})")
        out(f"  triton metrics  : http://127.0.0.1:{info.triton_metrics_port}/metrics")
        out(f"  feast repo      : {info.feast_repo}")
        for name, port in info.metrics_ports.items():
            out(f"  {name + ' metrics':<16}: http://127.0.0.1:{port}/metrics")
        for name, path in info.logs.items():
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


@app.command()
def status() -> None:
    """Print the running local stack's endpoints (from its state file) as JSON."""
    from dataclasses import asdict

    from camstream.stack.local import read_state, stack_running

    config = load_settings()
    info = read_state(config.state_dir)
    if info is None or not stack_running(info):
        out(json.dumps({"running": False, "state_dir": str(config.state_dir)}))
        raise typer.Exit(1)
    out(json.dumps({"running": True, **asdict(info), "env": info.env()}, indent=2))
