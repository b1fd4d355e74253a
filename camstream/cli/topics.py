"""The topics as consumers see them: `camstream tail` and `camstream schemas`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from camstream.cli.common import new_app, out, settings, stop_event
from camstream.settings import REPO_ROOT

app = new_app()


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="predictions, drift, frames.dlq, or a full name.")],
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest record.")] = False,
    count: Annotated[int | None, typer.Option(help="Stop after this many records.")] = None,
) -> None:
    """Print a topic's records as they flow, one line each."""
    from camstream.topics import follow

    config = settings()
    name = topic if topic.startswith(config.topic_prefix) else config.topic_prefix + topic
    follow(config, name, stop_event(), from_beginning=from_beginning, count=count, on_line=out)


@app.command()
def schemas(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the JSON Schemas.")] = REPO_ROOT
    / "schemas",
) -> None:
    """Write the JSON Schema of every published record (the consumers' contract)."""
    from camstream.records import write_schemas

    for path in write_schemas(out_dir):
        out(str(path))
