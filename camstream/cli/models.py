"""The model and its drift reference: `camstream export` and `camstream drift baseline`.
Both run in the model environment (training/), which the stack's set-up prepares."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from camstream.cli.common import new_app, out, settings

app = new_app()
drift_app = new_app(help="Drift reference profiles.", no_args_is_help=True)


@app.command()
def export() -> None:
    """Export the pretrained classifier to the Triton model repository (model env)."""
    from camstream.stack.assets import ensure_assets
    from camstream.stack.setup import ensure_model
    from camstream.stack.triton import locate_model_env

    config = settings()
    ensure_model(config, locate_model_env(), ensure_assets(config.cache_dir))
    out(str(config.model_repo / config.model_name))


@drift_app.command("baseline")
def drift_baseline(
    sources: Annotated[list[Path], typer.Argument(help="Calibration videos or image folders.")],
    frames: Annotated[int, typer.Option(help="Frames sampled per video.")] = 200,
) -> None:
    """Build the reference profile of the current model version (CAMSTREAM_MODEL_VERSION,
    else the latest) from real frames."""
    from camstream.stack.setup import run_in_model_env
    from camstream.stack.triton import locate_model_env

    config = settings()
    version = config.model_version_dir()
    run_in_model_env(
        locate_model_env(),
        [
            "training.baseline",
            "--model",
            str(version.parent),
            "--version",
            version.name,
            "--out",
            str(config.reference_profile_path),
            "--frames",
            str(frames),
            *map(str, sources),
        ],
        "build the drift reference profile",
    )
    out(str(config.reference_profile_path))
