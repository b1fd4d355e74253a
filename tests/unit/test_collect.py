"""Collect's decisions on small in-memory inputs: the rate, near-duplicates, bad frames,
and the point-in-time merge that keeps every frame's row (feast#6787)."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from camstream.collect import (
    FeatureJoinError,
    Frame,
    FrameSampler,
    NearDuplicates,
    Outcome,
    RateSampler,
    entity_df,
    feature_value,
    parse_time,
    records_with_features,
    rows_by_key,
    unique_keys,
)
from camstream.errors import ConfigError
from camstream.imaging import encode_jpeg
from camstream.records import FrameHeaders

CAMERA = "street-1"
T0 = 1_780_000_000_000


def _jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A JPEG of random blocks: different seeds give far-apart perceptual hashes."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    return encode_jpeg(np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8)), 90)


def _headers(
    seq: int, ts: int, camera: str = CAMERA, size: tuple[int, int] = (64, 48)
) -> list[tuple[str, bytes]]:
    return FrameHeaders(camera, seq, ts, *size).to_kafka()


def _sampler(tmp_path: Path, every_s: float = 0.0, **kwargs: object) -> FrameSampler:
    return FrameSampler(CAMERA, tmp_path, every_s=every_s, **kwargs)  # type: ignore[arg-type]


def _frame(seq: int, ts: int, camera: str = CAMERA) -> Frame:
    return Frame(camera, seq, ts, f"images/{camera}/{seq}.jpg", f"{seq:064x}", "0" * 16)


# -- sampling ------------------------------------------------------------------------


def test_rate_sampler_allows_one_frame_per_interval_of_capture_time() -> None:
    # Given a 1 s rate and frames every 250 ms of capture time
    rate = RateSampler(1.0)
    kept = []
    # When each due frame is taken
    for ts in range(T0, T0 + 3000, 250):
        if rate.due(CAMERA, ts):
            rate.take(CAMERA, ts)
            kept.append(ts)
    # Then one frame per second is kept, and another camera has its own clock
    assert kept == [T0, T0 + 1000, T0 + 2000]
    assert rate.due("other", T0 + 250)


def test_sampler_keeps_the_exact_bytes_received(tmp_path: Path) -> None:
    # Given a valid frame
    jpeg = _jpeg(1)
    sampler = _sampler(tmp_path)
    # When it is offered
    outcome = sampler.offer(CAMERA.encode(), _headers(7, T0), jpeg)
    # Then its bytes are the image file, and the pending frame says where and what
    assert outcome == Outcome.KEPT
    (frame,) = sampler.take_pending()
    assert (tmp_path / frame.path).read_bytes() == jpeg
    assert frame.path == f"images/{CAMERA}/7.jpg"
    assert frame.sha256 == hashlib.sha256(jpeg).hexdigest()
    assert (frame.camera, frame.seq, frame.capture_ts_ms) == (CAMERA, 7, T0)
    assert len(frame.phash) == 16
    assert sampler.take_pending() == []


def test_sampler_drops_a_repeated_frame_as_a_near_duplicate(tmp_path: Path) -> None:
    # Given a frame, the same image again later, and a different image
    sampler = _sampler(tmp_path)
    first, other = _jpeg(1), _jpeg(2)
    # When they are offered in turn
    outcomes = [
        sampler.offer(CAMERA.encode(), _headers(1, T0), first),
        sampler.offer(CAMERA.encode(), _headers(2, T0 + 5000), first),
        sampler.offer(CAMERA.encode(), _headers(3, T0 + 6000), other),
    ]
    # Then the repeat is dropped and counted, and its file never written
    assert outcomes == [Outcome.KEPT, Outcome.NEAR_DUPLICATE, Outcome.KEPT]
    assert sampler.counts[Outcome.NEAR_DUPLICATE] == 1
    assert not (tmp_path / f"images/{CAMERA}/2.jpg").exists()


def test_near_duplicates_compare_with_recent_frames_of_the_same_camera_only() -> None:
    near = NearDuplicates(bits=2, window=2)
    near.add(CAMERA, "ffff000000000000")
    assert near.matches(CAMERA, "ffff000000000003")  # 2 bits apart
    assert not near.matches(CAMERA, "ffff000000000007")  # 3 bits apart
    assert not near.matches("other", "ffff000000000000")
    near.add(CAMERA, "0000000000000001")
    near.add(CAMERA, "0000000000000002")
    assert not near.matches(CAMERA, "ffff000000000000")  # out of the window


def test_sampler_honours_the_rate_and_spends_no_decode_on_skipped_frames(
    tmp_path: Path,
) -> None:
    # Given a 1 s rate and distinct frames every 200 ms of capture time
    sampler = _sampler(tmp_path, every_s=1.0)
    # When ten are offered
    outcomes = [
        sampler.offer(CAMERA.encode(), _headers(seq, T0 + 200 * seq), _jpeg(seq))
        for seq in range(10)
    ]
    # Then one in five is kept
    assert outcomes.count(Outcome.KEPT) == 2
    assert outcomes.count(Outcome.SKIPPED_RATE) == 8
    kept = [f.capture_ts_ms for f in sampler.take_pending()]
    assert kept == [T0, T0 + 1000]


def _no_scan(jpeg: bytes) -> bytes:
    """The JPEG's header up to its frame header, then EOI: dimensions, no pixels."""
    sof = jpeg.index(b"\xff\xc0")
    length = int.from_bytes(jpeg[sof + 2 : sof + 4], "big")
    return jpeg[: sof + 2 + length] + b"\xff\xd9"


