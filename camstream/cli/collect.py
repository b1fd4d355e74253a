"""`camstream collect`: sample a camera's frames from the frames topic into a dataset,
each with the camera's Feast features as of its capture time (camstream.collect)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from camstream.cli.common import new_app, out, progress_bar, settings, stop_event

if TYPE_CHECKING:
    from camstream.collect import CollectResult, Progress

app = new_app()

_STOPPED = {
    "end": "reached the end of the topic",
    "until": "passed --until",
    "max": "reached --max",
    "idle": "no frames within --idle-timeout-s",
    "signal": "stopped by a signal",
}


@contextmanager
def _progress(live: bool) -> Iterator[Progress | None]:
    """A bar on a terminal (records scanned of those to scan, or a count when live)."""
    from rich.progress import TextColumn

    with progress_bar(TextColumn("{task.fields[kept]} kept")) as bar:
        if bar is None:
            yield None
            return
        task = bar.add_task("collect: live" if live else "collect: reading", total=None, kept=0)

        def update(scanned: int, total: int | None, kept: int) -> None:
            bar.update(task, completed=scanned, total=total, kept=kept)

        yield update


def _summary(result: CollectResult, every_s: float) -> str:
    features = sorted({ref.split(":", 1)[0] for ref in result.features}) or ["none"]
    unavailable = sorted({ref.split(":", 1)[0] for ref in result.features_unavailable})
    lines = [
        f"collected {result.kept} frames of camera {result.camera} into dataset "
        f"{result.dataset} ({result.read} of its records read, {result.scanned} scanned; "
        f"{_STOPPED.get(result.stopped, result.stopped)})",
        f"  skipped: {result.skipped_rate} by the {every_s:g} s rate, "
        f"{result.near_duplicates} near-duplicates, {result.invalid} invalid, "
        f"{result.outside_range} outside the time range, "
        f"{result.already_collected} already collected",
        f"  features as of capture time ({', '.join(features)}): {result.features_rows} "
        f"frames with their row, {result.features_missing} without (None)",
    ]
    if unavailable:
        lines.append(
            f"  not in the offline store, so not joined: {', '.join(unavailable)} "
            "(the worker pushes it to the online store only)"
        )
    if result.features_missing:
        lines.append(
            "  frames without a row were captured before their camera was registered (or "
            "re-registered): register cameras before collecting their frames"
        )
    lines.append(f"dataset {result.dataset}: {result.images} images at {result.root}")
    return "\n".join(lines)


@app.command("collect")
def collect_command(
    camera: Annotated[str, typer.Option("--camera", help="The camera id (its frames' key).")],
    dataset: Annotated[
        str, typer.Option("--dataset", help="Dataset to add to (created when new).")
    ],
    max_frames: Annotated[
        int | None, typer.Option("--max", min=1, help="Stop after keeping N frames.")
    ] = None,
    every_s: Annotated[
        float,
        typer.Option("--every-s", min=0, help="Keep at most one frame per S s of capture time."),
    ] = 1.0,
    since: Annotated[
        str | None,
        typer.Option(help="Frames captured from: ISO 8601 (UTC unless zoned), -10m, -2h."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Frames captured until: ISO 8601, -10m, ...")
    ] = None,
    live: Annotated[
        bool, typer.Option("--live", help="Keep reading new frames (until --max or Ctrl-C).")
    ] = False,
    idle_timeout_s: Annotated[
        float,
        typer.Option("--idle-timeout-s", min=0.1, help="Stop after S s without a record."),
    ] = 30.0,
    near_duplicate_bits: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=64,
            help="pHash bits within which a frame is a near-duplicate of a recent one "
            "(default: the threshold measured on the sample videos).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Sample a camera's frames from camstream.frames (a time range, or --live) into a
    dataset: at most one per --every-s, near-duplicates dropped, each frame joined with
    the camera's Feast features as of its capture time. Nothing is committed to Kafka."""
    from camstream.collect import NEAR_DUPLICATE_BITS, collect, parse_time

    config = settings()
    since_ms = parse_time(since) if since else None
    until_ms = parse_time(until) if until else None
    stop = stop_event()
    with _progress(live) as progress:
        result = collect(
            config,
            camera,
            dataset,
            max_frames=max_frames,
            every_s=every_s,
            since_ms=since_ms,
            until_ms=until_ms,
            live=live,
            idle_timeout_s=idle_timeout_s,
            progress=progress,
            near_duplicate_bits=(
                NEAR_DUPLICATE_BITS if near_duplicate_bits is None else near_duplicate_bits
            ),
            stop=stop,
        )
    report: dict[str, Any] = result.to_json()
    out(json.dumps(report) if as_json else _summary(result, every_s))
