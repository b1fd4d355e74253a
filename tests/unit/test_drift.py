"""streams.drift: windows, calibration, flags with reasons, data quality, restarts."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from camstream.imaging import FINGERPRINT
from camstream.records import DriftRecord, ModelRef, render_schema
from streams import drift_state
from streams.drift import DriftMonitor, ReferenceProfile, Thresholds, drift_feature_row
from streams.drift_stats import Sample, compare
from streams.quality import QualityThresholds

THRESHOLDS = Thresholds(psi=0.25, js=0.35, ks_pvalue=0.001, confidence_shift=0.15)
MODEL = ModelRef(name="m", version="1")
LABELS = ["street sign", "crosswalk", "bicycle"]
WINDOW = 50


def _reference(rng: np.random.Generator, profile_id: str = "ref-1") -> ReferenceProfile:
    return ReferenceProfile(
        id=profile_id,
        labels={"street sign": 0.5, "crosswalk": 0.3, "bicycle": 0.2},
        confidence=rng.normal(0.6, 0.1, 400).tolist(),
        image_stats={"brightness": rng.normal(120, 10, 400).tolist()},
    )


def _frame(
    rng: np.random.Generator, n: int, brightness: float = 120.0, label: str | None = None
) -> tuple[str, float, dict[str, float]]:
    stats = {
        "brightness": float(rng.normal(brightness, 10)),
        "dark_fraction": 0.01,
        "bright_fraction": 0.01,
        FINGERPRINT: float(n),
    }
    return label or LABELS[n % 3], float(rng.normal(0.6, 0.05)), stats


def _monitor(rng: np.random.Generator, state: Path | None = None, **kw: object) -> DriftMonitor:
    return DriftMonitor(
        _reference(rng),
        THRESHOLDS,
        WINDOW,
        MODEL,
        "w",
        calibration_frames=kw.pop("calibration_frames", 4 * WINDOW),  # type: ignore[arg-type]
        state_dir=state,
        **kw,  # type: ignore[arg-type]
    )


def _feed(
    monitor: DriftMonitor, rng: np.random.Generator, frames: int, start: int = 0, **kw: object
) -> list[DriftRecord]:
    records: list[DriftRecord] = []
    for n in range(start, start + frames):
        label, score, stats = _frame(rng, n, **kw)  # type: ignore[arg-type]
        records += monitor.observe("cam", 1000 + 100 * n, label, score, stats)
    return records


def test_window_drawn_like_the_reference_is_not_flagged() -> None:
    rng = np.random.default_rng(1)
    window = Sample()
    for n in range(50):
        window.add(*_frame(rng, n))
    tests = compare(window, _reference(rng).baseline(), THRESHOLDS)
    assert not [t for t in tests if t.drifted]
    assert {(t.name, t.test) for t in tests} >= {
        ("label_distribution", "psi"),
        ("label_distribution", "jensen_shannon"),
        ("brightness", "ks"),
        ("confidence", "mean_shift"),
    }


def test_darkened_frames_and_new_labels_are_flagged() -> None:
    rng = np.random.default_rng(2)
    window = Sample()
    for n in range(50):
        window.add(*_frame(rng, n, brightness=70, label="jellyfish"))
    drifted = {
        (t.name, t.test)
        for t in compare(window, _reference(rng).baseline(), THRESHOLDS)
        if t.drifted
    }
    assert {("brightness", "ks"), ("label_distribution", "psi")} <= drifted


def test_first_windows_calibrate_and_are_not_flagged_by_scene_differences() -> None:
    # Given a camera whose scene is far darker than the model's reference profile
    rng = np.random.default_rng(3)
    monitor = _monitor(rng)
    # When its first windows arrive, then they calibrate, compared with the reference
    # for information only
    calibrating = _feed(monitor, rng, 4 * WINDOW, brightness=60)
    assert len(calibrating) == 4 and all(r.calibrating and not r.drift for r in calibrating)
    assert any(t.drifted and t.baseline == "reference" for t in calibrating[0].statistics)
    # and later windows of the same scene are compared with the camera's own baseline
    later = _feed(monitor, rng, 6 * WINDOW, start=4 * WINDOW, brightness=60)
    assert all(not r.calibrating and not r.drift for r in later), [r.reasons for r in later]
    assert later[0].baseline_id and later[0].baseline_id.startswith("cam@ref-1")
    assert {t.baseline for t in later[0].statistics if t.name == "brightness"} == {"camera"}


def test_shift_after_calibration_is_flagged_with_reasons() -> None:
    rng = np.random.default_rng(4)
    monitor = _monitor(rng)
    _feed(monitor, rng, 4 * WINDOW)
    records = _feed(monitor, rng, 2 * WINDOW, start=4 * WINDOW, brightness=40)
    assert all(r.drift for r in records)
    assert any(reason.startswith("brightness ks=") for reason in records[0].reasons)
    assert len(records[0].reasons) == sum(1 for t in records[0].statistics if t.drifted)


def test_frozen_and_black_frames_are_flagged_even_while_calibrating() -> None:
    rng = np.random.default_rng(5)
    monitor = _monitor(rng)
    frozen = {"brightness": 100.0, "dark_fraction": 0.0, "bright_fraction": 0.0, FINGERPRINT: 7.0}
    records = []
    for n in range(WINDOW):
        records += monitor.observe("cam", n * 100, "pole", 0.5, frozen)
    assert records[0].calibrating and records[0].drift
    assert any(r.startswith("frozen max_identical_run") for r in records[0].reasons)
    black = {"brightness": 3.0, "dark_fraction": 0.99, "bright_fraction": 0.0}
    records = []
    for n in range(WINDOW):
        records += monitor.observe("cam", 10_000 + n * 100, "pole", 0.5, {**black, FINGERPRINT: n})
    assert [r for r in records[0].reasons if r.startswith("black_frames share")]
    assert not [r for r in records[0].reasons if r.startswith("frozen")]


def test_silent_camera_is_reported_once_and_rearmed_by_new_frames() -> None:
    rng = np.random.default_rng(6)
    monitor = _monitor(rng, quality=QualityThresholds(silence_s=5))
    _feed(monitor, rng, 3)
    last = 1000 + 200
    assert monitor.tick(last + 1000) == []
    silent = monitor.tick(last + 7000)
    assert [r.kind for r in silent] == ["silence"] and silent[0].drift
    assert silent[0].frame_count == 0 and silent[0].reasons[0].startswith("silence seconds=")
    assert monitor.tick(last + 9000) == []
    monitor.observe("cam", last + 9500, *_frame(rng, 99))
    assert len(monitor.tick(last + 20_000)) == 1


def test_windows_close_by_capture_time_and_by_the_clock_when_a_camera_goes_quiet() -> None:
    # Given windows of one second of capture time (the frame count no longer decides)
    rng = np.random.default_rng(20)
    monitor = _monitor(rng, window_ms=1000, calibration_frames=0)
    # When frames arrive 100 ms apart from t=1000
    records = _feed(monitor, rng, 25)  # captures 1000, 1100, ... 3400
    # Then the frame at t=2000 closes the first window with the ten before it, and the
    # one at t=3000 the second
    assert [(r.window_start_ms, r.window_end_ms, r.frame_count) for r in records] == [
        (1000, 1900, 10),
        (2000, 2900, 10),
    ]
    # and a window left open by a camera that went quiet closes on the clock, once two
    # window lengths have passed since it opened (a late frame still has time to come)
    assert monitor.tick(3000 + 1999) == []
    (quiet,) = monitor.tick(3000 + 2000)
    assert (quiet.kind, quiet.window_start_ms, quiet.frame_count) == ("window", 3000, 5)


def _scene(rng: np.random.Generator, n: int, **shift: float) -> tuple[str, float, dict[str, float]]:
    """A frame with every image statistic the worker measures, ``shift`` added to some."""
    stats = {
        "brightness": rng.normal(120, 10),
        "contrast": rng.normal(50, 5),
        "sharpness": rng.normal(300, 30),
        "colourfulness": rng.normal(40, 4),
        "dark_fraction": abs(rng.normal(0.02, 0.005)),
        "bright_fraction": abs(rng.normal(0.02, 0.005)),
    }
    for name, delta in shift.items():
        stats[name] += delta
    stats = {k: float(v) for k, v in stats.items()} | {FINGERPRINT: float(n)}
    return LABELS[n % 3], float(rng.normal(0.6, 0.05)), stats


def _calibrated(rng: np.random.Generator) -> DriftMonitor:
    monitor = _monitor(rng)
    for n in range(4 * WINDOW):
        monitor.observe("cam", 1000 + 100 * n, *_scene(rng, n))
    assert monitor.cameras["cam"].baseline is not None
    return monitor


@pytest.mark.parametrize(
    ("statistic", "delta"),
    [
        ("contrast", -30.0),  # a washed-out, foggy image
        ("colourfulness", -30.0),  # colour lost (an IR switch, a failing sensor)
        ("dark_fraction", 0.25),  # more crushed pixels, not yet black frames
        ("bright_fraction", 0.25),  # more clipped pixels, not yet over-exposed frames
    ],
)
def test_a_shift_of_contrast_colourfulness_or_clipping_alone_is_flagged_by_ks(
    statistic: str, delta: float
) -> None:
    # Given a calibrated camera
    rng = np.random.default_rng(21)
    monitor = _calibrated(rng)
    start = 4 * WINDOW
    # When one image statistic shifts while the labels and the rest stay as they were
    records = []
    for n in range(start, start + WINDOW):
        records += monitor.observe("cam", 1000 + 100 * n, *_scene(rng, n, **{statistic: delta}))
    # Then the window drifts on that statistic's KS test, and on no other image statistic
    (record,) = records
    assert not record.calibrating
    flagged = {(t.name, t.test) for t in record.statistics if t.drifted}
    assert (statistic, "ks") in flagged, record.reasons
    assert {name for name, test in flagged if test == "ks"} == {statistic}, record.reasons
    assert any(reason.startswith(f"{statistic} ks=") for reason in record.reasons)


def test_adwin_flags_a_sudden_change_of_confidence_within_a_window() -> None:
    # Given a calibrated camera whose confidences are steady
    rng = np.random.default_rng(22)
    monitor = _calibrated(rng)
    start = 4 * WINDOW
    steady = []
    for n in range(start, start + WINDOW):
        steady += monitor.observe("cam", 1000 + 100 * n, *_scene(rng, n))
    adwin = [t for t in steady[0].statistics if t.test == "adwin"]
    assert [(t.name, t.drifted) for t in adwin] == [("confidence", False)]
    # When the model's confidence falls from 0.6 to 0.2 on every frame of the next window
    records = []
    for n in range(start + WINDOW, start + 2 * WINDOW):
        label, _score, stats = _scene(rng, n)
        records += monitor.observe(
            "cam", 1000 + 100 * n, label, float(rng.normal(0.2, 0.05)), stats
        )
    # Then ADWIN saw the change inside the window, and says so
    (record,) = records
    (test,) = [t for t in record.statistics if t.test == "adwin"]
    assert test.name == "confidence" and test.drifted and test.value >= 1
    assert any(reason.startswith("confidence adwin=") for reason in record.reasons)


def test_over_exposed_frames_are_flagged_even_while_calibrating() -> None:
    # Given a calibrating camera whose frames are mostly clipped white (distinct frames:
    # not frozen)
    rng = np.random.default_rng(23)
    monitor = _monitor(rng)
    records = []
    for n in range(WINDOW):
        label, score, stats = _scene(rng, n)
        if n % 2 == 0:
            stats |= {"bright_fraction": 0.9, "brightness": 245.0}
        records += monitor.observe("cam", 1000 + 100 * n, label, score, stats)
    # Then the window is flagged for over-exposed frames (half of them; the limit is 20%)
    (record,) = records
    assert record.calibrating and record.drift
    (test,) = [t for t in record.statistics if t.name == "overexposed_frames"]
    assert test.drifted and test.value == pytest.approx(0.5)
    assert [r for r in record.reasons if r.startswith("overexposed_frames share")]
    assert not [r for r in record.reasons if r.startswith(("frozen", "black_frames"))]


def test_state_survives_a_restart(tmp_path: Path) -> None:
    # Given a camera calibrated, half-way through a window, and checkpointed
    rng = np.random.default_rng(7)
    monitor = _monitor(rng, tmp_path)
    _feed(monitor, rng, 4 * WINDOW + WINDOW // 2)
    monitor.checkpoint()
    baseline = monitor.cameras["cam"].baseline
    assert baseline is not None
    open_window = monitor.cameras["cam"].window
    assert open_window is not None
    # When a new worker starts on the same state folder
    restarted = _monitor(np.random.default_rng(7), tmp_path)
    records = _feed(restarted, rng, WINDOW // 2, start=4 * WINDOW + WINDOW // 2)
    # Then the open window completes where it was, against the same baseline: the same
    # id, the same label counts and the same calibrated limits
    assert len(records) == 1 and records[0].frame_count == WINDOW
    assert records[0].window_start_ms == open_window.start_ms
    assert not records[0].calibrating and records[0].baseline_id == baseline.id
    again = restarted.cameras["cam"].baseline
    assert again is not None and again.id == baseline.id
    assert again.label_counts == baseline.label_counts
    assert again.critical == baseline.critical
    assert again.critical  # calibrated limits, not the configured floors only


def test_a_new_reference_profile_recalibrates(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    monitor = _monitor(rng, tmp_path)
    _feed(monitor, rng, 5 * WINDOW)
    monitor.checkpoint()
    upgraded = DriftMonitor(
        _reference(rng, "ref-2"), THRESHOLDS, WINDOW, MODEL, "w", state_dir=tmp_path
    )
    records = _feed(upgraded, rng, WINDOW, start=5 * WINDOW)
    assert records[0].calibrating and records[0].reference_profile_id == "ref-2"


def test_records_validate_against_the_published_schema() -> None:
    rng = np.random.default_rng(9)
    monitor = _monitor(rng)
    records = _feed(monitor, rng, 6 * WINDOW)
    records += monitor.tick(10**9) + monitor.tick(10**9 + 60_000)
    validator = jsonschema.Draft202012Validator(json.loads(render_schema(type(records[0]))))
    assert {r.kind for r in records} == {"window", "silence"}
    for record in records:
        validator.validate(json.loads(record.to_json_bytes()))
        assert record.drift == bool(record.reasons)


def test_feature_row_matches_the_feast_drift_view() -> None:
    from feast.types import Bool, Int64, String

    from features.cameras import camera_drift_fv

    # Given a drift record that flagged something (frozen frames: one fingerprint)
    rng = np.random.default_rng(10)
    frozen = {"brightness": 100.0, "dark_fraction": 0.0, "bright_fraction": 0.0, FINGERPRINT: 7.0}
    monitor = _monitor(rng)
    (record,) = [r for n in range(WINDOW) for r in monitor.observe("cam", n, "pole", 0.5, frozen)]
    assert record.drift and record.reasons
    # When it becomes a row for the push source
    row = drift_feature_row(record)
    # Then the row has exactly the view's columns (with its entity and timestamp), of
    # the view's types, holding the record's values
    schema = {f.name: f.dtype for f in camera_drift_fv.schema}
    assert set(row) == {*schema, "camera_id", "event_timestamp"}
    python_type = {Bool: bool, Int64: int, String: str}
    for name, dtype in schema.items():
        assert type(row[name]) is python_type[dtype], (name, row[name], dtype)
    assert row["camera_id"] == record.camera_id
    assert row["event_timestamp"] == datetime.fromtimestamp(record.window_end_ms / 1000, tz=UTC)
    assert row["drift"] is record.drift
    assert row["drift_reasons"] == "; ".join(record.reasons)
    assert row["drift_window_end_ms"] == record.window_end_ms
    assert row["reference_profile_id"] == record.reference_profile_id == "ref-1"


# The record's contract: every flag follows from the record's own fields -----------------


def _rule(test: dict[str, Any]) -> bool:
    """`drifted` as a consumer in another language recomputes it from the schema's words."""
    value, threshold = test["value"], test["threshold"]
    beyond = (
        threshold is None
        or {
            "gt": value > threshold if threshold is not None else True,
            "ge": value >= threshold if threshold is not None else True,
            "abs_gt": abs(value) > threshold if threshold is not None else True,
        }[test["comparison"]]
    )
    limit = test["p_value_limit"]
    return beyond and (limit is None or test["p_value"] < limit)


