"""A test's handle on a running stack, and what it publishes and reads back.

``Stack`` publishes frames and reads topics as a camera and a downstream service would
(plain Kafka clients), ``Feed`` is cameras publishing a real photo at a steady rate,
and the functions read predictions and metrics back. The fixtures that start stacks
live in tests/integration/conftest.py.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import pytest
from confluent_kafka import Consumer, Message, Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from camstream.cameras import CameraSpec
from camstream.featurestore import open_store, upsert_cameras
from camstream.imaging import encode_jpeg
from camstream.records import FrameHeaders
from camstream.settings import REPO_ROOT, Settings
from camstream.stack.assets import SampleAssets
from camstream.stack.local import LocalStack, StackInfo
from tests.support.compose import ComposeStack

# The session stack's drift window (frames): small, so the tests see windows close.
DRIFT_WINDOW = 10
STACKS = ("local", "compose")


def stack_kind() -> str:
    """The session's stack, as CAMSTREAM_TEST_STACK names it (tests/integration/conftest.py)."""
    kind = os.environ.get("CAMSTREAM_TEST_STACK", "local")
    if kind not in STACKS:
        raise pytest.UsageError(f"CAMSTREAM_TEST_STACK={kind!r}: use one of {', '.join(STACKS)}")
    return kind


def session_settings(**values: Any) -> Settings:
    """The session stack's settings: a short Feast cache, small drift windows (the
    compose worker gets the same two from tests/support/compose.test.yml)."""
    return Settings(feature_cache_ttl_s=0.5, drift_window_frames=DRIFT_WINDOW, **values)


def compose_handle(running: ComposeStack) -> Stack:
    """The Stack handle on a running compose stack (its host addresses, the session's
    settings, the sample assets)."""
    from camstream.stack.assets import ensure_assets

    settings = session_settings()
    info = StackInfo(kafka_bootstrap=running.kafka_bootstrap, triton_grpc=running.triton_grpc)
    return Stack(info, settings, ensure_assets(settings.cache_dir), compose=running)


