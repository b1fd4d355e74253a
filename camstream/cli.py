"""`camstream`: the one command-line program. `camstream COMMAND --help` is the reference.

The CLI is the only place that wires the rooms together (producers, streams, training,
the local stack); each command imports what it needs when it runs.
"""

from __future__ import annotations

import json
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from camstream.settings import REPO_ROOT, Settings, load_settings

app = typer.Typer(
    name="camstream",
    help="Real-time image classification for camera feeds: Kafka, Faust, Triton, Feast.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
drift_app = typer.Typer(help="Drift reference profiles.", no_args_is_help=True)
app.add_typer(drift_app, name="drift")
bench_app = typer.Typer(
    help="Benchmarks: a table for people, or one JSON object with --json.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")


def _settings() -> Settings:
    from camstream.observability import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level)
    return settings


def _stop_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so loops can end and flush."""
    stop = threading.Event()

    def handler(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@app.command()
def setup() -> None:
    """Fetch Kafka's jars and the sample videos/photos, export the model, build its
    drift reference profile. Idempotent: cached steps return at once."""
    from camstream.stack.setup import prepare

    prepared = prepare(_settings())
    _out(f"set-up complete in {prepared.seconds:.1f}s")


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

    settings = _settings()
    stop = _stop_event()
    prepared = prepare(settings)
    cameras = sample_cameras(prepared.assets) if producers else []
    stack = LocalStack(settings, cameras, supervise=True)
    try:
        info = stack.start()
        _out(f"camstream stack up in {info.startup_s}s (state: {info.state_dir}/stack.json)")
        _out(f"  kafka bootstrap : {info.kafka_bootstrap}")
        _out(f"  triton grpc     : {info.triton_grpc}  (http {info.triton_http})")
        _out(f"  triton metrics  : http://127.0.0.1:{info.triton_metrics_port}/metrics")
        _out(f"  feast repo      : {info.feast_repo}")
        for name, port in info.metrics_ports.items():
            _out(f"  {name + ' metrics':<16}: http://127.0.0.1:{port}/metrics")
        for name, path in info.logs.items():
            _out(f"  {name + ' log':<16}: {path}")
        deadline = None if duration is None else time.monotonic() + duration
        summary = _follow(
            settings.model_copy(update={"kafka_bootstrap": info.kafka_bootstrap}),
            settings.predictions_topic,
            stop,
            deadline,
            quiet=quiet,
        )
        _out(f"predictions: {summary.line()}")
    finally:
        _out("stopping the stack ...")
        stack.stop()
        _out("stopped")


@app.command()
def status() -> None:
    """Print the running local stack's endpoints (from its state file) as JSON."""
    from dataclasses import asdict

    from camstream.stack.local import read_state, stack_running

    settings = load_settings()
    info = read_state(settings.state_dir)
    if info is None or not stack_running(info):
        _out(json.dumps({"running": False, "state_dir": str(settings.state_dir)}))
        raise typer.Exit(1)
    _out(json.dumps({"running": True, **asdict(info), "env": info.env()}, indent=2))


@app.command()
def worker() -> None:
    """Run a stream worker (Faust): frames -> Triton -> predictions, drift, DLQ."""
    import cv2

    from camstream.observability import serve_metrics
    from streams.app import run_worker

    settings = _settings()
    cv2.setNumThreads(1)
    serve_metrics(settings.metrics_port)
    run_worker(settings)


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
) -> None:
    """Publish camera frames to the frames topic until the sources end or SIGTERM.

    Prints one JSON object at the end: per camera, frames captured, published
    (acknowledged by the broker) and dropped by reason, and reconnects. Bad camera
    configuration or credentials the broker refuses stop it with the fix (exit 2)."""
    from camstream.cameras import CameraConfigError, camera_from_entry, load_cameras
    from camstream.observability import serve_metrics
    from producers.producer import ProducerFatalError, check_cameras, run_producers

    settings = _settings()
    try:
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
    except CameraConfigError as exc:
        _fail(f"camstream produce: {exc}")
    stop = _stop_event()
    serve_metrics(settings.metrics_port)
    try:
        stats = run_producers(settings, specs, stop, max_frames=max_frames)
    except ProducerFatalError as exc:
        _fail(f"camstream produce: {exc}")
    _out(json.dumps(stats.summary()))


def _fail(message: str, code: int = 2) -> NoReturn:
    sys.stderr.write(message + "\n")
    raise typer.Exit(code)


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="predictions, drift, frames.dlq, or a full name.")],
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest record.")] = False,
    count: Annotated[int | None, typer.Option(help="Stop after this many records.")] = None,
) -> None:
    """Print a topic's records as they flow, one line each."""
    settings = _settings()
    name = topic if topic.startswith(settings.topic_prefix) else settings.topic_prefix + topic
    _follow(settings, name, _stop_event(), None, from_beginning=from_beginning, count=count)