def _varied_records() -> list[DriftRecord]:
    """Real records of every kind: calibrating, calibrated, shifted, broken, silent."""
    rng = np.random.default_rng(11)
    monitor = _monitor(rng, quality=QualityThresholds(silence_s=5))
    records = _feed(monitor, rng, 4 * WINDOW, brightness=60)  # calibrating, far from reference
    records += _feed(monitor, rng, 2 * WINDOW, start=4 * WINDOW, brightness=60)
    records += _feed(monitor, rng, 2 * WINDOW, start=6 * WINDOW, brightness=20, label="kite")
    frozen = {"brightness": 3.0, "dark_fraction": 0.99, "bright_fraction": 0.0, FINGERPRINT: 1.0}
    for n in range(WINDOW):
        records += monitor.observe("cam", 10**6 + 100 * n, "pole", 0.5, frozen)
    records += monitor.tick(10**7) + monitor.tick(10**7 + 60_000)
    return records


def test_every_statistics_flag_follows_from_the_records_own_fields() -> None:
    # Given real drift records of every kind, as a consumer parses them
    records = _varied_records()
    documents = [json.loads(r.to_json_bytes()) for r in records]
    assert {d["kind"] for d in documents} == {"window", "silence"}
    assert {d["calibrating"] for d in documents} == {True, False}
    seen = set()
    for document in documents:
        for test in document["statistics"]:
            # Then each statistic's flag is the documented rule applied to its fields
            assert test["drifted"] == _rule(test), test
            seen.add((test["test"], test["drifted"]))
        # and the record's flag and reasons follow from the statistics that count
        counted = [
            t
            for t in document["statistics"]
            if not document["calibrating"] or t["baseline"] == "none"
        ]
        assert document["drift"] == any(t["drifted"] for t in counted)
        assert len(document["reasons"]) == sum(t["drifted"] for t in counted)
    assert {("ks", True), ("ks", False), ("psi", True), ("max_identical_run", True)} <= seen


