"""`camstream bench producer`: the producer's frames/s per core on 720p sources, beside
bare OpenCV read+encode of the same frames, measured in the same run.

Each round runs the bare loop (read a frame, JPEG-encode it) and then the producer
(run_producers, unpaced: feed, fit, encode, size check, produce to a real broker and
wait for every acknowledgement) over the same number of frames. CPU time is this
process's, every thread included (the Kafka client's too; the broker is another
process), so "per core" holds on a shared machine. Figures are medians over rounds;
the ratio is producer / bare.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from camstream.cameras import CameraSpec
from camstream.imaging import encode_jpeg
from camstream.settings import Settings
from producers.producer import run_producers
from producers.sources import SyntheticSource

GOAL = 0.8
WIDTH, HEIGHT = 1280, 720


@dataclass(frozen=True)
class Measure:
    frames: int
    wall_s: float
    cpu_s: float

    @property
    def per_core(self) -> float:
        return self.frames / self.cpu_s if self.cpu_s > 0 else 0.0

    @property
    def wall_fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0


def _measure(work: Callable[[], int]) -> Measure:
    wall, cpu = time.perf_counter(), time.process_time()
    frames = work()
    return Measure(frames, time.perf_counter() - wall, time.process_time() - cpu)


def make_720p_video(source: Path, target: Path, frames: int) -> Path:
    """A 1280x720 MPEG-4 clip made from a real video (cached)."""
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
    cap = cv2.VideoCapture(str(source))
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"mp4v"), 25.0, (WIDTH, HEIGHT))
    written = 0
    try:
        while written < frames:
            ok, image = cap.read()
            if not ok:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                continue
            writer.write(cv2.resize(image, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR))
            written += 1
    finally:
        writer.release()
        cap.release()
    tmp.replace(target)
    return target


def _bare_video(path: Path, frames: int, quality: int) -> int:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    done = 0
    try:
        while done < frames:
            ok, image = cap.read()
            if not ok:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                continue
            encode_jpeg(np.asarray(image, dtype=np.uint8), quality)
            done += 1
    finally:
        cap.release()
    return done


def _bare_synthetic(frames: int, quality: int) -> int:
    source = SyntheticSource(WIDTH, HEIGHT)
    for _ in range(frames):
        encode_jpeg(source.read(), quality)
    return frames


def _producer(settings: Settings, camera: CameraSpec, frames: int) -> int:
    stats = run_producers(settings, [camera], threading.Event(), max_frames=frames, pace=False)
    published = stats.cameras[camera.id].published
    if published != frames:
        raise RuntimeError(f"benchmark: {published} of {frames} frames were acknowledged")
    return published


@contextmanager
def _broker(settings: Settings, bootstrap: str | None) -> Iterator[Settings]:
    """Settings pointing at ``bootstrap``, or at a temporary local broker."""
    if bootstrap:
        yield settings.model_copy(update={"kafka_bootstrap": bootstrap})
        return
    from camstream.stack.kafka import KafkaBroker

    with tempfile.TemporaryDirectory(prefix="camstream-bench-") as tmp:
        broker = KafkaBroker(Path(tmp) / "kafka", Path(tmp) / "logs", cache_dir=settings.cache_dir)
        with broker:
            broker.create_topics([settings.frames_topic], partitions=1)
            yield settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})


def bench_producer(
    settings: Settings,
    frames: int = 300,
    rounds: int = 5,
    quality: int = 85,
    bootstrap: str | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns the figures (medians) and the ratios."""
    from camstream.stack.assets import ensure_assets

    cv2.setNumThreads(1)
    assets = ensure_assets(settings.cache_dir)
    video = make_720p_video(
        assets.vtest_video, settings.cache_dir / "bench" / "vtest-720p.mp4", frames=300
    )
    quiet = settings.model_copy(update={"producer_status_interval_s": 3600.0})
    cases: dict[str, tuple[Callable[[], int], CameraSpec]] = {
        "video_720p": (
            lambda: _bare_video(video, frames, quality),
            CameraSpec(id="bench-video", source=str(video), loop=True, jpeg_quality=quality),
        ),
        "synthetic_720p": (
            lambda: _bare_synthetic(frames, quality),
            CameraSpec(id="bench-synthetic", source="synthetic:1280x720", jpeg_quality=quality),
        ),
    }
    results: dict[str, Any] = {}
    with _broker(quiet, bootstrap) as live:
        for name, (bare, camera) in cases.items():
            bare_runs, producer_runs = [], []
            for _ in range(rounds):
                bare_runs.append(_measure(bare))
                producer_runs.append(_measure(partial(_producer, live, camera, frames)))
            bare_core = statistics.median(m.per_core for m in bare_runs)
            prod_core = statistics.median(m.per_core for m in producer_runs)
            bare_wall = statistics.median(m.wall_fps for m in bare_runs)
            prod_wall = statistics.median(m.wall_fps for m in producer_runs)
            results[name] = {
                "bare_fps_per_core": round(bare_core, 1),
                "producer_fps_per_core": round(prod_core, 1),
                "ratio": round(prod_core / bare_core, 3),
                "bare_wall_fps": round(bare_wall, 1),
                "producer_wall_fps": round(prod_wall, 1),
                "wall_ratio": round(prod_wall / bare_wall, 3),
            }
    return {
        "benchmark": "producer",
        "size": f"{WIDTH}x{HEIGHT}",
        "jpeg_quality": quality,
        "frames_per_round": frames,
        "rounds": rounds,
        "sources": results,
        "ratio": min(r["ratio"] for r in results.values()),
        "goal": GOAL,
    }


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"producer benchmark: {report['size']} JPEG q{report['jpeg_quality']}, "
        f"{report['frames_per_round']} frames x {report['rounds']} rounds (medians)",
        f"{'source':<16}{'bare fps/core':>15}{'producer fps/core':>19}{'ratio':>8}"
        f"{'bare fps':>10}{'producer fps':>14}{'ratio':>8}",
    ]
    for name, r in report["sources"].items():
        lines.append(
            f"{name:<16}{r['bare_fps_per_core']:>15.1f}{r['producer_fps_per_core']:>19.1f}"
            f"{r['ratio']:>8.2f}{r['bare_wall_fps']:>10.1f}{r['producer_wall_fps']:>14.1f}"
            f"{r['wall_ratio']:>8.2f}"
        )
    verdict = "meets" if report["ratio"] >= report["goal"] else "misses"
    lines.append(f"ratio (worst source) {report['ratio']:.2f}: {verdict} the goal >= {GOAL}")
    return "\n".join(lines)
