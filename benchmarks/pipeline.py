"""`camstream bench pipeline`: the real stack's throughput and latency, beside what a user
would otherwise write, measured in one run.

Figures, each the median over ``rounds`` rounds that run interleaved (so the machine's
noise falls on all of them alike):

- baseline_fps: the strongest in-process program: every candidate of
  benchmarks.baseline (serial batch 1; a thread per core with its own one-thread
  onnxruntime session, batch 1, 4 or 8; a decode pool ahead of one batched session)
  decodes, preprocesses (camstream.imaging) and classifies as many frames as a pipeline
  round with the same ONNX model, in the model environment; the fastest median is the
  baseline, and the figures name every candidate, so "strongest" is checked each run.
- triton_fps: bare Triton, the same model input sent over async gRPC, as many
  requests in flight as the worker keeps.
- pipeline_fps: frames through the whole stack (Kafka -> worker -> Triton -> Feast ->
  predictions), a backlog of pre-encoded JPEG frames (real video) published at once:
  from the first frame sent to the last prediction published.
- At ``load`` x pipeline_fps, paced over ``cameras`` cameras for ``latency_s``: the
  end-to-end latency (capture to prediction published) percentiles.
- Serving variants (``variants``), each round after the FP32 one-server round, through
  the same worker: two Triton servers on the same repository (the worker's pool
  spreads requests over both), and one server serving an INT8 variant of the model
  (onnxruntime static quantization by training.quantize, made for this run in a copy
  of the repository with its agreement gate opened: a speed figure only; the
  quantize report says whether the gate would serve it). Their pipeline fps, each
  against the in-process FP32 baseline and the one-server FP32 pipeline.
- What the yardstick itself costs: the load generator (this process's Kafka producer)
  publishing alone, to a topic no worker reads, in a burst and paced at the load rate:
  its CPU per frame and the broker's; and per process (this one, Kafka, the worker,
  Triton, everything else on the machine) the CPU per frame during the max and the
  load runs, so a figure disturbed by the generator or by other work shows it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from benchmarks.cpu import CpuMeter, cores
from camstream import modelrepo
from camstream.imaging import encode_jpeg, jpeg_dimensions, jpeg_to_model_input
from camstream.records import FrameHeaders
from camstream.settings import REPO_ROOT, Settings


@dataclass(frozen=True)
class BenchConfig:
    cameras: int = 4
    frames: int = 480
    rounds: int = 3
    latency_s: float = 20.0
    load: float = 0.7
    distinct_frames: int = 120
    generator_s: float = 10.0  # the load generator alone, paced at the load rate
    variants: bool = True  # also two servers, and INT8 (see the module's docstring)


VARIANTS = {
    "fp32_x1": "1 Triton server, FP32 (the rounds above)",
    "fp32_x2": "2 Triton servers, FP32, the worker's pool spreading requests",
    "int8_x1": "1 Triton server serving the INT8 variant",
}


def _video_frames(video: Path, count: int) -> list[bytes]:
    """Pre-encoded JPEG frames of a real video (encoding is not what we measure)."""
    capture = cv2.VideoCapture(str(video))
    frames: list[bytes] = []
    try:
        while len(frames) < count:
            ok, image = capture.read()
            if not ok:
                break
            frames.append(encode_jpeg(np.asarray(image, dtype=np.uint8), 85))
    finally:
        capture.release()
    if not frames:
        raise RuntimeError(f"no frames could be read from {video}")
    return frames


def _quantiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(q[49], 1), "p95": round(q[94], 1), "p99": round(q[98], 1)}


class _Predictions:
    """Reads the (fresh stack's) predictions topic from its start, in a thread."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )
        self.consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
        )
        self.records: list[dict[str, Any]] = []
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.halt.is_set():
            msg = self.consumer.poll(0.2)
            value = msg.value() if msg is not None and not msg.error() else None
            if value:
                self.records.append(json.loads(value))

    def wait_for(self, prefix: str, count: int, timeout_s: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            mine = [r for r in self.records if r["camera_id"].startswith(prefix)]
            if len(mine) >= count:
                return mine
            time.sleep(0.05)
        raise RuntimeError(f"only {len(mine)} of {count} predictions for {prefix} arrived")

    def close(self) -> None:
        self.halt.set()
        self.thread.join(5)
        self.consumer.close()


def _publish(
    producer: Producer,
    topic: str,
    frames: list[bytes],
    sizes: list[tuple[int, int]],
    cameras: list[str],
    count: int,
    rate: float | None,
) -> None:
    """``count`` frames round-robin over ``cameras``; at ``rate`` frames/s, or at once."""
    started = time.perf_counter()
    seqs = dict.fromkeys(cameras, 0)
    for i in range(count):
        if rate:
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        camera = cameras[i % len(cameras)]
        seqs[camera] += 1
        width, height = sizes[i % len(frames)]
        meta = FrameHeaders(camera, seqs[camera], time.time_ns() // 1_000_000, width, height)
        headers: list[tuple[str, str | bytes | None]] = [*meta.to_kafka()]
        while True:
            try:
                producer.produce(
                    topic,
                    value=frames[i % len(frames)],
                    key=camera.encode(),
                    headers=headers,
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(30)


async def _bare_triton(
    address: str, model: str, images: np.ndarray, batch: int, inflight: int
) -> float:
    from tritonclient.grpc import InferInput
    from tritonclient.grpc.aio import InferenceServerClient

    client = InferenceServerClient(url=address)
    chunks = [images[i : i + batch] for i in range(0, len(images), batch)]
    queue: asyncio.Queue[np.ndarray] = asyncio.Queue()
    for chunk in chunks:
        queue.put_nowait(chunk)

    async def worker() -> None:
        while not queue.empty():
            chunk = queue.get_nowait()
            request = InferInput(modelrepo.IMAGE, list(chunk.shape), "UINT8")
            request.set_data_from_numpy(chunk)
            await client.infer(model, [request])

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        return len(images) / (time.perf_counter() - started)
    finally:
        await client.close()


def _baseline(model_env_python: Path, model: Path, frames_dir: Path, count: int) -> dict[str, Any]:
    """One round of every in-process candidate (benchmarks.baseline, model env)."""
    environ = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(
        [
            str(model_env_python),
            "-m",
            "benchmarks.baseline",
            "--model",
            str(model),
            "--frames",
            str(frames_dir),
            "--cores",
            str(cores()),
            "--rounds",
            "1",
            "--count",
            str(count),
        ],
        cwd=REPO_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"baseline failed:\n{result.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def strongest_baseline(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each candidate's median over the rounds; the fastest is the baseline."""
    candidates: dict[str, Any] = {}
    for name, first in rounds[0]["candidates"].items():
        fps = [float(r["candidates"][name]["fps"]) for r in rounds]
        candidates[name] = {
            "fps": round(statistics.median(fps), 1),
            "fps_rounds": [round(x, 1) for x in fps],
            "what": first["what"],
        }
    best = max(candidates, key=lambda name: float(candidates[name]["fps"]))
    return {"best": best, "cores": rounds[0]["cores"], "candidates": candidates}


def _generator_alone(
    producer: Producer,
    topic: str,
    frames: list[bytes],
    sizes: list[tuple[int, int]],
    meter: CpuMeter,
    cameras: int,
    burst: int,
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    """The load generator publishing to ``topic``, which no worker reads: in a burst of
    ``burst`` frames (as the max rounds publish), then paced at ``rate`` for
    ``seconds`` (as the load run does). CPU per frame of this process and the broker."""
    figures: dict[str, Any] = {}
    names = [f"gen-{i}" for i in range(cameras)]
    for case, count, pace in (("burst", burst, None), ("paced", int(rate * seconds), rate)):
        meter.start()
        _publish(producer, topic, frames, sizes, names, count, pace)
        cpu = meter.stop(count)
        figures[case] = {
            "frames": count,
            "rate_fps": round(rate, 1) if pace else None,
            "cpu_ms_per_frame": cpu["bench"],
            "broker_cpu_ms_per_frame": cpu["kafka"],
            "other_cpu_ms_per_frame": cpu["other"],
        }
    return figures


def _int8_repository(
    settings: Settings, root: Path, sources: list[Path]
) -> tuple[Path, dict[str, Any]]:
    """A copy of the served model in ``root`` whose version also holds an INT8 variant,
    made and measured by training.quantize with its agreement gate opened (a copy for
    this benchmark only: what serves for real stays behind the gate). Returns the
    repository and the quantize report (agreement, speed-up, the real gate's verdict)."""
    from camstream.stack.setup import run_in_model_env
    from camstream.stack.triton import locate_model_env
    from training.quantize import MIN_AGREEMENT, REPORT_FILE

    source = modelrepo.model_dir(settings.model_repo, settings.model_name)
    target = root / "int8-repo" / settings.model_name
    shutil.copytree(
        source,
        target,
        ignore=shutil.ignore_patterns("model_int8.onnx*", REPORT_FILE, "__pycache__"),
    )
    version = settings.model_version_dir().name
    onnx = target / version / modelrepo.ONNX_FILE
    args = ["training.quantize", "--onnx", str(onnx), "--min-agreement", "0"]
    run_in_model_env(locate_model_env(), [*args, "--frames", *map(str, sources)], "int8 variant")
    report: dict[str, Any] = json.loads((onnx.parent / REPORT_FILE).read_text())
    report["would_serve"] = report["agreement"] >= MIN_AGREEMENT
    return target.parent, report


def _pool_health(stack: Any) -> dict[str, float]:
    """The first worker's view of each Triton server: 1 healthy, 0 ejected."""
    from prometheus_client.parser import text_string_to_metric_families

    health: dict[str, float] = {}
    for family in text_string_to_metric_families(stack.worker_metrics()):
        for sample in family.samples:
            if sample.name == "camstream_worker_triton_server_healthy":
                health[sample.labels["server"]] = sample.value
    return health


def _wait_healthy(stack: Any, addresses: list[str], timeout_s: float = 60.0) -> None:
    """Until the worker's pool sends requests to every one of ``addresses`` again."""
    deadline = time.monotonic() + timeout_s
    while not all(_pool_health(stack).get(a) == 1.0 for a in addresses):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker did not take back {addresses}: {_pool_health(stack)}")
        time.sleep(0.2)


def _start_serving(stack: Any, index: int, repo: Path, precision: str) -> None:
    """Start the stack's Triton server ``index`` on ``repo`` at ``precision`` (its ports
    as before, so the worker's pool takes it back); checks the model it loaded."""
    from camstream.stack.process import log_size

    server = stack.tritons[index]
    server.model_repository = repo.resolve()
    server.environment = {"CAMSTREAM_MODEL_PRECISION": precision}
    offset = log_size(server.log_path)
    server.start()
    with server.log_path.open("rb") as log:
        log.seek(offset)
        said = log.read().decode(errors="replace")
    wanted = "model_int8.onnx on" if precision == "int8" else "model.onnx on"
    if wanted not in said:
        raise RuntimeError(
            f"Triton {server.grpc_address} did not load {wanted!r}: {server.log_path}"
        )


def run(settings: Settings, config: BenchConfig) -> dict[str, Any]:
    from camstream.stack.local import LocalStack
    from camstream.stack.setup import prepare
    from camstream.stack.triton import locate_model_env

    prepared = prepare(settings)
    frames = _video_frames(prepared.assets.vtest_video, config.distinct_frames)
    sizes = [jpeg_dimensions(f) for f in frames]
    images = np.stack(
        [jpeg_to_model_input(f, w, h) for f, (w, h) in zip(frames, sizes, strict=True)]
    )
    bare_images = np.concatenate([images] * max(1, config.frames // len(images)))
    model_onnx = settings.model_version_dir() / modelrepo.ONNX_FILE
    env = locate_model_env()
    with tempfile.TemporaryDirectory(prefix="camstream-bench-") as tmp:
        frames_dir = Path(tmp) / "frames"
        frames_dir.mkdir()
        for i, jpeg in enumerate(frames):
            (frames_dir / f"{i:04d}.jpg").write_bytes(jpeg)
        stack_settings = settings.model_copy(update={"state_dir": Path(tmp) / "state"})
        int8_repo, quantized = None, None
        if config.variants:
            videos = [prepared.assets.vtest_video, prepared.assets.bikes_video]
            int8_repo, quantized = _int8_repository(settings, Path(tmp), videos)
        stack = LocalStack(stack_settings, tritons=2 if config.variants else 1)
        info = stack.start()
        first = stack.tritons[0].grpc_address
        if config.variants:  # the FP32 rounds run on the first server alone
            stack.tritons[1].stop()
        generator_topic = f"{settings.topic_prefix}bench.generator"
        assert stack.kafka is not None
        stack.kafka.create_topics([generator_topic], partitions=settings.topic_partitions)
        producer = Producer(
            {"bootstrap.servers": info.kafka_bootstrap, "linger.ms": 5, "acks": "all"}
        )
        reader = _Predictions(
            info.kafka_bootstrap, settings.predictions_topic, settings.topic_partitions
        )
        batch = max(1, settings.batch_max // settings.infer_inflight)
        inflight = settings.infer_inflight * settings.pipeline_depth
        baseline: list[dict[str, Any]] = []
        bare, pipeline, max_cpu, baseline_cpu = [], [], [], []
        variant_fps: dict[str, list[float]] = {"fp32_x2": [], "int8_x1": []}

        def through(producer: Producer, prefix: str) -> float:
            """Pipeline fps of one throughput round under ``prefix``'s cameras."""
            cameras = [f"{prefix}{i}" for i in range(config.cameras)]
            started_ms = time.time_ns() // 1_000_000
            _publish(producer, settings.frames_topic, frames, sizes, cameras, config.frames, None)
            done = reader.wait_for(prefix, config.frames, 300)
            last_ms = max(p["published_ts_ms"] for p in done)
            return float(config.frames / ((last_ms - started_ms) / 1000))

        def meter() -> CpuMeter:
            # Each service runs in its own process group, led by the pid it was started
            # as (read afresh: a variant round restarts the first server).
            assert stack.kafka is not None
            pids = {"kafka": stack.kafka.pid, "triton": stack.tritons[0].pid}
            return CpuMeter({**pids, "worker": stack.workers[0].pid})

        try:
            # Warm the path (first batches pay connection set-up and caches).
            warm = [f"warm-{i}" for i in range(config.cameras)]
            _publish(producer, settings.frames_topic, frames, sizes, warm, 40, None)
            reader.wait_for("warm-", 40, 120)
            for r in range(config.rounds):
                cpu = meter()
                cpu.start()
                baseline.append(
                    _baseline(env.bin_dir / "python", model_onnx, frames_dir, config.frames)
                )
                baseline_cpu.append(cpu.stop(config.frames * len(baseline[-1]["candidates"])))
                bare.append(
                    asyncio.run(
                        _bare_triton(first, settings.model_name, bare_images, batch, inflight)
                    )
                )
                cpu.start()
                pipeline.append(through(producer, f"max{r}-"))
                max_cpu.append(cpu.stop(config.frames))
                if int8_repo is not None:
                    one, two = stack.tritons
                    _start_serving(stack, 1, settings.model_repo, "fp32")
                    _wait_healthy(stack, [one.grpc_address, two.grpc_address])
                    variant_fps["fp32_x2"].append(through(producer, f"two{r}-"))
                    # INT8 on the second server alone: the first stops, the worker's
                    # pool ejects it at its first refused request.
                    two.stop()
                    one.stop()
                    _start_serving(stack, 1, int8_repo, "int8")
                    _wait_healthy(stack, [two.grpc_address])
                    variant_fps["int8_x1"].append(through(producer, f"int8{r}-"))
                    two.stop()
                    _start_serving(stack, 0, settings.model_repo, "fp32")
                    _wait_healthy(stack, [one.grpc_address])
            max_fps = statistics.median(pipeline)
            rate = config.load * max_fps
            generator = _generator_alone(
                producer,
                generator_topic,
                frames,
                sizes,
                meter(),
                config.cameras,
                config.frames,
                rate,
                config.generator_s,
            )
            count = int(rate * config.latency_s)
            cameras = [f"load-{i}" for i in range(config.cameras)]
            cpu = meter()
            cpu.start()
            _publish(producer, settings.frames_topic, frames, sizes, cameras, count, rate)
            loaded = reader.wait_for("load-", count, 120)
            load_cpu = cpu.stop(count)
            e2e = [float(p["latency"]["end_to_end_ms"]) for p in loaded]
            span_s = (
                max(p["published_ts_ms"] for p in loaded)
                - min(p["published_ts_ms"] for p in loaded)
            ) / 1000
        finally:
            producer.flush(10)
            del producer  # its client must go before the broker does
            reader.close()
            stack.stop()
    strongest = strongest_baseline(baseline)
    best = strongest["candidates"][strongest["best"]]
    baseline_fps = float(best["fps"])
    triton_fps = statistics.median(bare)
    machine = strongest["cores"]
    # The generator's share of the machine: its CPU per frame at the rate it ran.
    burst_ms, paced_ms = (generator[c]["cpu_ms_per_frame"] for c in ("burst", "paced"))
    generator["share_of_machine_at_max"] = round(burst_ms * max_fps / 1000 / machine, 3)
    generator["share_of_machine_at_load"] = round(paced_ms * rate / 1000 / machine, 3)
    variants: dict[str, Any] = {}
    if quantized is not None:
        rounds = {"fp32_x1": pipeline, **variant_fps}
        for name, fps_rounds in rounds.items():
            fps = statistics.median(fps_rounds)
            variants[name] = {
                "what": VARIANTS[name],
                "fps": round(fps, 1),
                "fps_rounds": [round(x, 1) for x in fps_rounds],
                "vs_baseline": round(fps / baseline_fps, 3),
                "vs_fp32_x1": round(fps / max_fps, 3),
            }
        variants["int8_x1"]["quantize"] = {
            "agreement": quantized["agreement"],
            "check_frames": quantized["check_frames"],
            "would_serve": quantized["would_serve"],
            "offline_speedup": quantized["timing"]["speedup"],
        }
    return {
        "cameras": config.cameras,
        "frames_per_round": config.frames,
        "rounds": config.rounds,
        "frame_size": f"{sizes[0][0]}x{sizes[0][1]}",
        "baseline_fps": round(baseline_fps, 1),
        "baseline_fps_rounds": best["fps_rounds"],
        "baseline": strongest,
        "triton_fps": round(triton_fps, 1),
        "triton_fps_rounds": [round(x, 1) for x in bare],
        "pipeline_fps": round(max_fps, 1),
        "pipeline_fps_rounds": [round(x, 1) for x in pipeline],
        "pipeline_vs_baseline": round(max_fps / baseline_fps, 3),
        "triton_vs_baseline": round(triton_fps / baseline_fps, 3),
        "pipeline_vs_triton": round(max_fps / triton_fps, 3),
        "load": config.load,
        "load_rate_fps": round(rate, 1),
        "load_achieved_fps": round((len(loaded) - 1) / span_s, 1) if span_s > 0 else 0.0,
        "load_frames": len(loaded),
        "end_to_end_ms": _quantiles(e2e),
        "stages_ms": stage_quantiles([p["latency"] for p in loaded]),
        "generator": generator,
        "variants": variants,
        "cpu_ms_per_frame": {
            "baseline": _median_of(baseline_cpu),
            "max": _median_of(max_cpu),
            "load": load_cpu,
        },
        # Another program's CPU during each round: above ~0.1 a round was disturbed.
        "other_cores_rounds": {
            "baseline": [c["other_cores"] for c in baseline_cpu],
            "max": [c["other_cores"] for c in max_cpu],
        },
        "settings": {
            "batch_max": settings.batch_max,
            "batch_within_s": settings.batch_within_s,
            "infer_inflight": settings.infer_inflight,
            "pipeline_depth": settings.pipeline_depth,
        },
    }


STAGES = ("queue", "decode", "enrich", "infer")


def stage_quantiles(latencies: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Where the end-to-end time of the load run went, per stage the worker reports
    (queue: Kafka timestamp to the worker taking the batch; decode and the Feast read
    run side by side, then infer), and ``rest``: what is left of end to end, that is
    the wait for earlier batches, publishing, and the capture-to-Kafka hop."""
    out = {name: _quantiles([float(t[f"{name}_ms"]) for t in latencies]) for name in STAGES}
    rest = [
        float(t["end_to_end_ms"])
        - float(t["queue_ms"])
        - max(float(t["decode_ms"]), float(t["enrich_ms"]))
        - float(t["infer_ms"])
        for t in latencies
    ]
    out["rest"] = _quantiles(rest)
    return out


def _median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in rounds), 2) for key in rounds[0]}


def table(figures: dict[str, Any]) -> str:
    e2e = figures["end_to_end_ms"]
    strongest = figures["baseline"]
    rows = [
        (
            f"in-process baseline: {strongest['best']}",
            f"{figures['baseline_fps']:.1f} fps",
            "1.000",
        ),
        (
            "bare Triton (gRPC)",
            f"{figures['triton_fps']:.1f} fps",
            f"{figures['triton_vs_baseline']:.3f}",
        ),
        (
            "pipeline (Kafka->worker->Triton)",
            f"{figures['pipeline_fps']:.1f} fps",
            f"{figures['pipeline_vs_baseline']:.3f}",
        ),
        (
            f"end-to-end at {figures['load']:.0%} ({figures['load_achieved_fps']} fps)",
            f"p50 {e2e['p50']} / p95 {e2e['p95']} / p99 {e2e['p99']} ms",
            "",
        ),
    ]
    stages = figures.get("stages_ms") or {}
    if stages:
        rows.append(
            (
                "  of which (p50 / p99 ms)",
                ", ".join(f"{k} {v['p50']}/{v['p99']}" for k, v in stages.items()),
                "",
            )
        )
    variants = figures.get("variants") or {}
    for name in ("fp32_x2", "int8_x1"):
        if name in variants:
            row = variants[name]
            rows.append(
                (
                    f"pipeline, {row['what']}",
                    f"{row['fps']:.1f} fps ({row['vs_fp32_x1']:.3f}x of 1 server FP32)",
                    f"{row['vs_baseline']:.3f}",
                )
            )
    width = max(len(r[0]) for r in rows)
    lines = [f"{'what':<{width}}  {'figure':<34}  vs baseline"]
    lines += [f"{a:<{width}}  {b:<34}  {c}" for a, b, c in rows]
    lines.append(
        f"medians of {figures['rounds']} interleaved rounds; {figures['cameras']} "
        f"cameras, {figures['frames_per_round']} frames ({figures['frame_size']})"
    )
    lines.append(
        f"baseline: the fastest of {len(strongest['candidates'])} in-process candidates "
        f"on {strongest['cores']} cores (fps, median):"
    )
    for name, row in sorted(
        strongest["candidates"].items(), key=lambda item: -float(item[1]["fps"])
    ):
        mark = "*" if name == strongest["best"] else " "
        lines.append(f" {mark} {name:<12} {row['fps']:>7.1f}  {row['what']}")
    if "int8_x1" in variants:
        q = variants["int8_x1"]["quantize"]
        gate = "would serve it" if q["would_serve"] else "refuses it for serving"
        lines.append(
            f"INT8 variant: top-1 agreement with FP32 {q['agreement']:.3f} on "
            f"{q['check_frames']} real frames (the gate {gate}); offline speed-up "
            f"{q['offline_speedup']:.2f}x at batch 8, one thread"
        )
    generator = figures["generator"]
    lines.append(
        f"load generator alone: {generator['burst']['cpu_ms_per_frame']} ms CPU/frame "
        f"in a burst ({generator['share_of_machine_at_max']:.1%} of the machine at max "
        f"rate), {generator['paced']['cpu_ms_per_frame']} ms paced "
        f"({generator['share_of_machine_at_load']:.1%} at the load rate); broker "
        f"{generator['burst']['broker_cpu_ms_per_frame']} ms/frame"
    )
    for run_name, cpu in figures["cpu_ms_per_frame"].items():
        parts = ", ".join(f"{k} {v}" for k, v in cpu.items() if not k.endswith("_cores"))
        lines.append(
            f"CPU ms/frame during the {run_name} run: {parts} ({cpu['busy_cores']} cores "
            f"busy, {cpu['stolen_cores']} stolen by the host)"
        )
    other = figures["other_cores_rounds"]
    lines.append(
        f"cores other programs took, per round: baseline {other['baseline']}, "
        f"pipeline {other['max']} (above ~0.1, that round was disturbed)"
    )
    return "\n".join(lines)
