"""The whole path on real services: producer -> Kafka -> Faust worker -> Triton, Feast ->
predictions, drift records and the DLQ."""

from __future__ import annotations

import json
import threading
from collections import Counter

import cv2
import pytest

from camstream.cameras import CameraSpec
from camstream.imaging import encode_jpeg
from camstream.records import UNCERTAIN
from producers.producer import run_producers
from tests.support.stack import DRIFT_WINDOW, Stack, schema_validator

pytestmark = pytest.mark.integration

CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}


def _photo(stack: Stack, name: str) -> tuple[bytes, int, int]:
    image = cv2.imread(str(stack.assets.photos[name]), cv2.IMREAD_COLOR)
    assert image is not None
    return encode_jpeg(image, 90), image.shape[1], image.shape[0]


def _predictions_for(stack: Stack, camera_ids: set[str], expected: int) -> list[dict]:
    messages = stack.collect(
        stack.settings.predictions_topic,
        lambda msgs: len(msgs) >= expected,
        camera_ids=camera_ids,
    )
    return [json.loads(m.value()) for m in messages]


def test_every_frame_from_real_videos_yields_exactly_one_valid_prediction(stack: Stack) -> None:
    # Given two cameras replaying the real sample videos
    cameras = [
        CameraSpec(id="e2e-street", source=str(stack.assets.vtest_video), fps=25),
        CameraSpec(id="e2e-bikes", source=str(stack.assets.bikes_video), fps=25),
    ]
    stack.register(*cameras)
    settings = stack.settings.model_copy(update={"kafka_bootstrap": stack.info.kafka_bootstrap})

    # When the producer publishes 60 frames of each
    stats = run_producers(settings, cameras, threading.Event(), max_frames=60)
    delivered = {(cid, seq) for cid, seqs in stats.delivered.items() for seq in seqs}
    assert len(delivered) == 120
    predictions = _predictions_for(stack, {c.id for c in cameras}, len(delivered))

    # Then every delivered (camera, seq) has exactly one schema-valid prediction
    counts = Counter((p["camera_id"], p["seq"]) for p in predictions)
    assert set(counts) == delivered
    assert max(counts.values()) == 1
    validator = schema_validator("prediction.schema.json")
    for prediction in predictions:
        validator.validate(prediction)
        assert prediction["enrichment"] == "ok"
        assert prediction["features"]["zone"] == "default"
        assert prediction["dedup_key"] == f"{prediction['camera_id']}:{prediction['seq']}"


def test_drift_records_per_camera_window_are_schema_valid(stack: Stack) -> None:
    # Given the frames of the previous test (60 per camera) and windows of DRIFT_WINDOW
    # frames, when the drift topic is read, then each camera has full, valid windows.
    cameras = {"e2e-street", "e2e-bikes"}
    records = stack.collect(
        stack.settings.drift_topic,
        lambda msgs: {m.key().decode() for m in msgs if b'"window"' in m.value()} >= cameras,
        camera_ids=cameras,
    )
    validator = schema_validator("drift.schema.json")
    assert {m.key().decode() for m in records} == cameras
    windows = [json.loads(m.value()) for m in records]
    for record in windows:
        validator.validate(record)
    windows = [r for r in windows if r["kind"] == "window"]  # silence records have no frames
    assert {r["camera_id"] for r in windows} == cameras
    for record in windows:
        assert record["frame_count"] == DRIFT_WINDOW
        assert record["window_start_ms"] <= record["window_end_ms"]
        tests = {(s["name"], s["test"]) for s in record["statistics"]}
        assert {("label_distribution", "psi"), ("brightness", "ks")} <= tests
        assert record["drift"] == bool(record["reasons"])


@pytest.mark.parametrize(
    ("photo", "accepted"),
    [("cat", CAT_LABELS), ("espresso", {"espresso", "cup", "coffee mug"})],
)
def test_real_photo_gets_its_imagenet_label(stack: Stack, photo: str, accepted: set[str]) -> None:
    # Given a registered camera with a low threshold and a real photo
    camera = CameraSpec(id=f"photo-{photo}", source="unused", confidence_threshold=0.05)
    stack.register(camera)
    jpeg, width, height = _photo(stack, photo)

    # When it is published as a frame
    producer = stack.producer()
    stack.publish(producer, camera.id, 1, jpeg, width, height)
    producer.flush(10)

    # Then its top-1 label is the subject's
    (prediction,) = _predictions_for(stack, {camera.id}, 1)
    assert prediction["label"] in accepted, prediction["top_k"]


def test_corrupt_jpeg_goes_to_dlq_and_later_frames_are_predicted(stack: Stack) -> None:
    # Given a camera sending a good frame, a corrupt JPEG, then two good frames
    camera_id = "dlq-cam"
    jpeg, width, height = _photo(stack, "orange")
    corrupt = jpeg[:2] + b"\x00" * 64 + jpeg[66 : len(jpeg) // 3]
    producer = stack.producer()
    stack.publish(producer, camera_id, 1, jpeg, width, height)
    stack.publish(producer, camera_id, 2, corrupt, width, height)
    stack.publish(producer, camera_id, 3, jpeg, width, height)
    stack.publish(producer, camera_id, 4, jpeg, width, height)
    producer.flush(10)

    # Then the corrupt one is in the DLQ with its reason and its original bytes
    (dead,) = stack.collect(
        stack.settings.dlq_topic, lambda msgs: len(msgs) >= 1, camera_ids={camera_id}
    )
    headers = {k: v for k, v in dead.headers()}
    assert dead.value() == corrupt
    assert headers["seq"] == b"2"
    assert headers["error-kind"] in {b"corrupt_jpeg", b"undecodable"}
    assert headers["error-message"]
    # and the frames around it are predicted
    predictions = _predictions_for(stack, {camera_id}, 3)
    assert sorted(p["seq"] for p in predictions) == [1, 3, 4]
    assert all(p["enrichment"] == "missing" for p in predictions)  # never registered


def test_raising_the_feast_threshold_above_the_score_makes_the_label_uncertain(
    stack: Stack,
) -> None:
    # Given a registered camera whose frames are classified with a confident label
    camera = CameraSpec(id="threshold-cam", source="unused", confidence_threshold=0.01)
    stack.register(camera)
    jpeg, width, height = _photo(stack, "orange")
    producer = stack.producer()
    stack.publish(producer, camera.id, 1, jpeg, width, height)
    producer.flush(10)
    (first,) = _predictions_for(stack, {camera.id}, 1)
    assert first["label"] == "orange"
    score = first["score"]

    # When its threshold in Feast is raised above that score (no worker restart)
    stack.register(camera.model_copy(update={"confidence_threshold": min(1.0, score + 0.01)}))
    threading.Event().wait(1.5)  # longer than the worker's feature cache TTL
    stack.publish(producer, camera.id, 2, jpeg, width, height)
    producer.flush(10)

    # Then the same image is now labelled uncertain, with its score kept
    predictions = _predictions_for(stack, {camera.id}, 2)
    second = next(p for p in predictions if p["seq"] == 2)
    assert second["label"] == UNCERTAIN
    assert second["score"] == pytest.approx(score, abs=1e-4)
    assert second["threshold"] > score
