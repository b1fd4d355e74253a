"""`camstream bench rollout`: a promote and a rollback on a running stack under a steady
frame load, and the champion's latency with a shadow candidate off and on.

It joins the stack that `camstream up` (or a test) started: its endpoints come from the
state folder's stack.json. Cameras already registered publish a synthetic frame at a
steady rate through Kafka; `camstream promote REF` and then `camstream rollback MODEL`
run as the operator runs them; every frame published must come back as exactly one
prediction. The figures (the goal of each count is 0):

- frames, missing (no prediction), late (end to end over ``late_ms``), failed (the
  worker's failed Triton requests), dlq (frames the worker sent to the DLQ);
- promote and rollback: seconds from the command to every camera switched, and in all;
- the shadow camera's champion end-to-end p50/p99 with the shadow off and on, and the
  ratio on/off (the shadow lane must cost the champion little).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from camstream.errors import ConfigError
from camstream.settings import REPO_ROOT, Settings

FAILURES = "camstream_worker_triton_failures_total"
DLQ = "camstream_worker_dlq_total"


@dataclass(frozen=True)
class RolloutBenchConfig:
    ref: str  # MODEL:VERSION: promoted, then rolled back
    cameras: tuple[str, ...]  # registered cameras that publish during the bench
    shadow_ref: str = ""  # MODEL:VERSION shadowing shadow_camera (default: ref)
    shadow_camera: str = ""  # default: the first camera
    fps: float = 4.0
    settle_s: float = 2.0
    shadow_s: float = 8.0
    late_ms: float = 1000.0


class _Load:
    """Cameras publishing one synthetic JPEG at ``fps`` each, and a consumer collecting
    their predictions (camera, seq) -> prediction."""

    def __init__(
        self, bootstrap: str, settings: Settings, cameras: tuple[str, ...], fps: float
    ) -> None:
        from confluent_kafka import Consumer, Producer

        from camstream.imaging import encode_jpeg

        image = np.full((240, 320, 3), 90, np.uint8)
        image[60:180, 120:200] = 200
        self.jpeg = encode_jpeg(image, 90)
        self.settings = settings
        self.cameras = cameras
        self.fps = fps
        self.delivered: set[tuple[str, int]] = set()
        self.predictions: dict[tuple[str, int], dict[str, Any]] = {}
        self.seq = 0
        self.halt = threading.Event()
        self.publishing = threading.Event()
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-rollout-{os.getpid()}-{time.time_ns()}",
                "isolation.level": "read_committed",
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
            }
        )
        self.consumer.subscribe([settings.predictions_topic])
        deadline = time.monotonic() + 15
        while not self.consumer.assignment() and time.monotonic() < deadline:
            self.consumer.poll(0.2)  # joined and positioned at the end before any frame
        self._threads = [
            threading.Thread(target=self._publish, daemon=True),
            threading.Thread(target=self._consume, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _publish(self) -> None:
        from camstream.records import FrameHeaders

        while not self.halt.is_set():
            if not self.publishing.wait(0.1):
                continue
            self.seq += 1
            for camera in self.cameras:
                meta = FrameHeaders(camera, self.seq, int(time.time() * 1000), 320, 240)
                self.producer.produce(
                    self.settings.frames_topic,
                    value=self.jpeg,
                    key=camera.encode(),
                    headers=meta.to_kafka(),  # type: ignore[arg-type]
                    on_delivery=self._delivered(camera, self.seq),
                )
            self.producer.poll(0)
            time.sleep(1.0 / self.fps)
        self.producer.flush(15)

    def _delivered(self, camera: str, seq: int) -> Any:
        def done(err: Any, _msg: Any) -> None:
            if err is None:
                self.delivered.add((camera, seq))

        return done

    def _consume(self) -> None:
        while not self.halt.is_set():
            msg = self.consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            camera = (msg.key() or b"").decode(errors="replace")
            if camera in self.cameras:
                record = json.loads(msg.value() or b"{}")
                self.predictions.setdefault((camera, int(record["seq"])), record)

    def wait_all(self, timeout_s: float) -> None:
        self.publishing.clear()
        self.producer.flush(15)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.delivered <= set(self.predictions):
            time.sleep(0.2)

    def close(self) -> None:
        self.halt.set()
        for thread in self._threads:
            thread.join(20)
        self.consumer.close()


def _camstream(env: dict[str, str], *args: str) -> tuple[str, float]:
    started = time.monotonic()
    result = subprocess.run(
        [str(Path(sys.executable).parent / "camstream"), *args],
        env=env,
        cwd=REPO_ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    took = time.monotonic() - started
    if result.returncode != 0:
        raise ConfigError(f"`camstream {' '.join(args)}` failed:\n{result.stdout}{result.stderr}")
    return result.stdout, took


def _metric(port: int, name: str) -> float:
    from camstream.stack.local import _scrape

    total = 0.0
    for line in _scrape(port).splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _quantiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (0.0, 0.0)
    q = statistics.quantiles(values, n=100, method="inclusive")
    return round(q[49], 1), round(q[98], 1)


def run(settings: Settings, config: RolloutBenchConfig) -> dict[str, Any]:
    """The figures of one promote, one rollback and one shadow on/off comparison."""
    from camstream.rollout import HISTORY_FILE, read_records
    from camstream.stack.local import read_state

    info = read_state(settings.state_dir)
    if info is None or not info.kafka_bootstrap:
        raise ConfigError(f"no stack in {settings.state_dir}: start one with `camstream up`")
    joined = settings.model_copy(
        update={
            "kafka_bootstrap": info.kafka_bootstrap,
            "triton_grpc": info.triton_grpc,
            "feast_repo": Path(info.feast_repo),
        }
    )
    env = joined.child_env()
    model = config.ref.partition(":")[0]
    worker_port = next((p for n, p in info.metrics_ports.items() if n.startswith("worker")), 0)
    failures, dlq = _metric(worker_port, FAILURES), _metric(worker_port, DLQ)
    history = joined.registry_path / HISTORY_FILE
    load = _Load(info.kafka_bootstrap, joined, config.cameras, config.fps)
    try:
        load.publishing.set()
        time.sleep(config.settle_s)
        _, promote_s = _camstream(
            env, "promote", config.ref, "--force", "--reason", "bench rollout", "--watch-s", "0"
        )
        promoted = read_records(history)[-1]
        time.sleep(config.settle_s)
        _, rollback_s = _camstream(env, "rollback", model)
        rolled = read_records(history)[-1]
        time.sleep(config.settle_s)
        load.wait_all(60)
        switch_frames = dict(load.predictions)
        delivered = set(load.delivered)
        # the shadow: the same camera's champion latency, shadow off then on
        camera = config.shadow_camera or config.cameras[0]
        shadow_ref = config.shadow_ref or config.ref
        off_from = load.seq
        load.publishing.set()
        time.sleep(config.shadow_s)
        off_to = load.seq
        _camstream(env, "shadow", "start", shadow_ref, "--camera", camera, "--fraction", "1")
        on_from = load.seq
        time.sleep(config.shadow_s)
        on_to = load.seq
        load.wait_all(60)
        _camstream(env, "shadow", "stop", shadow_ref, "--camera", camera)
    finally:
        load.close()

    def e2e(first: int, last: int) -> list[float]:
        return [
            float(p["latency"]["end_to_end_ms"])
            for (cam, seq), p in load.predictions.items()
            if cam == camera and first < seq <= last
        ]

    missing = sorted(delivered - set(switch_frames))
    late = sum(1 for p in switch_frames.values() if p["latency"]["end_to_end_ms"] > config.late_ms)
    off_p50, off_p99 = _quantiles(e2e(off_from, off_to))
    on_p50, on_p99 = _quantiles(e2e(on_from, on_to))
    return {
        "frames": len(delivered),
        "missing": len(missing),
        "late": late,
        "late_ms": config.late_ms,
        "failed_requests": _metric(worker_port, FAILURES) - failures,
        "dlq": _metric(worker_port, DLQ) - dlq,
        "promote_s": round(promote_s, 2),
        "promote_to_switched_s": promoted.get("timings_s", {}).get("to_switched"),
        "rollback_s": round(rollback_s, 2),
        "rollback_to_switched_s": rolled.get("timings_s", {}).get("to_switched"),
        "shadow_camera": camera,
        "shadow_off_p50_ms": off_p50,
        "shadow_off_p99_ms": off_p99,
        "shadow_on_p50_ms": on_p50,
        "shadow_on_p99_ms": on_p99,
        "shadow_p99_ratio": round(on_p99 / off_p99, 3) if off_p99 else None,
    }


def table(figures: dict[str, Any]) -> str:
    width = max(len(k) for k in figures)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in figures.items())
