"""camstream.view.state and .thumbnails: records in, tiles out, on an injected clock."""

from __future__ import annotations

import time
from typing import Any

import cv2
import numpy as np

from camstream.imaging import encode_jpeg, jpeg_dimensions
from camstream.records import DriftRecord, ModelRef, Prediction, ShadowPair, StatisticTest
from camstream.settings import Settings
from camstream.view.feed import FrameHandler
from camstream.view.state import FleetState, RateMeter
from camstream.view.thumbnails import Thumbnailer


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def prediction(camera: str, seq: int, published_s: float, label: str = "orange") -> dict[str, Any]:
    """A real Prediction record, as the worker writes it, read back as JSON."""
    record = Prediction.model_validate(
        {
            "dedup_key": f"{camera}:{seq}",
            "camera_id": camera,
            "seq": seq,
            "capture_ts_ms": int(published_s * 1000) - 80,
            "model": {"name": "efficientnet_lite0", "version": "1"},
            "label": label,
            "score": 0.91,
            "threshold": 0.2,
            "top_k": [{"class_id": 950, "label": label, "score": 0.91}],
            "features": {"site": "lab"},
            "enrichment": "ok",
            "latency": {
                "queue_ms": 5,
                "decode_ms": 2,
                "infer_ms": 30,
                "enrich_ms": 1,
                "end_to_end_ms": 80.5,
            },
            "worker": "w1",
            "published_ts_ms": int(published_s * 1000),
        }
    )
    return dict(record.model_dump(mode="json", by_alias=True))


def drift(camera: str, end_s: float, stats: list[StatisticTest], **extra: Any) -> dict[str, Any]:
    drifted = [s for s in stats if s.drifted]
    record = DriftRecord(
        camera_id=camera,
        window_start_ms=int(end_s * 1000) - 5000,
        window_end_ms=int(end_s * 1000),
        frame_count=extra.pop("frame_count", 10),
        model=ModelRef(name="efficientnet_lite0", version="1"),
        reference_profile_id="ref",
        statistics=stats,
        drift=bool(drifted),
        reasons=[f"{s.name}: {s.test} {s.value}" for s in drifted],
        worker="w1",
        **extra,
    )
    return dict(record.model_dump(mode="json", by_alias=True))


def test_prediction_makes_a_live_tile_with_label_model_and_latency() -> None:
    # Given a camera's prediction
    clock = Clock()
    state = FleetState(clock=clock)
    state.apply_prediction(prediction("cam-1", 7, clock.now))
    # Then its tile shows it, live
    tile = state.tiles()["cam-1"]
    assert tile["status"] == "live"
    assert (tile["label"], tile["score"], tile["seq"]) == ("orange", 0.91, 7)
    assert tile["model"] == "efficientnet_lite0:1"
    assert tile["e2e_ms"] == 80.5
    assert state.take_changes() == ({"cam-1"}, set())


def test_camera_without_predictions_for_stale_s_turns_stale_and_back() -> None:
    clock = Clock()
    state = FleetState(stale_s=5, clock=clock)
    for i in range(10):  # 2 fps
        state.apply_prediction(prediction("cam-1", i, clock.now))
        clock.now += 0.5
    clock.now += 4.0
    assert state.tiles()["cam-1"]["status"] == "live"
    clock.now += 1.5
    assert state.tiles()["cam-1"]["status"] == "stale"
    # When it comes back, it is live at once
    state.apply_prediction(prediction("cam-1", 11, clock.now))
    assert state.tiles()["cam-1"]["status"] == "live"


def test_slow_camera_gets_three_of_its_intervals_before_stale() -> None:
    clock = Clock()
    state = FleetState(stale_s=5, clock=clock)
    for i in range(4):  # one frame every 4 s: 0.25 fps
        state.apply_prediction(prediction("slow", i, clock.now))
        clock.now += 4.0
    clock.now += 2.0  # 6 s after its last prediction: beyond stale_s, within 3 intervals
    assert state.tiles()["slow"]["status"] == "live"


def test_older_prediction_does_not_replace_the_tile_but_enters_history() -> None:
    clock = Clock()
    state = FleetState(clock=clock)
    state.apply_prediction(prediction("cam-1", 5, clock.now, label="cat"))
    state.apply_prediction(prediction("cam-1", 4, clock.now - 1, label="dog"))
    assert state.tiles()["cam-1"]["label"] == "cat"
    detail = state.detail("cam-1")
    assert detail is not None
    assert [p[1] for p in detail["predictions"]] == ["dog", "cat"]


