"""The fleet of a registry-following producer: cameras start, stop and restart as the
wanted list changes, each without touching the others; the registry's rows become
cameras. Frames go to a recording publisher here (the live test uses Kafka)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from prometheus_client import REGISTRY

from camstream.cameras import CameraSpec
from camstream.featurestore import META_FILE, _write_meta
from camstream.records import FrameHeaders
from camstream.settings import Settings
from producers.fleet import Fleet, registry_cameras
from producers.stats import CameraCounters, ProducerStats


class RecordingPublisher:
    """Takes frames as FramePublisher does, and counts them per camera."""

    frame_limit = 10_000_000

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self._lock = threading.Lock()

    def send(self, counters: CameraCounters, headers: FrameHeaders, jpeg: bytes) -> bool:
        with self._lock:
            self.sent[headers.camera_id] += 1
        counters.on_sent()
        return True

    def count(self, camera_id: str) -> int:
        with self._lock:
            return self.sent[camera_id]


def _camera(camera_id: str, **fields: object) -> CameraSpec:
    return CameraSpec.model_validate(
        {"id": camera_id, "source": "synthetic:64x48", "fps": 50, **fields}
    )


def _until(check: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"not after {timeout_s}s")


def _growing(publisher: RecordingPublisher, camera_id: str) -> bool:
    before = publisher.count(camera_id)
    time.sleep(0.2)
    return publisher.count(camera_id) > before


@pytest.fixture
def fleet() -> tuple[Fleet, RecordingPublisher]:
    publisher = RecordingPublisher()
    fleet = Fleet(Settings(), publisher, ProducerStats())  # type: ignore[arg-type]
    yield fleet, publisher  # type: ignore[misc]
    fleet.halt()


def _up(camera_id: str) -> float | None:
    return REGISTRY.get_sample_value("camstream_producer_camera_up", {"camera": camera_id})


def test_a_camera_added_starts_and_one_removed_stops_without_touching_the_others(
    fleet: tuple[Fleet, RecordingPublisher],
) -> None:
    cameras, publisher = fleet
    cameras.reconcile([_camera("fleet-a"), _camera("fleet-b")])
    assert cameras.cameras == ["fleet-a", "fleet-b"]
    _until(lambda: publisher.count("fleet-a") > 5 and publisher.count("fleet-b") > 5)
    thread_a = cameras._running["fleet-a"][0]

    # When b is removed and c added, a keeps its thread and its frames
    cameras.reconcile([_camera("fleet-a"), _camera("fleet-c")])
    assert cameras.cameras == ["fleet-a", "fleet-c"]
    assert cameras._running["fleet-a"][0] is thread_a
    _until(lambda: publisher.count("fleet-c") > 5)
    assert _growing(publisher, "fleet-a")
    # and b stops: no more frames, its up gauge gone (removed is not down)
    time.sleep(0.2)
    assert not _growing(publisher, "fleet-b")
    assert _up("fleet-b") is None
    assert _up("fleet-a") == 1.0


def test_a_changed_source_restarts_the_camera_and_a_routing_change_does_not(
    fleet: tuple[Fleet, RecordingPublisher],
) -> None:
    cameras, publisher = fleet
    cameras.reconcile([_camera("fleet-r")])
    first = cameras._running["fleet-r"][0]
    cameras.reconcile([_camera("fleet-r", model="fashion", confidence_threshold=0.5)])
    assert cameras._running["fleet-r"][0] is first
    cameras.reconcile([_camera("fleet-r", fps=20)])
    second = cameras._running["fleet-r"][0]
    assert second is not first and second.camera.fps == 20
    _until(lambda: not first.is_alive())
    _until(lambda: publisher.count("fleet-r") > 3)


def test_a_camera_whose_source_is_missing_is_refused_and_started_once_it_is_there(
    fleet: tuple[Fleet, RecordingPublisher], tmp_path: Path
) -> None:
    cameras, publisher = fleet
    folder = tmp_path / "frames"
    waiting = CameraSpec(id="fleet-later", source=str(folder), fps=50, loop=True)
    cameras.reconcile([waiting, _camera("fleet-ok")])
    assert cameras.cameras == ["fleet-ok"]
    _until(lambda: publisher.count("fleet-ok") > 3)
    # once its folder holds an image, the next poll starts it
    folder.mkdir()
    cv2.imwrite(str(folder / "0001.jpg"), np.full((48, 64, 3), 128, np.uint8))
    cameras.reconcile([waiting, _camera("fleet-ok")])
    assert cameras.cameras == ["fleet-later", "fleet-ok"]
    _until(lambda: publisher.count("fleet-later") > 3)


def test_registry_rows_become_the_enabled_cameras_with_a_source(tmp_path: Path) -> None:
    now = pd.Timestamp.now(tz="UTC")
    base = {
        "site": "s",
        "zone": "z",
        "indoor": False,
        "confidence_threshold": 0.2,
        "model": "",
        "model_version": "",
        "shadow_model": "",
        "shadow_fraction": 0.0,
        "event_timestamp": now,
        "created": now,
    }
    produced = {
        "fps": 5.0,
        "loop": True,
        "max_width": 640,
        "max_height": 480,
        "jpeg_quality": 70,
        "backpressure": "",
    }
    rows = pd.DataFrame(
        [
            {"camera_id": "b", **base, **produced, "source": "synthetic", "enabled": True},
            {"camera_id": "a", **base, **produced, "source": "synthetic:32x32", "enabled": True},
            {"camera_id": "off", **base, **produced, "source": "synthetic", "enabled": False},
            {"camera_id": "none", **base, **produced, "source": "", "enabled": True},
            {"camera_id": "bad", **base, **produced, "fps": -1.0, "source": "synthetic"},
        ]
    )
    rows.loc[rows["camera_id"] == "bad", "enabled"] = True
    path = tmp_path / META_FILE
    path.parent.mkdir(parents=True)
    _write_meta(path, rows)

    cameras = registry_cameras(tmp_path)

    assert [c.id for c in cameras] == ["a", "b"]
    assert cameras[0].source == "synthetic:32x32"
    assert (cameras[0].fps, cameras[0].loop, cameras[0].max_width) == (5.0, True, 640)
    assert cameras[0].jpeg_quality == 70 and cameras[0].backpressure is None
