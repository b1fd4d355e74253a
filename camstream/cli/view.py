"""`camstream view`: the live view of every camera, in a browser."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from camstream.cli.common import new_app, out, settings, stop_event
from camstream.settings import Settings

app = new_app()


def joined_settings(config: Settings, bootstrap: str | None) -> tuple[Settings, Path | None, str]:
    """The settings to read the topics with: ``--bootstrap``, else CAMSTREAM_KAFKA_BOOTSTRAP,
    else the local stack running from the state folder (its stack.json), else the
    default; with the Feast repo whose cameras to show, and where Kafka came from."""
    from camstream.stack.local import read_state, stack_holder

    if bootstrap:
        joined = config.model_copy(update={"kafka_bootstrap": bootstrap})
        return joined, _repo(config), "--bootstrap"
    if "kafka_bootstrap" in config.model_fields_set:
        return config, _repo(config), "CAMSTREAM_KAFKA_BOOTSTRAP"
    state_dir = config.state_dir.resolve()
    info = read_state(state_dir)
    if info is not None and info.kafka_bootstrap and stack_holder(state_dir) is not None:
        joined = config.model_copy(
            update={"kafka_bootstrap": info.kafka_bootstrap, "topic_prefix": info.topic_prefix}
        )
        repo = Path(info.feast_repo) if info.feast_repo else _repo(config)
        return joined, repo, f"the local stack in {state_dir}"
    return config, _repo(config), "the default"


def _repo(config: Settings) -> Path | None:
    repo = config.feast_repo_path
    return repo if repo.is_dir() else None


@app.command()
def view(
    bootstrap: Annotated[
        str | None,
        typer.Option(
            help="Kafka bootstrap servers (default: CAMSTREAM_KAFKA_BOOTSTRAP, else the "
            "local stack running from the state folder)."
        ),
    ] = None,
    host: Annotated[
        str,
        typer.Option(help="Address to bind; anything but loopback needs CAMSTREAM_VIEW_TOKEN."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind (0: a free one).")] = 8090,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="CAMSTREAM_VIEW_TOKEN",
            show_envvar=True,
            help="Token every request must carry (open the page once with ?token=...). "
            "Give it by the environment: a command line is visible to every user.",
        ),
    ] = None,
    history_s: Annotated[
        float, typer.Option(help="Seconds of records read back at start (0: live only).")
    ] = 300.0,
    stale_s: Annotated[
        float, typer.Option(help="A camera with no prediction for this long shows stale.")
    ] = 5.0,
    thumbnail_width: Annotated[int, typer.Option(help="Thumbnail width in pixels.")] = 320,
    thumbnail_interval_s: Annotated[
        float, typer.Option(help="At most one thumbnail per camera per this many seconds.")
    ] = 1.0,
    max_clients: Annotated[int, typer.Option(help="Pages connected at once.")] = 64,
) -> None:
    """Serve the live view: a tile per camera (latest frame, label and score, model
    version, fps in and out, end-to-end latency, drift and data quality, DLQ count,
    shadow agreement), updated live; a page per camera with its recent predictions and
    drift windows. Binds 127.0.0.1 unless given a token. Runs until Ctrl-C or SIGTERM."""
    from camstream.observability import serve_metrics
    from camstream.view.launch import check_bind

    base = settings()
    # CAMSTREAM_VIEW_TOKEN= (empty) means no token; a settings file may name one too
    token = token or base.view_token or None
    check_bind(host, token)  # before anything is started
    config, repo, source = joined_settings(base, bootstrap)
    from camstream.view.server import ViewConfig, serve

    stop_event()  # SIGTERM/SIGINT stop the server (uvicorn's handlers, ours after them)
    metrics = serve_metrics(config.metrics_port)

    def ready(url: str) -> None:
        login = " (open it once with ?token=<CAMSTREAM_VIEW_TOKEN>)" if token else ""
        out(f"camstream view: {url}{login}")
        out(f"  Kafka {config.kafka_bootstrap} (from {source}), metrics on port {metrics}")

    serve(
        config,
        ViewConfig(
            host=host,
            port=port,
            token=token,
            history_s=history_s,
            stale_s=stale_s,
            thumbnail_width=thumbnail_width,
            thumbnail_interval_s=thumbnail_interval_s,
            max_clients=max_clients,
            feast_repo=repo,
        ),
        on_ready=ready,
    )