def test_sampler_skips_and_counts_invalid_frames_without_raising(tmp_path: Path) -> None:
    # Given frames of the camera with bad headers, a bad value, or pixels that do not decode
    jpeg = _jpeg(1)
    key = CAMERA.encode()
    bad = [
        (None, jpeg),
        ([("camera-id", CAMERA.encode())], jpeg),
        ([*_headers(1, T0)[:2], ("seq", b"-1"), *_headers(1, T0)[3:]], jpeg),
        (_headers(1, T0, camera="someone-else"), jpeg),
        (_headers(1, T0), b""),
        (_headers(1, T0), b"not a jpeg"),
        (_headers(1, T0, size=(640, 480)), jpeg),
        (_headers(1, T0), _no_scan(jpeg)),
    ]
    sampler = _sampler(tmp_path)
    # When they are offered
    outcomes = [sampler.offer(key, headers, value) for headers, value in bad]
    # Then each is counted invalid, nothing is kept, and a good frame still is
    assert outcomes == [Outcome.INVALID] * len(bad)
    assert sampler.offer(key, _headers(2, T0), jpeg) == Outcome.KEPT


def test_sampler_passes_over_other_cameras_and_frames_outside_the_range(
    tmp_path: Path,
) -> None:
    sampler = _sampler(tmp_path, since_ms=T0, until_ms=T0 + 1000)
    assert sampler.offer(b"other", _headers(1, T0, camera="other"), _jpeg(1)) == (
        Outcome.OTHER_CAMERA
    )
    assert sampler.offer(None, None, None) == Outcome.OTHER_CAMERA
    assert sampler.offer(CAMERA.encode(), _headers(2, T0 - 1), _jpeg(2)) == Outcome.OUTSIDE_RANGE
    assert sampler.offer(CAMERA.encode(), _headers(3, T0 + 1001), _jpeg(3)) == (
        Outcome.OUTSIDE_RANGE
    )
    assert sampler.offer(CAMERA.encode(), _headers(4, T0 + 1000), _jpeg(4)) == Outcome.KEPT


def test_sampler_skips_seqs_the_dataset_already_holds(tmp_path: Path) -> None:
    sampler = _sampler(tmp_path, known_paths=[f"images/{CAMERA}/5.jpg"])
    assert sampler.offer(CAMERA.encode(), _headers(5, T0), _jpeg(5)) == Outcome.ALREADY_COLLECTED
    assert sampler.offer(CAMERA.encode(), _headers(6, T0), _jpeg(6)) == Outcome.KEPT


# -- the point-in-time merge ---------------------------------------------------------