def test_rates_count_whole_seconds_by_event_time() -> None:
    meter = RateMeter(window_s=5)
    for ms in range(0, 10_000, 100):  # 10 per second for 10 s
        meter.add(1_000_000 + ms)
    assert meter.rate(1_010_000) == 10.0
    assert meter.rate(1_020_000) == 0.0


def test_drift_window_sets_state_reasons_and_quality() -> None:
    clock = Clock()
    state = FleetState(clock=clock)
    psi = StatisticTest.measured("label_distribution", "psi", 0.9, "gt", 0.25, baseline="camera")
    frozen = StatisticTest.measured("frozen", "max_identical_run", 12, "ge", 10)
    black = StatisticTest.measured("black_frames", "share", 0.0, "ge", 0.2)
    # A calibrating window: drift tests do not count, data quality does
    state.apply_drift(drift("cam-1", clock.now - 10, [psi, black], calibrating=True))
    tile = state.tiles()["cam-1"]
    assert tile["drift"]["state"] == "calibrating"
    assert tile["drift"]["quality"] == []
    state.apply_drift(drift("cam-1", clock.now, [psi, frozen, black], baseline_id="b1"))
    tile = state.tiles()["cam-1"]
    assert tile["drift"]["state"] == "drifting"
    assert tile["drift"]["quality"] == ["frozen"]
    assert any("label_distribution" in r for r in tile["drift"]["reasons"])
    windows = state.detail("cam-1")["drift_windows"]  # type: ignore[index]
    assert [w["calibrating"] for w in windows] == [True, False]
    assert windows[1]["stats"]["label_distribution/psi"] == [0.9, 0.25, True]


def test_silence_marks_the_camera_silent_until_a_later_frame_is_predicted() -> None:
    clock = Clock()
    state = FleetState(clock=clock)
    state.apply_prediction(prediction("cam-1", 1, clock.now - 20))
    silence = StatisticTest.measured("silence", "seconds", 12.0, "gt", 10.0)
    state.apply_drift(drift("cam-1", clock.now, [silence], kind="silence", frame_count=0))
    assert state.tiles()["cam-1"]["drift"]["quality"] == ["silent"]
    clock.now += 1
    state.apply_prediction(prediction("cam-1", 2, clock.now))
    assert state.tiles()["cam-1"]["drift"]["quality"] == []


def test_shadow_pair_shows_beside_the_champion_with_disagreement() -> None:
    clock = Clock()
    state = FleetState(clock=clock)
    state.apply_prediction(prediction("cam-1", 3, clock.now, label="orange"))
    pair = ShadowPair(
        camera_id="cam-1",
        seq=3,
        capture_ts_ms=int(clock.now * 1000),
        window=0,
        champion=ModelRef(name="efficientnet_lite0", version="1"),
        candidate=ModelRef(name="fashion", version="2"),
        champion_label="orange",
        champion_score=0.9,
        candidate_label="lemon",
        candidate_score=0.7,
        agree=False,
        champion_infer_ms=20,
        candidate_infer_ms=25,
        worker="w1",
        published_ts_ms=int(clock.now * 1000),
    )
    state.apply_shadow(pair.model_dump(mode="json", by_alias=True))
    shadow = state.tiles()["cam-1"]["shadow"]
    assert shadow["candidate"] == "fashion:2"
    assert (shadow["label"], shadow["champion_label"], shadow["agree"]) == (
        "lemon",
        "orange",
        False,
    )
    assert shadow["recent_disagreements"] == 1


def test_dlq_records_count_per_camera_key() -> None:
    state = FleetState(clock=Clock())
    headers = {"error-kind": b"not_jpeg", "error-message": b"value does not start with SOI"}
    state.apply_dlq("cam-9", headers)
    state.apply_dlq("cam-9", headers)
    state.apply_dlq(None, {"camera-id": b"cam-8", **headers})
    tiles = state.tiles()
    assert tiles["cam-9"]["dlq"]["count"] == 2
    assert tiles["cam-9"]["status"] == "waiting"
    assert tiles["cam-9"]["dlq"]["last"].startswith("not_jpeg:")
    assert tiles["cam-8"]["dlq"]["count"] == 1


def test_malformed_records_are_counted_and_change_nothing() -> None:
    state = FleetState(clock=Clock())
    state.apply_prediction({"camera_id": "cam-1"})  # no seq
    state.apply_prediction({"camera_id": 5, "seq": 1})
    state.apply_prediction({"camera_id": "x" * 500, "seq": 1})
    state.apply_shadow({"camera_id": "cam-1", "kind": "other"})
    state.apply_drift({"camera_id": "cam-2", "statistics": "nonsense", "reasons": 3})
    assert state.camera_ids() == ["cam-2"]
    assert sum(state.bad_records.values()) == 4
    assert state.tiles()["cam-2"]["drift"]["state"] == "ok"


