"""`camstream bench pipeline|producer|drift|train|triton|rollout|view`: the options, and
a table or --json of what the benchmarks package measures (the measuring lives there)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from camstream.cli.common import new_app, out, settings

app = new_app(
    help="Benchmarks: a table for people, or one JSON object with --json.", no_args_is_help=True
)
AsJson = Annotated[bool, typer.Option("--json", help="One JSON object.")]


@app.command("pipeline")
def pipeline(
    cameras: Annotated[int, typer.Option(help="Cameras the frames are spread over.")] = 4,
    frames: Annotated[int, typer.Option(help="Frames per throughput round.")] = 480,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds; figures are medians.")] = 3,
    latency_s: Annotated[float, typer.Option(help="Length of the latency run.")] = 20.0,
    load: Annotated[float, typer.Option(help="Latency run's rate, x max throughput.")] = 0.7,
    variants: Annotated[
        bool,
        typer.Option(help="Also two Triton servers, and one serving an INT8 variant (each round)."),
    ] = True,
    as_json: AsJson = False,
) -> None:
    """Frames through the real stack vs. an in-process onnxruntime loop and bare Triton:
    throughput, the ratios, and end-to-end latency percentiles at a share of the max."""
    from benchmarks.pipeline import BenchConfig, run, table

    config = BenchConfig(
        cameras=cameras,
        frames=frames,
        rounds=rounds,
        latency_s=latency_s,
        load=load,
        variants=variants,
    )
    figures = run(settings(), config)
    out(json.dumps(figures) if as_json else table(figures))


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise typer.BadParameter(f"{text!r}: give positive integers separated by commas")
    return values


@app.command("triton")
def triton(
    concurrency: Annotated[
        str, typer.Option(help="Callers with a request in flight, comma-separated.")
    ] = "1,2,4,8,16",
    batch: Annotated[str, typer.Option(help="Images per request, comma-separated.")] = "1,4,8,16",
    seconds: Annotated[float, typer.Option(help="Seconds measured per cell.")] = 3.0,
    p99_ms: Annotated[
        float, typer.Option("--p99-ms", help="The best setting's p99 bound (ms).")
    ] = 25.0,
    running: Annotated[
        bool,
        typer.Option(
            "--running/--local",
            help="Measure the running server at CAMSTREAM_TRITON_GRPC (or --address), "
            "or start a local one on the model repository for the run.",
        ),
    ] = False,
    address: Annotated[
        str | None, typer.Option(help="A running server's gRPC address (implies --running).")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """One Triton server's images/s and request latency p50/p95/p99 over client
    concurrency x batch size, naming the fastest setting within the p99 bound."""
    from benchmarks.triton import SweepConfig, run, table

    if seconds <= 0:
        raise typer.BadParameter("--seconds must be positive")
    loaded = settings()
    target = address or (loaded.triton_grpc if running else None)
    config = SweepConfig(
        concurrency=_int_list(concurrency),
        batch=_int_list(batch),
        seconds=seconds,
        p99_ms=p99_ms,
        address=target,
    )
    figures = run(loaded, config)
    out(json.dumps(figures) if as_json else table(figures))


@app.command("producer")
def producer(
    frames: Annotated[int, typer.Option(help="Frames per round and side.")] = 300,
    rounds: Annotated[int, typer.Option(help="Rounds (medians are reported).")] = 5,
    bootstrap: Annotated[
        str | None, typer.Option(help="A broker to use (default: a temporary local one).")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Producer frames/s per core on 720p sources, and the ratio to bare OpenCV
    read+encode measured in the same run (goal >= 0.8)."""
    from benchmarks.producer import bench_producer, format_table

    report = bench_producer(settings(), frames=frames, rounds=rounds, bootstrap=bootstrap)
    out(json.dumps(report) if as_json else format_table(report))


@app.command("drift")
def drift(
    windows: Annotated[int, typer.Option(help="Undisturbed windows per camera.")] = 60,
    trials: Annotated[int, typer.Option(help="Start positions per injected shift.")] = 8,
    darken: Annotated[float, typer.Option(help="Share of brightness removed.")] = 0.4,
    blur_sigma: Annotated[float, typer.Option(help="Gaussian blur sigma, camera pixels.")] = 3.0,
    as_json: AsJson = False,
) -> None:
    """Replay the sample videos through the drift detector: false alarms on undisturbed
    streams, and detection delay of injected shifts (dark, blur, switch, frozen)."""
    from benchmarks.drift import run, table

    figures = run(settings(), windows, trials, darken, blur_sigma)
    out(json.dumps(figures) if as_json else table(figures))


@app.command("train")
def train(
    cold: Annotated[
        bool,
        typer.Option(
            "--cold/--warm", help="Time the first training from an empty embedding cache."
        ),
    ] = True,
    hflip: Annotated[
        bool, typer.Option(help="Flip augmentation (doubles the train embeddings).")
    ] = False,
    fine_tune_epochs: Annotated[int, typer.Option(help="Epochs of conv-head fine-tuning.")] = 3,
    as_json: AsJson = False,
) -> None:
    """Training on the full Fashion-MNIST (60k train, 10k test): wall time per stage,
    embedding throughput, and test macro-F1 of the majority class, logistic regression on
    pixels, the head on frozen features and the fine-tuned model (goal: >= 0.90 with
    the first training within 15 minutes)."""
    from benchmarks.train import BenchTrainConfig, run, table

    config = BenchTrainConfig(
        cold=cold, augment=["hflip"] if hflip else [], fine_tune_epochs=fine_tune_epochs
    )
    figures = run(settings(), config)
    out(json.dumps(figures) if as_json else table(figures))


@app.command("rollout")
def rollout(
    ref: Annotated[str, typer.Argument(help="MODEL:VERSION to promote, then roll back.")],
    camera: Annotated[
        list[str], typer.Option("--camera", help="Registered cameras that publish (repeat).")
    ],
    shadow: Annotated[
        str, typer.Option(help="MODEL:VERSION that shadows the first camera (default: REF).")
    ] = "",
    fps: Annotated[float, typer.Option(help="Frames per second per camera.")] = 4.0,
    shadow_s: Annotated[float, typer.Option(help="Seconds with the shadow off, then on.")] = 8.0,
    as_json: AsJson = False,
) -> None:
    """On the running stack: frames failed, late and missing during a promote and a
    rollback (goal 0), the time to every camera switched, and the champion's p50/p99
    with the shadow off vs on."""
    from benchmarks.rollout import RolloutBenchConfig, run, table

    config = RolloutBenchConfig(
        ref=ref, cameras=tuple(camera), shadow_ref=shadow, fps=fps, shadow_s=shadow_s
    )
    figures = run(settings(), config)
    out(json.dumps(figures) if as_json else table(figures))


@app.command("view")
def view(
    cameras: Annotated[int, typer.Option(help="Cameras publishing at once.")] = 32,
    clients: Annotated[int, typer.Option(help="Pages (event streams) open at once.")] = 20,
    duration_s: Annotated[float, typer.Option(help="Seconds of load measured.")] = 60.0,
    fps: Annotated[float, typer.Option(help="Frames per second per camera.")] = 1.0,
    as_json: AsJson = False,
) -> None:
    """The live view under load on a local stack: event latency (prediction published to
    tile update, p50/p99) with many cameras and pages open, and the view's memory."""
    from benchmarks.view import bench_view, table

    figures = bench_view(
        settings(), cameras=cameras, clients=clients, duration_s=duration_s, fps=fps
    )
    out(json.dumps(figures) if as_json else table(figures))
