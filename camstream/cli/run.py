"""The long-running processes: `camstream worker` and `camstream produce`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from camstream.cli.common import new_app, out, settings, stop_event

app = new_app()


@app.command()
def worker() -> None:
    """Run a stream worker (Faust): frames -> Triton -> predictions, drift, DLQ."""
    import cv2

    from camstream.observability import serve_metrics
    from streams.app import run_worker

    config = settings()
    cv2.setNumThreads(config.opencv_threads)
    serve_metrics(config.metrics_port)
    run_worker(config)


@app.command()
def produce(
    cameras: Annotated[
        Path | None, typer.Option(help="Cameras file (YAML or TOML, a list under 'cameras:').")
    ] = None,
    camera_id: Annotated[str | None, typer.Option(help="One camera's id (with --source).")] = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="One camera's source: a video file, an image folder, rtsp://..., "
            "http(s)://..., device:N or /dev/videoN, synthetic:WxH."
        ),
    ] = None,
    fps: Annotated[float, typer.Option(help="Target fps for --source.")] = 10.0,
    loop: Annotated[bool, typer.Option(help="Replay a file or folder when it ends.")] = False,
    max_width: Annotated[int, typer.Option(help="Scale frames to fit this width.")] = 1280,
    max_height: Annotated[int, typer.Option(help="Scale frames to fit this height.")] = 720,
    jpeg_quality: Annotated[int, typer.Option(help="JPEG quality, 10-100.")] = 85,
    max_frames: Annotated[
        int | None, typer.Option(help="Stop each camera after this many frames.")
    ] = None,
    from_registry: Annotated[
        bool,
        typer.Option(
            "--from-registry",
            help="Produce the cameras registered in Feast with a source (`camstream cameras "
            "add ID --source ...`), following the registry: a camera added starts, one "
            "removed stops, within CAMSTREAM_PRODUCER_REGISTRY_POLL_S; runs until SIGTERM.",
        ),
    ] = False,
) -> None:
    """Publish camera frames to the frames topic until the sources end or SIGTERM.

    Prints one JSON object at the end: per camera, frames captured, published
    (acknowledged by the broker) and dropped by reason, and reconnects. Bad camera
    configuration or credentials the broker refuses stop it with the fix (exit 2)."""
    from camstream.cameras import CameraConfigError, camera_from_entry, load_cameras
    from camstream.observability import serve_metrics
    from producers.producer import check_cameras, run_producers

    config = settings()
    if from_registry:
        if cameras is not None or camera_id or source:
            raise CameraConfigError("--from-registry takes no --cameras, --camera-id or --source")
        from producers.fleet import registry_cameras

        repo = config.feast_repo_path
        if not (repo / "feature_store.yaml").is_file():
            raise CameraConfigError(
                f"no Feast repo at {repo} for --from-registry: run `camstream up` (or "
                "`camstream setup`) there, or set CAMSTREAM_FEAST_REPO"
            )
        stop = stop_event()
        serve_metrics(config.metrics_port)
        stats = run_producers(
            config, [], stop, max_frames=max_frames, follow=lambda: registry_cameras(repo)
        )
        out(json.dumps(stats.summary()))
        return
    if cameras is not None:
        specs = load_cameras(cameras)
    elif camera_id and source:
        entry = {
            "id": camera_id,
            "source": source,
            "fps": fps,
            "loop": loop,
            "max_width": max_width,
            "max_height": max_height,
            "jpeg_quality": jpeg_quality,
        }
        specs = [camera_from_entry(entry, camera_id)]
    else:
        raise CameraConfigError("give --cameras FILE, or --camera-id with --source")
    check_cameras(specs)
    stop = stop_event()
    serve_metrics(config.metrics_port)
    stats = run_producers(config, specs, stop, max_frames=max_frames)
    out(json.dumps(stats.summary()))
