"""Per-camera drift windows compared with the model's reference profile.

A window collects each frame's top-1 label, confidence and image statistics; when it
holds ``window_frames`` frames it becomes one DriftRecord: PSI and Jensen-Shannon on
the label distribution, two-sample KS on each image statistic, and the mean
confidence shift, each against the reference profile, with a flag and its reasons.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from camstream.records import DriftRecord, ModelRef, StatisticTest

EPSILON = 1e-4


@dataclass(frozen=True)
class Thresholds:
    psi: float
    js: float
    ks_pvalue: float
    confidence_shift: float


@dataclass(frozen=True)
class ReferenceProfile:
    """Distributions the model saw on its calibration set (see training/baseline.py)."""

    id: str
    labels: dict[str, float]
    confidence: list[float]
    image_stats: dict[str, list[float]]

    @classmethod
    def load(cls, path: Path) -> ReferenceProfile:
        if not path.is_file():
            raise FileNotFoundError(
                f"drift reference profile {path} is missing: run `camstream setup` "
                "(or `camstream drift baseline`), or set CAMSTREAM_DRIFT_REFERENCE"
            )
        raw: dict[str, Any] = json.loads(path.read_text())
        return cls(
            id=str(raw["id"]),
            labels={str(k): float(v) for k, v in raw["labels"].items()},
            confidence=[float(v) for v in raw["confidence"]],
            image_stats={k: [float(x) for x in v] for k, v in raw["image_stats"].items()},
        )


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two distributions over the same categories."""
    e = np.clip(expected, EPSILON, None)
    a = np.clip(actual, EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass
class DriftWindow:
    """One camera's open window."""

    camera_id: str
    start_ms: int
    end_ms: int = 0
    labels: list[str] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    stats: dict[str, list[float]] = field(default_factory=dict)

    def add(self, capture_ts_ms: int, label: str, score: float, stats: dict[str, float]) -> None:
        self.start_ms = min(self.start_ms, capture_ts_ms)
        self.end_ms = max(self.end_ms, capture_ts_ms)
        self.labels.append(label)
        self.confidence.append(score)
        for name, value in stats.items():
            self.stats.setdefault(name, []).append(value)

    def __len__(self) -> int:
        return len(self.labels)


def evaluate(
    window: DriftWindow,
    reference: ReferenceProfile,
    thresholds: Thresholds,
    model: ModelRef,
    worker: str,
) -> DriftRecord:
    categories = sorted(set(reference.labels) | set(window.labels))
    expected = np.array([reference.labels.get(c, 0.0) for c in categories])
    counts = np.array([window.labels.count(c) for c in categories], dtype=float)
    actual = counts / counts.sum()
    expected = expected / expected.sum()

    tests: list[StatisticTest] = []
    psi_value = psi(expected, actual)
    tests.append(
        StatisticTest(
            name="label_distribution",
            test="psi",
            value=psi_value,
            threshold=thresholds.psi,
            drifted=psi_value > thresholds.psi,
        )
    )
    js_value = float(jensenshannon(expected, actual, base=2))
    tests.append(
        StatisticTest(
            name="label_distribution",
            test="jensen_shannon",
            value=js_value,
            threshold=thresholds.js,
            drifted=js_value > thresholds.js,
        )
    )
    for name, reference_values in sorted(reference.image_stats.items()):
        values = window.stats.get(name)
        if not values:
            continue
        result = ks_2samp(values, reference_values)
        p_value = float(result.pvalue)
        tests.append(
            StatisticTest(
                name=name,
                test="ks",
                value=float(result.statistic),
                p_value=p_value,
                threshold=thresholds.ks_pvalue,
                drifted=p_value < thresholds.ks_pvalue,
            )
        )
    shift = float(np.mean(window.confidence) - np.mean(reference.confidence))
    tests.append(
        StatisticTest(
            name="confidence",
            test="mean_shift",
            value=shift,
            threshold=thresholds.confidence_shift,
            drifted=abs(shift) > thresholds.confidence_shift,
        )
    )
    reasons = [
        f"{t.name} {t.test}={t.value:.3g} beyond {t.threshold:g}" for t in tests if t.drifted
    ]
    return DriftRecord(
        camera_id=window.camera_id,
        window_start_ms=window.start_ms,
        window_end_ms=window.end_ms,
        frame_count=len(window),
        model=model,
        reference_profile_id=reference.id,
        statistics=tests,
        drift=bool(reasons),
        reasons=reasons,
        worker=worker,
    )


DRIFT_PUSH_SOURCE = "camera_drift_push_source"


class DriftMonitor:
    """Per-camera windows for one worker: frames in, drift records out.

    The worker calls ``observe`` for every classified frame and ``tick`` now and then
    (for time-based signals); both return the records to publish.
    """

    def __init__(
        self,
        reference: ReferenceProfile,
        thresholds: Thresholds,
        window_frames: int,
        model: ModelRef,
        worker_id: str,
    ) -> None:
        self.reference = reference
        self.thresholds = thresholds
        self.window_frames = window_frames
        self.model = model
        self.worker_id = worker_id
        self.windows: dict[str, DriftWindow] = {}

    def observe(
        self,
        camera_id: str,
        capture_ts_ms: int,
        label: str,
        score: float,
        stats: dict[str, float],
    ) -> list[DriftRecord]:
        window = self.windows.setdefault(camera_id, DriftWindow(camera_id, capture_ts_ms))
        window.add(capture_ts_ms, label, score, stats)
        if len(window) < self.window_frames:
            return []
        del self.windows[camera_id]
        return [evaluate(window, self.reference, self.thresholds, self.model, self.worker_id)]

    def tick(self, now_ms: int) -> list[DriftRecord]:
        """Records due by time alone (none yet: windows close by frame count)."""
        return []


def drift_feature_row(record: DriftRecord) -> dict[str, Any]:
    """The camera's drift state as a row for Feast's camera_drift_push_source."""
    return {
        "camera_id": record.camera_id,
        "event_timestamp": datetime.fromtimestamp(record.window_end_ms / 1000, tz=UTC),
        "drift": record.drift,
        "drift_reasons": "; ".join(record.reasons),
        "drift_window_end_ms": record.window_end_ms,
        "reference_profile_id": record.reference_profile_id,
    }
