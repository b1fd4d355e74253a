"""The statistics of a drift window against a baseline, and how a camera calibrates one.

A baseline is either the model version's reference profile (its calibration set, built
by `camstream drift baseline`) or a camera's own first frames. Per window: PSI and
Jensen-Shannon on the top-1 label distribution (the baseline's most frequent labels
plus 'other', Jeffreys-smoothed), two-sample KS (scipy) on each image statistic, and
the shift of mean confidence.

Why limits are calibrated per camera: consecutive video frames are strongly
autocorrelated (brightness still correlates 0.3-0.6 fifty frames apart on the sample
videos) and a window of a few seconds shows one moment of the scene, so against an
i.i.d. reading of the baseline almost every window of an undisturbed stream is
"significant". Two things restore honest error rates: the KS p-value counts only every
``ks_stride``-th frame (its effective sample size), and every test's limit is raised
to what the camera's own calibration windows reached against the same baseline, times
(1 + margin). A window then drifts when it is both significant and further from the
baseline than any undisturbed stretch of the same camera was.

Every test carries what decides it (camstream.records.StatisticTest: comparison,
threshold, p-value limit), so a consumer can recompute each flag. While a camera
calibrates there is no calibrated KS distance yet: its threshold is null and the p-value
alone decides (for information only; calibrating windows are not flagged by these).
A statistic that cannot be measured (NaN) is left out: NaN image statistics are not
added to a sample, and a test whose result is not finite is not reported.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from camstream.imaging import FINGERPRINT
from camstream.records import Comparison, StatisticTest

OTHER = "(other)"
PSEUDO_COUNT = 0.5  # Jeffreys prior: no bin is ever empty, PSI stays finite
BaselineKind = Literal["camera", "reference"]


@dataclass(frozen=True)
class Thresholds:
    """Configured limits (floors: a camera's calibration may raise them)."""

    psi: float
    js: float
    ks_pvalue: float
    confidence_shift: float
    ks_stride: int = 10
    label_bins: int = 10
    calibration_margin: float = 0.05
    adwin_delta: float = 0.001


@dataclass
class Sample:
    """Frames summarised: top-1 labels, confidences and image statistics, in order."""

    labels: list[str] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    stats: dict[str, list[float]] = field(default_factory=dict)

    def add(self, label: str, score: float, stats: Mapping[str, float]) -> None:
        self.labels.append(label)
        self.confidence.append(float(score))
        for name, value in stats.items():
            if name != FINGERPRINT and math.isfinite(value):
                self.stats.setdefault(name, []).append(float(value))

    def slice(self, start: int, stop: int) -> Sample:
        return Sample(
            self.labels[start:stop],
            self.confidence[start:stop],
            {k: v[start:stop] for k, v in self.stats.items()},
        )

    def __len__(self) -> int:
        return len(self.labels)

    def to_json(self) -> dict[str, Any]:
        return {"labels": self.labels, "confidence": self.confidence, "stats": self.stats}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Sample:
        return cls(
            [str(x) for x in raw["labels"]],
            [float(x) for x in raw["confidence"]],
            {str(k): [float(x) for x in v] for k, v in raw["stats"].items()},
        )


@dataclass(frozen=True)
class Baseline:
    """What windows are compared with: label counts, confidences, image statistics."""

    id: str
    kind: BaselineKind
    label_counts: dict[str, float]
    confidence: np.ndarray
    stats: dict[str, np.ndarray]
    # Largest value of each test ('<name>/<test>') over the camera's calibration windows.
    critical: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_sample(cls, id: str, kind: BaselineKind, sample: Sample) -> Baseline:
        return cls(
            id=id,
            kind=kind,
            label_counts={k: float(v) for k, v in Counter(sample.labels).items()},
            confidence=np.asarray(sample.confidence, dtype=float),
            stats={k: np.asarray(v, dtype=float) for k, v in sample.stats.items()},
        )


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
            image_stats={
                k: [float(x) for x in v] for k, v in raw["image_stats"].items() if k != FINGERPRINT
            },
        )

    def baseline(self) -> Baseline:
        frames = max(1, len(self.confidence))
        return Baseline(
            id=self.id,
            kind="reference",
            label_counts={k: p * frames for k, p in self.labels.items()},
            confidence=np.asarray(self.confidence, dtype=float),
            stats={k: np.asarray(v, dtype=float) for k, v in self.image_stats.items()},
        )


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two distributions over the same (non-empty) bins."""
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def _label_histograms(
    counts: Mapping[str, float], labels: Sequence[str], bins: int
) -> tuple[np.ndarray, np.ndarray]:
    kept = [label for label, _n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:bins]
    window = Counter(labels)
    expected = np.array(
        [counts[k] for k in kept] + [sum(counts.values()) - sum(counts[k] for k in kept)]
    )
    actual = np.array([window[k] for k in kept] + [len(labels) - sum(window[k] for k in kept)])
    expected = expected + PSEUDO_COUNT
    actual = actual + PSEUDO_COUNT
    return expected / expected.sum(), actual / actual.sum()


def _limit(
    base: Baseline, key: str, floor: float, margin: float, cap: float | None = None
) -> float:
    limit = max(floor, base.critical.get(key, 0.0) * (1.0 + margin))
    return min(limit, cap) if cap is not None else limit


def _ks_limit(base: Baseline, key: str, margin: float) -> float | None:
    """The camera's calibrated KS distance, or None (no limit: the p-value decides)."""
    critical = base.critical.get(key)
    return None if critical is None else min(critical * (1.0 + margin), 1.0)