def _answer(rows: list[tuple[str, int, str]]) -> pd.DataFrame:
    """What get_historical_features(...).to_df() returns for camera_meta_fv:site."""
    table = entity_df([(camera, ts) for camera, ts, _site in rows])
    table["site"] = [site for _camera, _ts, site in rows]
    return table


def test_frames_sharing_a_camera_and_timestamp_all_keep_their_row() -> None:
    # Given three frames of one camera at ONE capture time (and one of another camera)
    frames = [_frame(1, T0), _frame(2, T0), _frame(3, T0), _frame(9, T0, camera="b")]
    # When the query holds each (camera, timestamp) once, as the file offline store
    # keeps only one row per key (feast#6787)
    keys = unique_keys(frames)
    assert keys == [("b", T0), (CAMERA, T0)]
    assert len(entity_df(keys)) == 2
    found = rows_by_key(_answer([(CAMERA, T0, "north"), ("b", T0, "south")]), ["site"], set(keys))
    records, complete = records_with_features(frames, [found], ["site"])
    # Then every frame has a record carrying its key's row
    assert [r.seq for r in records] == [1, 2, 3, 9]
    assert [r.features["site"] for r in records] == ["north", "north", "north", "south"]
    assert complete == 4
    assert all(r.origin == "camera" and r.label == "" for r in records)


def test_a_frame_the_offline_store_has_no_row_for_keeps_none_features() -> None:
    # Given two frames, only the later one inside the store's answer (e.g. captured
    # before its camera was registered: Feast drops that entity row)
    frames = [_frame(1, T0), _frame(2, T0 + 1000)]
    found = rows_by_key(_answer([(CAMERA, T0 + 1000, "north")]), ["site"], set(unique_keys(frames)))
    # When the answer is merged back
    records, complete = records_with_features(frames, [found], ["site"])
    # Then both frames are kept, the first with None, and only one counts as complete
    assert [r.features for r in records] == [{"site": None}, {"site": "north"}]
    assert complete == 1


def test_each_view_fills_its_own_features() -> None:
    frames = [_frame(1, T0)]
    meta = {(CAMERA, T0): {"site": "north"}}
    records, complete = records_with_features(frames, [meta, {}], ["site", "top_label"])
    assert records[0].features == {"site": "north", "top_label": None}
    assert complete == 0


def test_an_answer_with_a_key_twice_or_unasked_is_refused() -> None:
    asked = {(CAMERA, T0)}
    twice = _answer([(CAMERA, T0, "north"), (CAMERA, T0, "north")])
    with pytest.raises(FeatureJoinError):
        rows_by_key(twice, ["site"], asked)
    with pytest.raises(FeatureJoinError):
        rows_by_key(_answer([("b", T0, "x")]), ["site"], asked)


def test_timestamps_come_back_as_the_exact_capture_milliseconds() -> None:
    ts = T0 + 123
    table = _answer([(CAMERA, ts, "north")])
    table["event_timestamp"] = table["event_timestamp"].dt.tz_convert("Europe/Paris")
    assert list(rows_by_key(table, ["site"], {(CAMERA, ts)})) == [(CAMERA, ts)]


def test_feature_values_are_json_safe() -> None:
    assert feature_value(np.float32(0.2)) == 0.2
    assert feature_value(float("nan")) is None
    assert feature_value(np.float64(math.inf)) is None
    assert feature_value(np.bool_(True)) is True
    assert type(feature_value(np.int64(3))) is int
    assert feature_value(pd.NA) is None
    assert feature_value(None) is None
    assert feature_value("north") == "north"
    assert feature_value(0.1) == 0.1


# -- times ---------------------------------------------------------------------------


def test_parse_time_reads_iso_relative_and_epoch_times() -> None:
    now = T0
    assert parse_time("-10m", now) == now - 600_000
    assert parse_time("-1.5h", now) == now - 5_400_000
    assert parse_time("2026-05-01T12:00:00", now) == parse_time("2026-05-01T12:00:00+00:00")
    assert parse_time("2026-05-01T14:00:00+02:00") == parse_time("2026-05-01T12:00:00Z")
    assert parse_time(str(T0)) == T0
    with pytest.raises(ConfigError, match="ISO 8601"):
        parse_time("yesterday")
