"""streams.activity: the per-camera rows pushed to Feast's activity view."""

from __future__ import annotations

import json

import pytest

from streams.activity import ActivityTracker


def test_rows_summarise_the_rolling_window_per_camera() -> None:
    # Given frames of one camera, the oldest outside a 10 s window
    tracker = ActivityTracker(window_s=10)
    tracker.observe("cam", 1_000, "cat", 0.2)
    tracker.observe("cam", 15_000, "cat", 0.8)
    tracker.observe("cam", 16_000, "dog", 0.6)
    tracker.observe("cam", 17_000, "cat", 0.4)

    # When rows are taken at 20 s
    (row,) = tracker.rows(now_ms=20_000)

    # Then they cover the last 10 s only
    assert row["camera_id"] == "cam"
    assert row["frames_in_window"] == 3
    assert row["top_label"] == "cat"
    assert json.loads(row["label_counts"]) == {"cat": 2, "dog": 1}
    assert row["mean_confidence"] == pytest.approx(0.6)
    assert row["last_seen_ms"] == 17_000
    assert row["event_timestamp"].timestamp() == 20


def test_only_cameras_seen_since_the_last_rows_are_pushed_again() -> None:
    tracker = ActivityTracker(window_s=60)
    tracker.observe("a", 1_000, "cat", 0.5)
    tracker.observe("b", 1_000, "dog", 0.5)
    assert [r["camera_id"] for r in tracker.rows(2_000)] == ["a", "b"]
    tracker.observe("b", 3_000, "dog", 0.5)
    assert [r["camera_id"] for r in tracker.rows(4_000)] == ["b"]
    assert tracker.rows(5_000) == []