def compare(window: Sample, base: Baseline, limits: Thresholds) -> list[StatisticTest]:
    """Every window statistic against one baseline, with its limit and verdict."""
    m = limits.calibration_margin
    tests: list[StatisticTest | None] = []
    expected, actual = _label_histograms(base.label_counts, window.labels, limits.label_bins)
    limit = _limit(base, "label_distribution/psi", limits.psi, m)
    tests.append(_test("label_distribution", "psi", psi(expected, actual), "gt", limit, base))
    value = float(jensenshannon(expected, actual, base=2))
    limit = _limit(base, "label_distribution/jensen_shannon", limits.js, m, cap=1.0)
    tests.append(_test("label_distribution", "jensen_shannon", value, "gt", limit, base))
    stride = max(1, limits.ks_stride)
    for name, reference in sorted(base.stats.items()):
        values = window.stats.get(name)
        if not values or reference.size == 0:
            continue
        distance = float(ks_2samp(values, reference).statistic)
        thinned = values[::stride]
        p_value = float(ks_2samp(thinned, reference[::stride]).pvalue)
        # A window wholly outside the baseline (D = 1) always meets a calibrated limit.
        ks = _ks_limit(base, f"{name}/ks", m)
        tests.append(
            _test(name, "ks", distance, "ge", ks, base, p_value, limits.ks_pvalue, len(thinned))
        )
    if window.confidence and base.confidence.size:
        value = float(np.mean(window.confidence) - np.mean(base.confidence))
        limit = _limit(base, "confidence/mean_shift", limits.confidence_shift, m)
        tests.append(_test("confidence", "mean_shift", value, "abs_gt", limit, base))
    return [t for t in tests if t is not None]


def _test(
    name: str,
    test: str,
    value: float,
    comparison: Comparison,
    limit: float | None,
    base: Baseline,
    p_value: float | None = None,
    p_value_limit: float | None = None,
    n: int | None = None,
) -> StatisticTest | None:
    """The test, or None when its value or p-value is not a number (not a measurement)."""
    if not all(math.isfinite(x) for x in (value, p_value, limit) if x is not None):
        return None
    return StatisticTest.measured(
        name,
        test,
        value,
        comparison,
        limit,
        p_value=p_value,
        p_value_limit=p_value_limit,
        baseline=base.kind,
        sample_size=n,
    )


def calibrate(id: str, frames: Sample, window_frames: int, limits: Thresholds) -> Baseline:
    """A camera's baseline from its own frames, with the critical value of every test:
    the largest value any stretch of ``window_frames`` consecutive calibration frames
    (at fifth-of-a-window offsets) reaches against the whole calibration."""
    base = Baseline.from_sample(id, "camera", frames)
    critical: dict[str, float] = {}
    step = max(1, window_frames // 5)
    for start in range(0, max(1, len(frames) - window_frames + 1), step):
        for test in compare(frames.slice(start, start + window_frames), base, limits):
            key = f"{test.name}/{test.test}"
            critical[key] = max(critical.get(key, 0.0), abs(test.value))
    return Baseline(base.id, base.kind, base.label_counts, base.confidence, base.stats, critical)


def baseline_to_json(base: Baseline) -> dict[str, Any]:
    return {
        "id": base.id,
        "label_counts": base.label_counts,
        "confidence": base.confidence.tolist(),
        "stats": {k: v.tolist() for k, v in base.stats.items()},
        "critical": base.critical,
    }


def baseline_from_json(raw: Mapping[str, Any]) -> Baseline:
    return Baseline(
        id=str(raw["id"]),
        kind="camera",
        label_counts={str(k): float(v) for k, v in raw["label_counts"].items()},
        confidence=np.asarray(raw["confidence"], dtype=float),
        stats={str(k): np.asarray(v, dtype=float) for k, v in raw["stats"].items()},
        critical={str(k): float(v) for k, v in raw["critical"].items()},
    )
