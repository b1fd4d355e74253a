"""`camstream cameras add|list|remove`: cameras and their metadata in Feast (the worker
sees changes at once), and optionally in a cameras file for `camstream produce`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from camstream.cli.common import new_app, out, settings

app = new_app(
    help="Register cameras and their metadata in Feast (the worker sees changes at once).",
    no_args_is_help=True,
)
CamerasFile = Annotated[
    Path | None,
    typer.Option("--file", help="Also add to / remove from this cameras file (YAML)."),
]


@app.command("add")
def add(
    camera_id: Annotated[str, typer.Argument(help="The camera's id (its Kafka key).")],
    source: Annotated[str, typer.Option(help="Where its frames come from.")] = "synthetic",
    fps: Annotated[float, typer.Option(help="Target publish rate.")] = 10.0,
    loop: Annotated[bool, typer.Option(help="Replay a file or folder source.")] = False,
    site: Annotated[str, typer.Option()] = "default",
    zone: Annotated[str, typer.Option()] = "default",
    indoor: Annotated[bool, typer.Option()] = False,
    threshold: Annotated[
        float, typer.Option(help="Confidence threshold for the top-1 label.")
    ] = 0.2,
    file: CamerasFile = None,
) -> None:
    """Register (or update) a camera's metadata in Feast and materialize it online."""
    from camstream.cameras import camera_from_entry, dump_cameras, load_cameras, source_kind
    from camstream.featurestore import open_store, upsert_cameras

    config = settings()
    entry = {
        "id": camera_id,
        "source": source,
        "fps": fps,
        "loop": loop,
        "site": site,
        "zone": zone,
        "indoor": indoor,
        "confidence_threshold": threshold,
    }
    camera = camera_from_entry(entry, camera_id)
    if file is not None:
        source_kind(camera.source)  # a camera written to a file must be producible
        others = [c for c in load_cameras(file) if c.id != camera_id] if file.exists() else []
        dump_cameras([*others, camera], file)
    upsert_cameras(open_store(config.feast_repo_path), [camera])
    out(f"registered {camera_id}" + (f" (and wrote {file})" if file else ""))


@app.command("list")
def list_cameras(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
) -> None:
    """The registered cameras and their metadata."""
    from camstream.featurestore import registered_cameras

    rows = registered_cameras(settings().feast_repo_path)
    if as_json:
        out(json.dumps(rows))
        return
    out(f"{'camera':<24}{'site':<16}{'zone':<20}{'indoor':<8}threshold")
    for row in rows:
        out(
            f"{row['camera_id']:<24}{row['site']:<16}{row['zone']:<20}"
            f"{row['indoor']!s:<8}{row['confidence_threshold']:.2f}"
        )


@app.command("remove")
def remove(
    camera_ids: Annotated[list[str], typer.Argument(help="Camera ids to unregister.")],
    file: CamerasFile = None,
) -> None:
    """Unregister cameras: the worker reports them as unknown (enrichment missing)."""
    from camstream.cameras import dump_cameras, load_cameras
    from camstream.featurestore import open_store, remove_cameras

    config = settings()
    removed = remove_cameras(open_store(config.feast_repo_path), camera_ids)
    if file is not None and file.exists():
        kept = [c for c in load_cameras(file) if c.id not in camera_ids]
        dump_cameras(kept, file)
    unknown = sorted(set(camera_ids) - set(removed))
    out(f"removed {removed}" + (f"; not registered: {unknown}" if unknown else ""))
    if unknown and not removed:
        raise typer.Exit(1)
