"""`camstream cameras add|update|list|remove`: cameras and their metadata in Feast (the worker
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
ModelOption = Annotated[
    str, typer.Option("--model", help="The model that answers for it ('' = the default).")
]
VersionOption = Annotated[
    str,
    typer.Option("--model-version", help="Pin a version of that model ('' = the model's default)."),
]
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
    model: ModelOption = "",
    model_version: VersionOption = "",
    file: CamerasFile = None,
) -> None:
    """Register (or replace) a camera and its metadata in Feast and materialize it online."""
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
        "model": model,
        "model_version": model_version,
    }
    camera = camera_from_entry(entry, camera_id)
    if file is not None:
        source_kind(camera.source)  # a camera written to a file must be producible
        others = [c for c in load_cameras(file) if c.id != camera_id] if file.exists() else []
        dump_cameras([*others, camera], file)
    upsert_cameras(open_store(config.feast_repo_path), [camera])
    out(f"registered {camera_id}" + (f" (and wrote {file})" if file else ""))


@app.command("update")
def update(
    camera_ids: Annotated[list[str], typer.Argument(help="Registered camera ids.")],
    model: Annotated[
        str | None, typer.Option("--model", help="The model that answers ('' = the default).")
    ] = None,
    model_version: Annotated[
        str | None,
        typer.Option("--model-version", help="Pin a version ('' = the model's default)."),
    ] = None,
    site: Annotated[str | None, typer.Option()] = None,
    zone: Annotated[str | None, typer.Option()] = None,
    indoor: Annotated[bool | None, typer.Option()] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Confidence threshold for the top-1 label.")
    ] = None,
) -> None:
    """Change some metadata of registered cameras; the rest stays. A running worker
    routes their next frames by it within its feature cache TTL, without a restart.
    (`camstream promote` switches models with a canary and a drain; this does not.)"""
    from camstream.featurestore import open_store, update_cameras

    given = {
        "model": model,
        "model_version": model_version,
        "site": site,
        "zone": zone,
        "indoor": indoor,
        "confidence_threshold": threshold,
    }
    change = {column: value for column, value in given.items() if value is not None}
    if model is not None and model_version is None:
        change["model_version"] = ""  # a version of the old model means nothing for the new
    if not change:
        raise typer.BadParameter("nothing to change: give --model, --threshold, ...")
    update_cameras(open_store(settings().feast_repo_path), dict.fromkeys(camera_ids, change))
    out(f"updated {camera_ids}: " + ", ".join(f"{k}={v!r}" for k, v in change.items()))


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
    out(f"{'camera':<24}{'site':<16}{'zone':<20}{'indoor':<8}{'threshold':<11}model")
    for row in rows:
        model = row["model"] or "(default)"
        if row["model_version"]:
            model += f":{row['model_version']}"
        if row["shadow_model"]:
            model += f"  shadow {row['shadow_model']} x{row['shadow_fraction']:.2f}"
        out(
            f"{row['camera_id']:<24}{row['site']:<16}{row['zone']:<20}"
            f"{row['indoor']!s:<8}{row['confidence_threshold']:<11.2f}{model}"
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
