"""Streaming features on the real stack: the worker pushes per-camera activity and drift
state to Feast, and any other service reads them back with get_online_features."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import cv2
import pytest

from camstream.cameras import CameraSpec
from camstream.featurestore import open_store
from camstream.imaging import encode_jpeg
from tests.support.stack import DRIFT_WINDOW, Stack
from tests.support.topics import read_to_end

pytestmark = pytest.mark.integration

ACTIVITY = [
    "camera_activity_fv:frames_in_window",
    "camera_activity_fv:top_label",
    "camera_activity_fv:label_counts",
    "camera_activity_fv:mean_confidence",
    "camera_activity_fv:last_seen_ms",
]
DRIFT = [
    "camera_drift_fv:drift",
    "camera_drift_fv:drift_reasons",
    "camera_drift_fv:drift_window_end_ms",
    "camera_drift_fv:reference_profile_id",
]


def _read(stack: Stack, camera_id: str, features: list[str]) -> dict[str, Any]:
    store = open_store(Path(stack.info.feast_repo))
    table = store.get_online_features(
        features=features, entity_rows=[{"camera_id": camera_id}]
    ).to_dict()
    return {name: values[0] for name, values in table.items()}


def _wait_for(stack: Stack, camera_id: str, features: list[str], ready: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        row = _read(stack, camera_id, features)
        if ready(row):
            return row
        time.sleep(0.5)
    raise AssertionError(f"features never became ready: {row}")


def _drift_row_matches_last_record(
    stack: Stack, camera_id: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Poll until the camera's Feast drift row is the last drift record the worker
    published for it (a later record, e.g. silence, may replace both meanwhile);
    returns (row, record)."""
    deadline = time.monotonic() + 60
    row: dict[str, Any] = {}
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        row = _read(stack, camera_id, DRIFT)
        records = read_to_end(stack.info.kafka_bootstrap, stack.settings.drift_topic, {camera_id})
        if records:
            last = json.loads(records[-1].value())
            expected = {
                "drift": last["drift"],
                "drift_reasons": "; ".join(last["reasons"]),
                "drift_window_end_ms": last["window_end_ms"],
                "reference_profile_id": last["reference_profile_id"],
            }
            if {k: row.get(k) for k in expected} == expected:
                return row, last
        time.sleep(0.5)
    raise AssertionError(f"Feast's drift row {row} never matched the last drift record {last}")


def test_camera_activity_and_drift_state_are_readable_from_feast(stack: Stack) -> None:
    # Given a registered camera sending more frames of one photo than a drift window
    camera = CameraSpec(id="features-cam", source="unused", confidence_threshold=0.05)
    stack.register(camera)
    image = cv2.imread(str(stack.assets.photos["orange"]), cv2.IMREAD_COLOR)
    jpeg = encode_jpeg(image, 90)
    frames = DRIFT_WINDOW + 2
    producer = stack.producer()
    for seq in range(1, frames + 1):
        stack.publish(producer, camera.id, seq, jpeg, image.shape[1], image.shape[0])
    producer.flush(10)
    predictions = [
        json.loads(m.value())
        for m in stack.collect(
            stack.settings.predictions_topic, lambda m: len(m) >= frames, camera_ids={camera.id}
        )
    ]
    labels = [p["label"] for p in predictions]
    last_capture = max(p["capture_ts_ms"] for p in predictions)

    # When another service reads the camera's streaming features from Feast
    activity = _wait_for(
        stack, camera.id, ACTIVITY, lambda r: (r["frames_in_window"] or 0) >= frames
    )
    drift, record = _drift_row_matches_last_record(stack, camera.id)

    # Then they describe what the worker saw: the activity of its predictions
    assert activity["frames_in_window"] == frames
    assert activity["top_label"] == "orange" == max(set(labels), key=labels.count)
    assert json.loads(activity["label_counts"]) == {"orange": labels.count("orange")} | {
        label: labels.count(label) for label in set(labels)
    }
    mean_score = sum(p["score"] for p in predictions) / len(predictions)
    assert activity["mean_confidence"] == pytest.approx(mean_score, rel=1e-5)  # Float32
    assert activity["last_seen_ms"] == last_capture
    # and its drift state is the camera's last drift record (above), the window of twelve
    # copies of one photo flagged as a frozen camera (a silence record may follow it)
    (window,) = [
        json.loads(m.value())
        for m in read_to_end(stack.info.kafka_bootstrap, stack.settings.drift_topic, {camera.id})
        if json.loads(m.value())["kind"] == "window"
    ]
    assert window["drift"] is True and drift["drift"] is True
    assert any(r.startswith("frozen max_identical_run") for r in window["reasons"]), window
    if record["kind"] == "window":
        assert drift["drift_window_end_ms"] == window["window_end_ms"] <= last_capture