@dataclass
class Stack:
    info: StackInfo
    settings: Settings
    assets: SampleAssets
    local: LocalStack | None = None  # the processes, where this test session started them
    compose: ComposeStack | None = None  # or the compose stack (CAMSTREAM_TEST_STACK=compose)

    def producer(self) -> Producer:
        return Producer({"bootstrap.servers": self.info.kafka_bootstrap, "acks": "all"})

    def publish(
        self,
        producer: Producer,
        camera_id: str,
        seq: int,
        jpeg: bytes,
        width: int,
        height: int,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        meta = FrameHeaders(camera_id, seq, int(time.time() * 1000), width, height)
        producer.produce(
            self.settings.frames_topic,
            value=jpeg,
            key=camera_id.encode(),
            headers=headers if headers is not None else meta.to_kafka(),
        )

    def limit_record_bytes(self, topic: str, limit: int | None) -> None:
        """Set ``topic``'s max.message.bytes (None: back to the broker's default)."""
        op = AlterConfigOpType.DELETE if limit is None else AlterConfigOpType.SET
        entry = ConfigEntry("max.message.bytes", str(limit or 0), incremental_operation=op)
        resource = ConfigResource("TOPIC", topic, incremental_configs=[entry])
        admin = AdminClient({"bootstrap.servers": self.info.kafka_bootstrap})
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(timeout=10)

    def register(self, *cameras: CameraSpec) -> None:
        """Register (or replace) cameras in the stack's Feast: on the compose stack as an
        operator would, `camstream cameras add` inside the worker's container."""
        if self.compose is None:
            upsert_cameras(open_store(Path(self.info.feast_repo)), list(cameras))
            return
        for camera in cameras:
            self.compose.run("exec", "-T", "worker", "camstream", "cameras", "add",
                             *camera_add_args(camera))  # fmt: skip

    def collect(
        self,
        topic: str,
        done: Callable[[list[Message]], bool],
        timeout_s: float = 90.0,
        camera_ids: set[str] | None = None,
        isolation: str = "read_committed",
    ) -> list[Message]:
        """Read ``topic`` from the start until ``done(messages)`` or the timeout."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.info.kafka_bootstrap,
                "isolation.level": isolation,
                "group.id": f"test-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([topic])
        messages: list[Message] = []
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                key = (msg.key() or b"").decode(errors="replace")
                if camera_ids is None or key in camera_ids:
                    messages.append(msg)
                if done(messages):
                    break
        finally:
            consumer.close()
        return messages


def camera_add_args(camera: CameraSpec) -> list[str]:
    """`camstream cameras add`'s arguments for ``camera`` (AssertionError for a field the
    command does not take)."""
    flags = {"source": "--source", "fps": "--fps", "site": "--site", "zone": "--zone",
             "confidence_threshold": "--threshold", "model": "--model",
             "model_version": "--model-version"}  # fmt: skip
    args = [camera.id, "--loop" if camera.loop else "--no-loop"]
    args.append("--indoor" if camera.indoor else "--no-indoor")
    for field, flag in flags.items():
        args += [flag, str(getattr(camera, field))]
    taken = set(flags) | {"id", "loop", "indoor"}
    others = set(camera.model_fields_set) - taken
    assert not others, f"`camstream cameras add` cannot set {sorted(others)}"
    return args


def schema_validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((REPO_ROOT / "schemas" / name).read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)  # type: ignore[no-any-return]


class Feed(threading.Thread):
    """Cameras publishing one real photo at ``fps`` each; records acknowledged seqs.

    ``partitions`` sends a camera's frames to a partition of the test's choosing instead
    of the one its key hashes to."""

    def __init__(
        self,
        stack: Stack,
        cameras: list[str],
        fps: float,
        size: tuple[int, int] | None = None,
        partitions: dict[str, int] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        image = cv2.imread(str(stack.assets.photos["orange"]), cv2.IMREAD_COLOR)
        if size is not None:
            image = cv2.resize(image, size)
        self.jpeg = encode_jpeg(image, 95 if size else 90)
        self.size = (image.shape[1], image.shape[0])
        self.stack = stack
        self.cameras = cameras
        self.fps = fps
        self.partitions = partitions or {}
        self.halt = threading.Event()
        self.delivered: set[tuple[str, int]] = set()
        self.producer = Producer(
            {"bootstrap.servers": stack.info.kafka_bootstrap, "acks": "all", "linger.ms": 5}
        )

    def __enter__(self) -> Feed:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        """Stop publishing and wait for the last deliveries."""
        self.halt.set()
        self.join(30)

    def _on_delivery(self, camera: str, seq: int) -> Any:
        def done(err: Any, _msg: Any) -> None:
            if err is None:
                self.delivered.add((camera, seq))

        return done

    def run(self) -> None:
        seq = 0
        while not self.halt.is_set():
            seq += 1
            for camera in self.cameras:
                meta = FrameHeaders(camera, seq, int(time.time() * 1000), *self.size)
                self.producer.produce(
                    self.stack.settings.frames_topic,
                    value=self.jpeg,
                    key=camera.encode(),
                    headers=meta.to_kafka(),
                    on_delivery=self._on_delivery(camera, seq),
                    **({"partition": self.partitions[camera]} if camera in self.partitions else {}),
                )
            self.producer.poll(0)
            self.halt.wait(1.0 / self.fps)
        self.producer.flush(15)


@contextmanager
def own_stack(
    state: Path, worker_env: dict[str, str], **options: Any
) -> Iterator[tuple[Stack, LocalStack]]:
    """A test module's own LocalStack on ``state`` (its workers get ``worker_env``;
    ``options`` go to LocalStack), stopped on the way out."""
    from camstream.stack.setup import prepare

    settings = Settings(state_dir=state)
    prepared = prepare(settings)
    local = LocalStack(settings, worker_env=worker_env, **options)
    try:
        info = local.start()
        yield Stack(info, settings, prepared.assets), local
    finally:
        local.stop()


def prediction_counts(predictions: list[dict[str, Any]]) -> Counter[tuple[str, int]]:
    """How many predictions each (camera, seq) got."""
    return Counter((p["camera_id"], p["seq"]) for p in predictions)


def predictions_of(stack: Stack, cameras: set[str], wanted: set[tuple[str, int]]) -> list[dict]:
    """The predictions of ``cameras`` (read_committed) once they cover ``wanted``."""
    return [json.loads(m.value()) for m in prediction_messages(stack, cameras, wanted)]


def prediction_messages(
    stack: Stack, cameras: set[str], wanted: set[tuple[str, int]]
) -> list[Message]:
    """The prediction messages of ``cameras`` (read_committed) once they cover ``wanted``."""

    def covered(messages: list[Any]) -> bool:
        got = {(m.key().decode(), json.loads(m.value())["seq"]) for m in messages}
        return wanted <= got

    return stack.collect(
        stack.settings.predictions_topic, covered, timeout_s=120, camera_ids=cameras
    )


def pid_alive(pid: int) -> bool:
    """Whether a process of that pid exists (a zombie counts until reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def metric_sum(text: str, name: str) -> float:
    """The sum of every sample of ``name`` (a prefix: labels may follow) in ``text``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total