def test_ks_names_its_p_value_limit_and_no_placeholder_threshold_while_calibrating() -> None:
    records = _varied_records()
    calibrating = [t for t in records[0].statistics if t.test == "ks"]
    calibrated = [t for r in records if not r.calibrating for t in r.statistics if t.test == "ks"]
    assert calibrating and calibrated
    for test in calibrating + calibrated:
        assert test.p_value_limit == THRESHOLDS.ks_pvalue and test.p_value is not None
    # while calibrating no distance limit exists (the p-value alone decides): null, not 0.0
    assert all(t.threshold is None and t.baseline == "reference" for t in calibrating)
    # once calibrated, the limit is the camera's own: what its calibration windows reached
    # (0 for a statistic that never moved there, here the constant dark_fraction)
    assert all(t.threshold is not None for t in calibrated)
    assert all(t.threshold > 0 for t in calibrated if t.name == "brightness")  # type: ignore[operator]
    adwin = [t for r in records for t in r.statistics if t.test == "adwin"]
    assert adwin and all(t.threshold == 1.0 and t.comparison == "ge" for t in adwin)


def test_a_statistic_that_cannot_be_measured_is_left_out_never_written_as_null() -> None:
    # Given a window whose brightness is NaN on some frames and whose confidences are NaN
    rng = np.random.default_rng(12)
    monitor = _monitor(rng, calibration_frames=0)
    records = []
    for n in range(WINDOW):
        label, _score, stats = _frame(rng, n)
        if n % 5 == 0:
            stats["brightness"] = float("nan")
        records += monitor.observe("cam", 1000 + 100 * n, label, float("nan"), stats)
    # When it closes, then the record is valid JSON without NaN or null measurements
    (record,) = records

    def no_nan(token: str) -> float:
        raise AssertionError(f"{token} in a drift record")

    document = json.loads(record.to_json_bytes(), parse_constant=no_nan)
    validator = jsonschema.Draft202012Validator(json.loads(render_schema(DriftRecord)))
    validator.validate(document)
    tests = {(t["name"], t["test"]): t for t in document["statistics"]}
    # the NaN confidences gave no mean shift; brightness was measured on the other frames
    assert ("confidence", "mean_shift") not in tests
    assert all(t["value"] is not None for t in tests.values())
    assert ("brightness", "ks") in tests and tests[("brightness", "ks")]["sample_size"] == 4


