"""docker-compose's cpu profile, run for real (tests/support/compose.py): images built
here from Debian, the stack up healthy through testcontainers' DockerCompose, the host
publishing frames to its Kafka on 127.0.0.1 as a camera would, and reading the output
topics as a downstream service would. Every frame of a real video predicted once, a
real photo labelled right, a corrupt JPEG in the DLQ, the worker SIGKILLed with
`docker kill` and started again, and two workers with `--scale worker=2`. Afterwards
no container, network or volume of the project is left.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest

from camstream.imaging import encode_jpeg
from camstream.settings import Settings
from camstream.stack.assets import ensure_assets
from camstream.stack.local import StackInfo
from tests.support.compose import ComposeStack, compose_stack
from tests.support.stack import (
    Feed,
    Stack,
    prediction_counts,
    predictions_of,
    schema_validator,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

ORANGE_LABELS = {"orange", "lemon"}


@pytest.fixture(scope="module")
def compose() -> Iterator[tuple[ComposeStack, Stack]]:
    with compose_stack() as running:
        print(f"\ncompose cpu profile healthy after {running.startup_s}s")
        settings = Settings()
        info = StackInfo(kafka_bootstrap=running.kafka_bootstrap, triton_grpc=running.triton_grpc)
        yield running, Stack(info, settings, ensure_assets(settings.cache_dir))


def _photo(stack: Stack) -> tuple[bytes, int, int]:
    image = cv2.imread(str(stack.assets.photos["orange"]), cv2.IMREAD_COLOR)
    assert image is not None
    return encode_jpeg(np.asarray(image, dtype=np.uint8), 90), image.shape[1], image.shape[0]


def _video_frames(stack: Stack, count: int) -> list[tuple[bytes, int, int]]:
    capture = cv2.VideoCapture(str(stack.assets.vtest_video))
    frames: list[tuple[bytes, int, int]] = []
    try:
        while len(frames) < count:
            ok, bgr = capture.read()
            assert ok, "the sample video ended"
            frames.append((encode_jpeg(np.asarray(bgr, dtype=np.uint8), 85), *bgr.shape[1::-1]))
    finally:
        capture.release()
    return frames


def test_every_frame_of_a_real_video_is_predicted_once_and_a_photo_labelled_right(
    compose: tuple[ComposeStack, Stack],
) -> None:
    _, stack = compose
    # Given the compose stack, with its own sample producer running
    producer = stack.producer()
    # When the host publishes 60 frames of the street video and a real photo
    for seq, (jpeg, width, height) in enumerate(_video_frames(stack, 60), start=1):
        stack.publish(producer, "compose-video", seq, jpeg, width, height)
    stack.publish(producer, "compose-photo", 1, *_photo(stack))
    assert producer.flush(30) == 0
    wanted = {("compose-video", s) for s in range(1, 61)} | {("compose-photo", 1)}

    # Then each has exactly one prediction, valid against the published schema
    predictions = predictions_of(stack, {"compose-video", "compose-photo"}, wanted)
    assert set(prediction_counts(predictions)) == wanted
    assert set(prediction_counts(predictions).values()) == {1}
    validator = schema_validator("prediction.schema.json")
    for record in predictions:
        validator.validate(record)
    # and the photo's top-1 is its subject
    (orange,) = [p for p in predictions if p["camera_id"] == "compose-photo"]
    assert orange["top_k"][0]["label"] in ORANGE_LABELS, orange["top_k"]
    # and the stack's own sample cameras are predicted too (its producer works)
    sample = stack.collect(
        stack.settings.predictions_topic, lambda m: len(m) >= 5, camera_ids={"cam-street"}
    )
    assert len(sample) >= 5


def test_a_corrupt_jpeg_goes_to_the_dlq_with_its_reason(
    compose: tuple[ComposeStack, Stack],
) -> None:
    _, stack = compose
    jpeg, width, height = _photo(stack)
    corrupt = jpeg[:2] + b"\x00" * 64 + jpeg[66 : len(jpeg) // 3]
    producer = stack.producer()
    for seq, body in enumerate((jpeg, corrupt, jpeg), start=1):
        stack.publish(producer, "compose-dlq", seq, body, width, height)
    assert producer.flush(30) == 0

    (dead,) = stack.collect(
        stack.settings.dlq_topic, lambda m: len(m) >= 1, camera_ids={"compose-dlq"}
    )
    headers = dict(dead.headers() or [])
    assert dead.value() == corrupt and headers["seq"] == b"2"
    assert headers["error-kind"] in {b"corrupt_jpeg", b"undecodable"}, headers
    predicted = predictions_of(stack, {"compose-dlq"}, {("compose-dlq", 1), ("compose-dlq", 3)})
    assert sorted(p["seq"] for p in predicted) == [1, 3]


def test_the_worker_killed_with_docker_kill_and_started_again_loses_no_frame(
    compose: tuple[ComposeStack, Stack],
) -> None:
    running, stack = compose
    (before,) = running.containers("worker")
    started = _inspect(running, before["ID"])["StartedAt"]
    feed = Feed(stack, ["compose-kill-a", "compose-kill-b"], fps=8)
    # Given frames flowing, when the worker's container gets SIGKILL mid-stream
    with feed:
        time.sleep(5)
        running.docker("kill", "--signal", "KILL", before["ID"])
        time.sleep(2)
        # and is started again (as an orchestrator would)
        running.run("start", "worker")
        running.wait_healthy("worker", 1)
        time.sleep(4)

    # Then every acknowledged frame has a prediction (at least once: none lost)
    predictions = predictions_of(stack, set(feed.cameras), feed.delivered)
    assert {(p["camera_id"], p["seq"]) for p in predictions} >= feed.delivered
    assert len(feed.delivered) > 2 * 8 * 10
    # from the same container, killed and started again
    (after,) = running.containers("worker")
    state = _inspect(running, after["ID"])
    assert after["ID"] == before["ID"] and state["Running"]
    # (it exited after its first start, the kill, and was started after that)
    assert started < state["FinishedAt"] < state["StartedAt"], state


def _inspect(running: ComposeStack, container: str) -> dict[str, Any]:
    """A container's State, as `docker inspect` gives it."""
    state: dict[str, Any] = json.loads(running.docker("inspect", container))[0]["State"]
    return state


def test_two_workers_with_scale_share_the_cameras_and_predict_every_frame(
    compose: tuple[ComposeStack, Stack],
) -> None:
    running, stack = compose
    # Given the stack scaled to two workers
    running.run("up", "-d", "--no-recreate", "--scale", "worker=2", "worker", timeout_s=300)
    running.wait_healthy("worker", 2)
    cameras = [f"compose-scale-{i}" for i in range(6)]
    feed = Feed(stack, cameras, fps=4)
    # When six cameras send frames
    with feed:
        time.sleep(12)

    # Then every frame is predicted, and both workers did part of the work
    predictions = predictions_of(stack, set(cameras), feed.delivered)
    assert {(p["camera_id"], p["seq"]) for p in predictions} >= feed.delivered
    late = [p for p in predictions if p["seq"] > 20]  # after the group settled
    workers = {p["worker"] for p in late}
    assert len(workers) == 2, workers
    # and each camera stayed with one worker once settled (its partition's owner)
    by_camera = {c: {p["worker"] for p in late if p["camera_id"] == c} for c in cameras}
    assert all(len(w) == 1 for w in by_camera.values()), by_camera
