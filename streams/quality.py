"""Data-quality signals of one camera: frozen, black and over-exposed frames, silence.

These need no baseline: a frozen or black camera is broken whatever its scene, so they
raise the drift flag even while the camera is still calibrating. A frozen camera is
seen through the per-frame ``fingerprint`` of camstream.imaging.image_statistics
(identical frames, identical hash); black and over-exposed frames through the shares
of crushed and clipped pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from camstream.imaging import FINGERPRINT
from camstream.records import StatisticTest


@dataclass(frozen=True)
class QualityThresholds:
    frozen_frames: int = 10
    clipped_share: float = 0.6
    bad_frame_share: float = 0.2
    silence_s: float = 10.0


@dataclass
class FreezeTracker:
    """How many identical frames in a row a camera has sent, up to the latest one."""

    last: float | None = None
    run: int = 0

    def update(self, stats: Mapping[str, float]) -> int:
        fingerprint = stats.get(FINGERPRINT)
        if fingerprint is not None and fingerprint == self.last:
            self.run += 1
        else:
            self.run = 1
        self.last = fingerprint
        return self.run


def _share(values: Sequence[float], at_least: float) -> float:
    return sum(1 for v in values if v >= at_least) / len(values) if values else 0.0


def window_quality(
    runs: Sequence[int], stats: Mapping[str, Sequence[float]], limits: QualityThresholds
) -> list[StatisticTest]:
    """Frozen run, black and over-exposed frame shares of one window."""
    tests = [
        StatisticTest.measured(
            "frozen",
            "max_identical_run",
            float(max(runs, default=0)),
            "ge",
            float(limits.frozen_frames),
        )
    ]
    for name, stat in (
        ("black_frames", "dark_fraction"),
        ("overexposed_frames", "bright_fraction"),
    ):
        values = stats.get(stat)
        if not values:
            continue
        share = _share(values, limits.clipped_share)
        tests.append(StatisticTest.measured(name, "share", share, "ge", limits.bad_frame_share))
    return tests


def silence_test(silent_s: float, limits: QualityThresholds) -> StatisticTest:
    return StatisticTest.measured("silence", "seconds", silent_s, "gt", limits.silence_s)