# State on disk: incremental, and a restart anywhere changes nothing -------------------


def _frames(
    seed: int, count: int, start: int = 0
) -> list[tuple[int, str, float, dict[str, float]]]:
    rng = np.random.default_rng(seed)
    out = []
    for n in range(start, start + count):
        label, score, stats = _frame(rng, n, brightness=120 if n < 7 * WINDOW else 60)
        out.append((1000 + 100 * n, label, score, stats))
    return out


def _play(
    monitor: DriftMonitor, frames: list[tuple[int, str, float, dict[str, float]]]
) -> list[DriftRecord]:
    records = []
    for capture_ms, label, score, stats in frames:
        records += monitor.observe("cam", capture_ms, label, score, stats)
        if capture_ms % 1000 == 0:
            records += monitor.tick(capture_ms)
    return records


def _fresh(state: Path | None) -> DriftMonitor:
    return _monitor(np.random.default_rng(0), state)


def test_a_restart_anywhere_gives_the_records_of_an_uninterrupted_run(tmp_path: Path) -> None:
    # Given the frames of a camera that calibrates, runs undisturbed, then darkens
    frames = _frames(13, 9 * WINDOW)
    expected = [r.model_dump() for r in _play(_fresh(None), frames)]
    # When a worker stops (checkpointing) and restarts mid-calibration, at a window's close,
    # mid-window after calibration, and twice in a row
    cuts = [0, 2 * WINDOW + 17, 4 * WINDOW, 5 * WINDOW + 31, 5 * WINDOW + 32, 9 * WINDOW]
    records = []
    for start, stop in itertools.pairwise(cuts):
        monitor = _fresh(tmp_path)
        records += _play(monitor, frames[start:stop])
        monitor.checkpoint()
    # Then it publishes exactly what an uninterrupted worker does
    assert [r.model_dump() for r in records] == expected
    assert any(r["drift"] for r in expected) and any(r["calibrating"] for r in expected)


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_state_writes_are_incremental_and_the_baseline_is_written_once(tmp_path: Path) -> None:
    # Given a camera that has calibrated
    monitor = _fresh(tmp_path)
    frames = _frames(14, 8 * WINDOW)
    _play(monitor, frames[: 4 * WINDOW])
    camera = tmp_path / "cam"
    baseline = (camera / "baseline.json").stat()
    assert not (camera / "calibration.jsonl").exists()
    # When more frames arrive, then a checkpoint only appends them to the journal
    _play(monitor, frames[4 * WINDOW : 4 * WINDOW + 10])
    before = _files(tmp_path)
    monitor.tick(10**6)
    after = _files(tmp_path)
    assert {k for k in after if after[k] != before[k]} == {"cam/journal.jsonl"}
    assert after["cam/journal.jsonl"][0] > before["cam/journal.jsonl"][0]
    # and nothing at all when nothing arrived
    monitor.tick(10**6 + 60_000)  # (the camera is reported silent: one event line)
    settled = _files(tmp_path)
    monitor.checkpoint()
    assert _files(tmp_path) == settled
    # and the baseline is never written again
    _play(monitor, frames[4 * WINDOW + 10 :])
    assert (camera / "baseline.json").stat().st_mtime_ns == baseline.st_mtime_ns


