"""Helpers for the producer tests: the RTSP stand-in process and reading frames back."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from camstream import modelrepo

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SCRIPT = Path(__file__).resolve().parent / "rtsp_server.py"


class RtspServer:
    """tests/support/rtsp_server.py under Debian's python3, in its own process group,
    that can be killed and started again on the same port."""

    def __init__(self, port: int, fps: int = 25) -> None:
        self.port = port
        self.fps = fps
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self, timeout_s: float = 20.0) -> Self:
        self._proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(RTSP_SCRIPT), "--port", str(self.port), "--fps", str(self.fps)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        output = []
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self._proc.stdout], [], [], 0.2)
            if ready:
                line = self._proc.stdout.readline()
                if line.strip() == "READY":
                    return self
                if not line and self._proc.poll() is not None:
                    break
                output.append(line)
        self.kill()
        raise RuntimeError(
            "the RTSP stand-in did not start; it needs Debian's python3-gi and GStreamer "
            f"(run scripts/system-packages.sh as root):\n{''.join(output)[-2000:]}"
        )

    def kill(self) -> None:
        """SIGKILL, as a crashed camera server; waits until it is gone."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


@dataclass(frozen=True)
class FrameRecord:
    camera: str
    seq: int
    capture_ts_ms: int
    width: int
    height: int
    partition: int
    offset: int
    size: int


def read_frames(
    config: dict[str, object],
    topic: str,
    camera_ids: set[str] | None = None,
    timeout_s: float = 60.0,
) -> list[FrameRecord]:
    """Every frame in ``topic`` (for ``camera_ids``), from the start up to the end
    offsets at the time of the call."""
    consumer = Consumer(
        {
            **config,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    records: list[FrameRecord] = []
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            partition, offset = msg.partition() or 0, msg.offset() or 0
            if offset + 1 >= ends.get(partition, 0):
                ends.pop(partition, None)
            headers = {k: bytes(v or b"").decode() for k, v in msg.headers() or []}
            camera = headers.get("camera-id", "")
            if camera_ids is not None and camera not in camera_ids:
                continue
            records.append(
                FrameRecord(
                    camera=camera,
                    seq=int(headers["seq"]),
                    capture_ts_ms=int(headers["capture-ts-ms"]),
                    width=int(headers["width"]),
                    height=int(headers["height"]),
                    partition=partition,
                    offset=offset,
                    size=len(msg.value() or b""),
                )
            )
        if ends:
            raise TimeoutError(f"{topic}: partitions not read to their end: {sorted(ends)}")
    finally:
        consumer.close()
    return records


def by_camera(records: list[FrameRecord]) -> dict[str, list[FrameRecord]]:
    """Records per camera in log order (one camera's frames share one partition)."""
    out: dict[str, list[FrameRecord]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        out.setdefault(record.camera, []).append(record)
    return out


SLOW_MODEL = Path(__file__).resolve().parent / "slow_model.py"


def slow_model_repository(
    target: Path, model_repo: Path, model: str, seconds_per_image: float
) -> Path:
    """A Triton model repository at ``target`` serving ``model`` from ``model_repo`` as
    one instance that sleeps ``seconds_per_image`` per image before classifying it:
    the same name, inputs, outputs and weights (of its latest version), deliberately
    slow."""
    source = modelrepo.model_dir(model_repo, model)
    version = modelrepo.version_dir(model_repo, model)
    folder = modelrepo.model_dir(target, model)
    (folder / version.name).mkdir(parents=True)
    (folder / modelrepo.LABELS_FILE).symlink_to(source / modelrepo.LABELS_FILE)
    onnx = version / modelrepo.ONNX_FILE
    (folder / version.name / modelrepo.ONNX_FILE).symlink_to(onnx)
    (folder / version.name / "model.py").symlink_to(SLOW_MODEL)
    config = (source / modelrepo.CONFIG_FILE).read_text().replace("count: 2", "count: 1")
    assert "count: 1" in config, "the instance_group of config.pbtxt changed; update this"
    for key, value in (
        ("REAL_MODEL", str(version / "model.py")),
        ("SECONDS_PER_IMAGE", str(seconds_per_image)),
    ):
        config += f'\nparameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n'
    (folder / modelrepo.CONFIG_FILE).write_text(config)
    return target
