"""One real local stack per test session: Kafka, Triton, Feast and a Faust worker.

Tests publish their own frames (no sample producers) and read the output topics with
plain Kafka consumers, as a downstream service would.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
from confluent_kafka import Consumer, Message, Producer

from camstream.cameras import CameraSpec
from camstream.featurestore import open_store, upsert_cameras
from camstream.records import FrameHeaders
from camstream.settings import REPO_ROOT, Settings
from camstream.stack.assets import SampleAssets
from camstream.stack.local import LocalStack, StackInfo
from camstream.stack.setup import prepare

DRIFT_WINDOW = 10


@dataclass
class Stack:
    info: StackInfo
    settings: Settings
    assets: SampleAssets

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

    def register(self, *cameras: CameraSpec) -> None:
        upsert_cameras(open_store(Path(self.info.feast_repo)), list(cameras))

    def collect(
        self,
        topic: str,
        done: Callable[[list[Message]], bool],
        timeout_s: float = 90.0,
        camera_ids: set[str] | None = None,
    ) -> list[Message]:
        """Read ``topic`` from the start until ``done(messages)`` or the timeout."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.info.kafka_bootstrap,
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


def schema_validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((REPO_ROOT / "schemas" / name).read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("stack")
    settings = Settings(state_dir=state, feature_cache_ttl_s=0.5)
    prepared = prepare(settings)
    local = LocalStack(
        settings,
        worker_env={
            "CAMSTREAM_DRIFT_WINDOW_FRAMES": str(DRIFT_WINDOW),
            "CAMSTREAM_FEATURE_CACHE_TTL_S": "0.5",
        },
    )
    try:
        info = local.start()
        yield Stack(info, settings, prepared.assets)
    finally:
        local.stop()