def test_a_crash_during_a_windows_close_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given frames up to a checkpoint, then a crash while the next window's close is
    # written (its lines appended, its snapshot not yet in place)
    frames = _frames(15, 6 * WINDOW)
    expected = [r.model_dump() for r in _play(_fresh(None), frames)]
    monitor = _fresh(tmp_path)
    records = _play(monitor, frames[: 3 * WINDOW - 1])
    monitor.checkpoint()
    real_replace = drift_state._replace

    def crash(path: Path, text: str) -> None:
        if path.name == "snapshot.json":
            raise OSError("killed")
        real_replace(path, text)

    monkeypatch.setattr(drift_state, "_replace", crash)
    with pytest.raises(OSError, match="killed"):
        _play(monitor, frames[3 * WINDOW - 1 : 3 * WINDOW])
    monkeypatch.setattr(drift_state, "_replace", real_replace)
    with (tmp_path / "cam" / "journal.jsonl").open("a") as journal:
        journal.write('{"t": 1, "a"')  # and a line torn by the crash
    # When a new worker starts and the unacknowledged frame is delivered again
    records += _play(_fresh(tmp_path), frames[3 * WINDOW - 1 :])
    # Then the records are those of an uninterrupted run
    assert [r.model_dump() for r in records] == expected


def test_an_unreadable_state_starts_the_camera_afresh(tmp_path: Path) -> None:
    monitor = _fresh(tmp_path)
    _play(monitor, _frames(16, 2 * WINDOW))
    (tmp_path / "cam" / "snapshot.json").write_text("{not json")
    restarted = _fresh(tmp_path)
    assert "cam" not in restarted.cameras
    records = _play(restarted, _frames(16, WINDOW, start=2 * WINDOW))
    assert len(records) == 1 and records[0].calibrating


