"""`camstream bench drift` on a shorter run: the bounds of issue 6 on real video.

The per-frame model outputs come from the exported model in the model environment
(cached under the cache dir after the first run, about a minute on 2 cores).
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.drift import SHIFTS, run
from camstream.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    return run(Settings(), windows=30, trials=3)


@pytest.mark.parametrize("camera", ["vtest", "bikes"])
def test_undisturbed_stream_false_alarms_at_most_5_percent(
    figures: dict[str, Any], camera: str
) -> None:
    row = figures["cameras"][camera]
    assert row["windows"] == 30
    assert row["false_alarm_rate"] <= 0.05, row["false_alarm_reasons"]


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("camera", ["vtest", "bikes"])
def test_injected_shift_detected_within_two_windows(
    figures: dict[str, Any], camera: str, shift: str
) -> None:
    row = figures["cameras"][camera]["shifts"][shift]
    assert row["detection_rate"] == 1.0, row
    assert row["max_delay_windows"] is not None and row["max_delay_windows"] <= 1
    assert row["false_alarms_before_shift"] == 0


@pytest.mark.parametrize("camera", ["vtest", "bikes"])
def test_silent_camera_is_reported(figures: dict[str, Any], camera: str) -> None:
    assert figures["cameras"][camera]["silence_detected"]