@dataclass
class FollowSummary:
    """What a follow saw: records, cameras, and end-to-end latencies of predictions."""

    records: int = 0
    cameras: set[str] = field(default_factory=set)
    first_s: float = 0.0
    last_s: float = 0.0
    end_to_end_ms: list[float] = field(default_factory=list)

    def line(self) -> str:
        span = self.last_s - self.first_s
        rate = (self.records - 1) / span if span > 0 else 0.0
        text = f"{self.records} records from {len(self.cameras)} cameras, {rate:.1f}/s"
        if len(self.end_to_end_ms) >= 2:
            q = statistics.quantiles(self.end_to_end_ms, n=100, method="inclusive")
            text += f"; end-to-end ms p50={q[49]:.0f} p95={q[94]:.0f} p99={q[98]:.0f}"
        return text


def _follow(
    settings: Settings,
    topic: str,
    stop: threading.Event,
    deadline: float | None,
    *,
    from_beginning: bool = False,
    count: int | None = None,
    quiet: bool = False,
) -> FollowSummary:
    import uuid

    from confluent_kafka import Consumer

    consumer = Consumer(
        settings.kafka_client_config(
            **{
                "group.id": f"camstream-tail-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest" if from_beginning else "latest",
                "enable.auto.commit": False,
            }
        )
    )
    consumer.subscribe([topic])
    summary = FollowSummary()
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            summary.last_s = time.monotonic()
            if not summary.records:
                summary.first_s = summary.last_s
            summary.records += 1
            summary.cameras.add((msg.key() or b"").decode(errors="replace"))
            line, e2e = _describe(msg.topic() or topic, msg.key(), msg.value(), msg.headers())
            if e2e is not None:
                summary.end_to_end_ms.append(e2e)
            if not quiet:
                _out(line)
            if count is not None and summary.records >= count:
                break
    finally:
        consumer.close()
    return summary


def _describe(
    topic: str, key: bytes | None, value: bytes | None, headers: Any
) -> tuple[str, float | None]:
    """One line for a record, and its end-to-end latency if it is a prediction."""
    camera = (key or b"").decode(errors="replace")
    try:
        record = json.loads(value or b"")
    except ValueError:
        meta = {k: bytes(v or b"").decode(errors="replace") for k, v in headers or []}
        return f"{topic} {camera} {len(value or b'')} bytes {json.dumps(meta)}", None
    if topic.endswith("predictions"):
        lat = record["latency"]
        line = (
            f"{camera:<12} seq={record['seq']} {record['label']:<24} "
            f"score={record['score']:.2f} enrich={record['enrichment']} "
            f"e2e={lat['end_to_end_ms']:.0f}ms infer={lat['infer_ms']:.0f}ms"
        )
        return line, float(lat["end_to_end_ms"])
    if topic.endswith("drift"):
        line = (
            f"{camera:<12} DRIFT={record['drift']} frames={record['frame_count']} "
            f"reasons={record['reasons']}"
        )
        return line, None
    return json.dumps(record), None


@app.command()
def schemas(
    out: Annotated[Path, typer.Option(help="Folder for the JSON Schemas.")] = REPO_ROOT / "schemas",
) -> None:
    """Write the JSON Schema of every published record (the consumers' contract)."""
    from camstream.records import write_schemas

    for path in write_schemas(out):
        _out(str(path))


@app.command()
def export() -> None:
    """Export the pretrained classifier to the Triton model repository (model env)."""
    from camstream.stack.assets import ensure_assets
    from camstream.stack.setup import ensure_model
    from camstream.stack.triton import locate_model_env

    settings = _settings()
    ensure_model(settings, locate_model_env(), ensure_assets(settings.cache_dir))
    _out(str(settings.model_repo / settings.model_name))


@drift_app.command("baseline")
def drift_baseline(
    sources: Annotated[list[Path], typer.Argument(help="Calibration videos or image folders.")],
    frames: Annotated[int, typer.Option(help="Frames sampled per video.")] = 200,
) -> None:
    """Build the reference profile of the current model version from real frames."""
    from camstream.stack.setup import run_in_model_env
    from camstream.stack.triton import locate_model_env

    settings = _settings()
    run_in_model_env(
        locate_model_env(),
        [
            "training.baseline",
            "--model",
            str(settings.model_repo / settings.model_name),
            "--out",
            str(settings.reference_profile_path),
            "--frames",
            str(frames),
            *map(str, sources),
        ],
        "build the drift reference profile",
    )
    _out(str(settings.reference_profile_path))


# -- cameras (producers) commands --

cameras_app = typer.Typer(
    help="Register cameras and their metadata in Feast (the worker sees changes at once).",
    no_args_is_help=True,
)
app.add_typer(cameras_app, name="cameras")
CamerasFile = Annotated[
    Path | None,
    typer.Option("--file", help="Also add to / remove from this cameras file (YAML)."),
]