def test_state_of_the_previous_layout_keeps_last_seen_times_and_recalibrates(
    tmp_path: Path,
) -> None:
    # Given a state file written by the previous release (one JSON file per camera)
    legacy = {
        "version": 1,
        "reference_profile_id": "ref-1",
        "window": None,
        "calibration": {"labels": [], "confidence": [], "stats": {}},
        "baseline": None,
        "freeze": {"last": 3.0, "run": 4},
        "last_capture_ms": 5_000,
        "last_arrival_ms": 6_000,
        "silent": False,
        "history": [0.5, 0.6],
    }
    (tmp_path / "cam%2F1.json").write_text(json.dumps(legacy))
    # When the new release starts on it
    monitor = _fresh(tmp_path)
    # Then the camera keeps when it was last seen and its freeze run, in the new layout
    camera = monitor.cameras["cam/1"]
    assert (camera.last_capture_ms, camera.last_arrival_ms) == (5_000, 6_000)
    assert (camera.freeze.last, camera.freeze.run) == (3.0, 4)
    assert not (tmp_path / "cam%2F1.json").exists() and (tmp_path / "cam%2F1").is_dir()
    assert "cam/1" in _fresh(tmp_path).cameras


def test_a_camera_moved_to_another_version_calibrates_again_and_says_so(tmp_path: Path) -> None:
    # Given a camera calibrated under the default version (2 windows of calibration)
    rng = np.random.default_rng(21)
    monitor = _monitor(rng, tmp_path, calibration_frames=2 * WINDOW)
    calibrated = _feed(monitor, rng, 3 * WINDOW)
    assert [r.calibrating for r in calibrated] == [True, True, False]
    assert all(r.model == MODEL and r.recalibrated_from is None for r in calibrated)

    # When a promotion moves it to another version, with its own reference profile
    promoted = ModelRef(name="m", version="2")
    new_reference = _reference(rng, "ref-2")
    moved: list[DriftRecord] = []
    for n in range(3 * WINDOW, 6 * WINDOW):
        label, score, stats = _frame(rng, n)
        moved += monitor.observe(
            "cam", 1000 + 100 * n, label, score, stats, model=promoted, reference=new_reference
        )

    # Then its windows name the new version and profile, it calibrates again from the
    # switch, and only the first record after the switch names the version it left
    assert [r.calibrating for r in moved] == [True, True, False]
    assert all(r.model == promoted and r.reference_profile_id == "ref-2" for r in moved)
    assert [r.recalibrated_from for r in moved] == [MODEL, None, None]
    assert moved[2].baseline_id is not None and "ref-2" in moved[2].baseline_id
    assert moved[2].baseline_id != calibrated[2].baseline_id  # a new baseline, not the old
    # ...and a restarted monitor keeps that camera's state under the new profile
    monitor.checkpoint()
    restarted = _monitor(rng, tmp_path, calibration_frames=2 * WINDOW)
    label, score, stats = _frame(rng, 6 * WINDOW)
    restarted.observe(
        "cam", 1000 + 100 * 6 * WINDOW, label, score, stats, model=promoted, reference=new_reference
    )
    camera = restarted.cameras["cam"]
    assert camera.baseline is not None and camera.baseline.id == moved[2].baseline_id
    assert camera.recalibrated_from is None
