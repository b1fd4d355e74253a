"""streams.drift: windows, calibration, flags with reasons, data quality, restarts."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np

from camstream.imaging import FINGERPRINT
from camstream.records import ModelRef, render_schema
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
):  # type: ignore[no-untyped-def]
    records = []
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


def test_state_survives_a_restart(tmp_path: Path) -> None:
    # Given a camera calibrated, half-way through a window, and checkpointed
    rng = np.random.default_rng(7)
    monitor = _monitor(rng, tmp_path)
    _feed(monitor, rng, 4 * WINDOW + WINDOW // 2)
    monitor.checkpoint()
    # When a new worker starts on the same state folder
    restarted = _monitor(np.random.default_rng(7), tmp_path)
    records = _feed(restarted, rng, WINDOW // 2, start=4 * WINDOW + WINDOW // 2)
    # Then the open window completes where it was, against the same baseline
    assert len(records) == 1 and records[0].frame_count == WINDOW
    assert not records[0].calibrating and records[0].baseline_id is not None


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
    from features.cameras import camera_drift_fv

    rng = np.random.default_rng(10)
    record = _feed(_monitor(rng), rng, WINDOW)[0]
    row = drift_feature_row(record)
    assert {f.name for f in camera_drift_fv.schema} <= set(row)