def test_fleet_and_history_are_bounded() -> None:
    clock = Clock()
    state = FleetState(clock=clock, max_cameras=3, history_points=5)
    for camera in ("a", "b", "c", "d"):
        state.apply_prediction(prediction(camera, 1, clock.now))
    for seq in range(20):
        state.apply_prediction(prediction("a", seq, clock.now + seq))
    assert state.camera_ids() == ["a", "b", "c"]
    assert state.refused_cameras == 1
    assert len(state.detail("a")["predictions"]) == 5  # type: ignore[index]


def test_registry_shows_registered_cameras_and_prunes_unregistered_ones() -> None:
    clock = Clock()
    state = FleetState(clock=clock, stale_s=5, forget_s=60)
    state.set_registry([{"camera_id": "lobby", "model": "fashion", "model_version": "3"}])
    state.apply_prediction(prediction("lobby", 1, clock.now))
    state.apply_prediction(prediction("unregistered", 1, clock.now))
    assert state.tiles()["lobby"]["route"] == "fashion:3"
    # When lobby leaves the registry it goes once no longer live
    state.set_registry([])
    assert state.prune() == set()
    clock.now += 16  # one prediction: 0.2 fps, so stale after 3 intervals (15 s)
    assert state.prune() == {"lobby"}
    assert state.take_changes()[1] == {"lobby"}
    # A camera never registered goes after forget_s without records
    clock.now += 60
    assert state.prune() == {"unregistered"}


def test_thumbnail_is_small_and_at_most_one_per_interval() -> None:
    image = np.zeros((720, 1280, 3), np.uint8)
    cv2.circle(image, (640, 360), 200, (0, 200, 255), -1)
    jpeg = encode_jpeg(image, 90)
    thumbs = Thumbnailer(width=320, interval_s=1.0)
    assert thumbs.due("cam-1", 100.0)
    small = thumbs.make("cam-1", jpeg, 100.0)
    assert small is not None
    assert jpeg_dimensions(small) == (320, 180)
    assert len(small) < len(jpeg) / 4
    assert not thumbs.due("cam-1", 100.5)
    assert thumbs.due("cam-1", 101.0)
    assert thumbs.due("cam-2", 100.5)


def test_thumbnail_of_garbage_is_none_and_counted() -> None:
    thumbs = Thumbnailer()
    assert thumbs.make("cam-1", b"not a jpeg", 1.0) is None
    assert thumbs.make("cam-1", b"\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff", 2.0) is None
    assert thumbs.failed == 2


class FakeFrame:
    """What FrameHandler reads of a Kafka message."""

    def __init__(self, camera: str, seq: int, jpeg: bytes) -> None:
        self._key, self._value = camera.encode(), jpeg
        self._headers = [("camera-id", camera.encode()), ("seq", str(seq).encode()),
                         ("capture-ts-ms", str(int(time.time() * 1000)).encode())]  # fmt: skip

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers


def test_frame_too_soon_for_a_thumbnail_is_held_and_shown_once_its_interval_is_over() -> None:
    # Given frames of two colours, the second arriving within the thumbnail interval
    state = FleetState()
    handler = FrameHandler(Settings(), state, Thumbnailer(width=64, interval_s=0.2))
    red, blue = (encode_jpeg(np.full((48, 64, 3), c, np.uint8)) for c in ((0, 0, 255), (255, 0, 0)))
    handler(FakeFrame("cam-1", 1, red))  # type: ignore[arg-type]
    handler(FakeFrame("cam-1", 2, blue))  # type: ignore[arg-type]
    first = state.thumbnail("cam-1")
    assert first is not None and state.tiles()["cam-1"]["frames"] == 2
    handler.flush()
    assert state.thumbnail("cam-1") == first  # still within the interval
    # When the interval is over, the held (newest) frame becomes the thumbnail
    time.sleep(0.25)
    handler.flush()
    thumbnail = state.thumbnail("cam-1")
    assert thumbnail is not None and thumbnail != first
    pixel = cv2.imdecode(np.frombuffer(thumbnail, np.uint8), cv2.IMREAD_COLOR)[10, 10]
    assert pixel[0] > 200 and pixel[2] < 50  # blue (BGR)
    assert handler.held == {}
