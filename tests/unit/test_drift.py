"""streams.drift: no alarm on the reference's own distribution, alarms on real shifts."""

from __future__ import annotations

import numpy as np

from camstream.records import ModelRef
from streams.drift import DriftWindow, ReferenceProfile, Thresholds, evaluate

THRESHOLDS = Thresholds(psi=0.25, js=0.35, ks_pvalue=0.001, confidence_shift=0.15)
MODEL = ModelRef(name="m", version="1")


def _reference(rng: np.random.Generator) -> ReferenceProfile:
    return ReferenceProfile(
        id="ref-1",
        labels={"street sign": 0.5, "crosswalk": 0.3, "bicycle": 0.2},
        confidence=rng.normal(0.6, 0.1, 400).tolist(),
        image_stats={"brightness": rng.normal(120, 10, 400).tolist()},
    )


def _window(rng: np.random.Generator, brightness: float, labels: list[str]) -> DriftWindow:
    window = DriftWindow("cam", start_ms=1000)
    for i, label in enumerate(labels):
        window.add(
            1000 + i,
            label,
            float(rng.normal(0.6, 0.1)),
            {"brightness": float(rng.normal(brightness, 10))},
        )
    return window


def test_window_drawn_like_the_reference_is_not_flagged() -> None:
    rng = np.random.default_rng(1)
    labels = ["street sign"] * 25 + ["crosswalk"] * 15 + ["bicycle"] * 10
    record = evaluate(_window(rng, 120, labels), _reference(rng), THRESHOLDS, MODEL, "w")
    assert not record.drift, record.reasons
    assert record.frame_count == 50 and record.reference_profile_id == "ref-1"


def test_darkened_frames_and_new_labels_are_flagged_with_reasons() -> None:
    rng = np.random.default_rng(2)
    record = evaluate(_window(rng, 70, ["jellyfish"] * 50), _reference(rng), THRESHOLDS, MODEL, "w")
    assert record.drift
    drifted = {(s.name, s.test) for s in record.statistics if s.drifted}
    assert {("brightness", "ks"), ("label_distribution", "psi")} <= drifted
    assert len(record.reasons) == len(drifted)