@cameras_app.command("add")
def cameras_add(
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
    from camstream.cameras import (
        CameraConfigError,
        camera_from_entry,
        dump_cameras,
        load_cameras,
        source_kind,
    )
    from camstream.featurestore import open_store, upsert_cameras

    settings = _settings()
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
    try:
        camera = camera_from_entry(entry, camera_id)
        if file is not None:
            source_kind(camera.source)  # a camera written to a file must be producible
            others = [c for c in load_cameras(file) if c.id != camera_id] if file.exists() else []
            dump_cameras([*others, camera], file)
    except (CameraConfigError, ValueError) as exc:
        _fail(f"camstream cameras add: {exc}")
    upsert_cameras(open_store(settings.feast_repo_path), [camera])
    _out(f"registered {camera_id}" + (f" (and wrote {file})" if file else ""))


@cameras_app.command("list")
def cameras_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
) -> None:
    """The registered cameras and their metadata."""
    from camstream.featurestore import registered_cameras

    rows = registered_cameras(_settings().feast_repo_path)
    if as_json:
        _out(json.dumps(rows))
        return
    _out(f"{'camera':<24}{'site':<16}{'zone':<20}{'indoor':<8}threshold")
    for row in rows:
        _out(
            f"{row['camera_id']:<24}{row['site']:<16}{row['zone']:<20}"
            f"{row['indoor']!s:<8}{row['confidence_threshold']:.2f}"
        )


@cameras_app.command("remove")
def cameras_remove(
    camera_ids: Annotated[list[str], typer.Argument(help="Camera ids to unregister.")],
    file: CamerasFile = None,
) -> None:
    """Unregister cameras: the worker reports them as unknown (enrichment missing)."""
    from camstream.cameras import CameraConfigError, dump_cameras, load_cameras
    from camstream.featurestore import open_store, remove_cameras

    settings = _settings()
    removed = remove_cameras(open_store(settings.feast_repo_path), camera_ids)
    if file is not None and file.exists():
        try:
            kept = [c for c in load_cameras(file) if c.id not in camera_ids]
        except CameraConfigError as exc:
            _fail(f"camstream cameras remove: {exc}")
        dump_cameras(kept, file)
    unknown = sorted(set(camera_ids) - set(removed))
    _out(f"removed {removed}" + (f"; not registered: {unknown}" if unknown else ""))
    if unknown and not removed:
        raise typer.Exit(1)


# -- end of cameras commands --

# -- bench commands --


@bench_app.command("pipeline")
def bench_pipeline(
    cameras: Annotated[int, typer.Option(help="Cameras the frames are spread over.")] = 4,
    frames: Annotated[int, typer.Option(help="Frames per throughput round.")] = 480,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds; figures are medians.")] = 3,
    latency_s: Annotated[float, typer.Option(help="Length of the latency run.")] = 20.0,
    load: Annotated[float, typer.Option(help="Latency run's rate, x max throughput.")] = 0.7,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Frames through the real stack vs. an in-process onnxruntime loop and bare Triton:
    throughput, the ratios, and end-to-end latency percentiles at a share of the max."""
    from streams.bench import BenchConfig, run, table

    settings = _settings()
    figures = run(
        settings,
        BenchConfig(cameras=cameras, frames=frames, rounds=rounds, latency_s=latency_s, load=load),
    )
    _out(json.dumps(figures) if as_json else table(figures))


@bench_app.command("producer")
def bench_producer(
    frames: Annotated[int, typer.Option(help="Frames per round and side.")] = 300,
    rounds: Annotated[int, typer.Option(help="Rounds (medians are reported).")] = 5,
    bootstrap: Annotated[
        str | None, typer.Option(help="A broker to use (default: a temporary local one).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Producer frames/s per core on 720p sources, and the ratio to bare OpenCV
    read+encode measured in the same run (goal >= 0.8)."""
    from producers.bench import bench_producer as run_bench
    from producers.bench import format_table

    settings = _settings()
    report = run_bench(settings, frames=frames, rounds=rounds, bootstrap=bootstrap)
    _out(json.dumps(report) if as_json else format_table(report))


@bench_app.command("drift")
def bench_drift(
    windows: Annotated[int, typer.Option(help="Undisturbed windows per camera.")] = 60,
    trials: Annotated[int, typer.Option(help="Start positions per injected shift.")] = 8,
    darken: Annotated[float, typer.Option(help="Share of brightness removed.")] = 0.4,
    blur_sigma: Annotated[float, typer.Option(help="Gaussian blur sigma, camera pixels.")] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Replay the sample videos through the drift detector: false alarms on undisturbed
    streams, and detection delay of injected shifts (dark, blur, switch, frozen)."""
    from streams.drift_bench import run, table

    figures = run(_settings(), windows, trials, darken, blur_sigma)
    _out(json.dumps(figures) if as_json else table(figures))


# -- end of bench commands --


def main() -> None:
    app()
