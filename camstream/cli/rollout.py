"""`camstream rollback MODEL [--camera ID ...]`: undo the last promote of a model (for
those cameras), recorded in the rollout history, by the path promote takes (load the
previous version if it was unloaded, wait until it is ready, switch back, drain,
drop). `camstream promote` lives with the other model commands (cli/models.py)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from camstream.cli.common import new_app, out, settings
from camstream.cli.models import Cameras, LoadTimeoutS, WaitS, report_done

app = new_app()


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help="The model whose last promote to undo.")],
    camera: Cameras = None,
    wait_s: WaitS = 0.0,
    load_timeout_s: LoadTimeoutS = 120.0,
) -> None:
    """Return MODEL (or only --camera's routes) to what answered before its last promote,
    with no failed request; prints the time taken and the cameras switched. Exits 1,
    changing nothing, when another rollout holds the lock or the version cannot load."""
    from camstream import rollout
    from camstream.registry import Registry

    started = time.monotonic()
    config = settings()
    cameras = list(camera or [])
    command = " ".join(["camstream rollback", model, *(f"--camera {c}" for c in cameras)])
    registry = Registry(config.registry_path)
    routes = rollout.CameraRoutes(config.feast_repo_path)
    try:
        with rollout.rollout_lock(config.model_repo, wait_s, command):
            triton = rollout.Triton(config.triton_grpc)
            try:
                if not triton.live():
                    history = rollout.read_records(config.registry_path / rollout.HISTORY_FILE)
                    target, switch = rollout.rollback_target(history, model, cameras or None)
                    before = rollout.read_fleet(config, routes)
                    switched = rollout.switch_on_disk(
                        config,
                        routes,
                        before,
                        switch,
                        {
                            "action": "rollback",
                            "version": switch.default,
                            "undoes": target.get("id"),
                            "cameras": cameras or None,
                            "command": command,
                        },
                    )
                    out(f"Triton at {config.triton_grpc} did not answer: switched back on disk")
                    report_done(f"rolled back {model}", started, None, switched)
                    return
                out(f"rollback of {model} on Triton {config.triton_grpc}")
                outcome = rollout.Rollout(
                    config, triton, routes, out, command, registry, load_timeout_s=load_timeout_s
                ).rollback(model, cameras or None, started=started)
            finally:
                triton.close()
    except rollout.RolloutRefused as refused:
        out(f"refused: rollback of {model}: {refused}")
        out("  nothing was switched; what served before still serves")
        raise typer.Exit(1) from None
    back = outcome.record.get("version")
    out(f"{model} is back on {back} (undid {outcome.record.get('undoes')})")
    report_done(f"rolled back {model}", started, outcome.switched_after_s, outcome.switched)


shadow_app = new_app(
    help="Shadow a camera: a candidate version also classifies a share of its frames.",
    no_args_is_help=True,
)
app.add_typer(shadow_app, name="shadow")
Ref = Annotated[str, typer.Argument(help="MODEL:VERSION, installed in the model repository.")]
ShadowCameras = Annotated[
    list[str], typer.Option("--camera", help="The camera(s) to shadow (repeat the flag).")
]


@shadow_app.command("start")
def shadow_start(
    ref: Ref,
    camera: ShadowCameras,
    fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of the camera's frames it classifies.")
    ] = 0.2,
    wait_s: WaitS = 0.0,
    load_timeout_s: LoadTimeoutS = 120.0,
) -> None:
    """Load MODEL:VERSION beside what serves (if it is not loaded) and have it classify
    --fraction of each --camera's frames off the champion's path; pairs and per-window
    agreement go to the shadow topic."""
    if fraction <= 0:
        raise typer.BadParameter("a fraction above 0 (stop a shadow with `shadow stop`)")
    _shadow(ref, camera, fraction, wait_s, load_timeout_s)


@shadow_app.command("stop")
def shadow_stop(
    ref: Ref,
    camera: ShadowCameras,
    wait_s: WaitS = 0.0,
    load_timeout_s: LoadTimeoutS = 120.0,
) -> None:
    """Stop MODEL:VERSION shadowing --camera; a version no camera uses any more is
    drained, then unloaded."""
    _shadow(ref, camera, 0.0, wait_s, load_timeout_s)


@shadow_app.command("status")
def shadow_status(
    ref: Annotated[str, typer.Argument(help="MODEL[:VERSION]; default: every shadow.")] = "",
    camera: Annotated[
        list[str] | None, typer.Option("--camera", help="Only these cameras.")
    ] = None,
) -> None:
    """Each shadowed camera: its candidate and fraction, what answers for it, and
    whether Triton serves the candidate."""
    from camstream import rollout

    config = settings()
    routes = rollout.CameraRoutes(config.feast_repo_path)
    rows = {str(r["camera_id"]): r for r in routes.rows()}
    fleet = rollout.read_fleet(config, routes)
    name, _, number = ref.partition(":")
    triton = rollout.Triton(config.triton_grpc)
    try:
        live = triton.live()
        shown = [
            (cam, model, version)
            for cam, (model, version) in sorted(fleet.shadows.items())
            if (not camera or cam in camera)
            and (not name or model == name)
            and (not number or str(version) == number)
        ]
        for cam, model, version in shown:
            state = "Triton not answering"
            if live:
                state = "ready" if version in triton.ready_versions(model) else "NOT LOADED"
            fraction = float(rows[cam].get("shadow_fraction") or 0.0)
            out(
                f"{cam}: shadow {model}:{version} x{fraction:.2f} "
                f"beside {fleet.label(cam)} ({state})"
            )
        if not shown:
            out("no camera is shadowed" + (f" by {ref}" if ref else ""))
    finally:
        triton.close()


def _shadow(ref: str, cameras: list[str], fraction: float, wait_s: float, timeout_s: float) -> None:
    from camstream import rollout

    parsed = rollout.parse_ref(ref)
    if parsed is None:
        raise typer.BadParameter(f"name the version: {ref}:NUMBER", param_hint="REF")
    model, version = parsed
    config = settings()
    if fraction > 0 and not (config.model_repo / model / str(version)).is_dir():
        raise typer.BadParameter(
            f"{ref} is not installed in {config.model_repo}: `camstream promote {ref} --no-live`"
            " installs a registered version without serving it",
            param_hint="REF",
        )
    verb = "start" if fraction > 0 else "stop"
    command = " ".join(["camstream shadow", verb, ref, *(f"--camera {c}" for c in cameras)])
    routes = rollout.CameraRoutes(config.feast_repo_path)
    try:
        with rollout.rollout_lock(config.model_repo, wait_s, command):
            triton = rollout.Triton(config.triton_grpc)
            try:
                if not triton.live():
                    raise rollout.RolloutRefused(
                        "load: no live server",
                        f"Triton at {config.triton_grpc} did not answer: start the stack first",
                    )
                record = rollout.Rollout(
                    config, triton, routes, out, command, load_timeout_s=timeout_s
                ).shadow(model, version, cameras, fraction)
            finally:
                triton.close()
    except rollout.RolloutRefused as refused:
        out(f"refused: shadow {verb} {ref}: {refused}")
        raise typer.Exit(1) from None
    took = record["timings_s"]["total"]
    what = f"x{fraction:.2f}" if fraction > 0 else "stopped"
    out(f"shadow {ref} on {', '.join(sorted(cameras))}: {what} ({took:.1f} s)")
