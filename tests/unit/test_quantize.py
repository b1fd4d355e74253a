"""The INT8 gate (training.quantize.judge) and the pieces around it, without onnxruntime."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest

from camstream.settings import ENV_PREFIX, Settings
from training.quantize import (
    INT8_FILE,
    Gate,
    agreement,
    judge,
    split_halves,
    time_side_by_side,
)

MODEL_PY = Path("triton_repo/efficientnet_lite0/1/model.py")


def _probs(top1: list[int], classes: int = 4) -> np.ndarray:
    probs = np.full((len(top1), classes), 0.1, dtype=np.float32)
    probs[np.arange(len(top1)), top1] = 0.7
    return probs


def test_agreement_is_the_share_of_equal_top1() -> None:
    # Given 4 frames of which the INT8 model changes the top-1 of one
    fp32, int8 = _probs([0, 1, 2, 3]), _probs([0, 1, 2, 0])
    # Then they agree on 3 of 4
    assert agreement(fp32, int8) == 0.75


def test_agreement_rejects_no_frames_and_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="no frames"):
        agreement(_probs([]), _probs([]))
    with pytest.raises(ValueError, match="shape"):
        agreement(_probs([0, 1]), _probs([0]))


def test_judge_accepts_agreement_at_the_threshold_without_a_test_split() -> None:
    verdict = judge(0.99, 300)
    assert verdict.accepted
    assert verdict.reasons == [
        "top-1 agreement with FP32 99.00% on 300 held-out real frames (>= the required 99%)"
    ]


def test_judge_refuses_agreement_below_the_threshold_naming_the_figures() -> None:
    verdict = judge(0.7709, 275)
    assert not verdict.accepted
    assert "77.09% on 275 held-out real frames (below the required 99%)" in verdict.reasons[0]


def test_judge_refuses_when_there_were_no_frames() -> None:
    assert not judge(1.0, 0).accepted


def test_judge_allows_a_macro_f1_drop_of_exactly_one_point() -> None:
    verdict = judge(1.0, 100, f1_fp32=0.85, f1_int8=0.84)
    assert verdict.accepted
    assert "a drop of 1.00 points (within the allowed 1)" in verdict.reasons[1]


def test_judge_refuses_a_macro_f1_drop_over_one_point_even_with_full_agreement() -> None:
    verdict = judge(1.0, 100, f1_fp32=0.85, f1_int8=0.835)
    assert not verdict.accepted
    assert "macro-F1 0.8350 against FP32 0.8500" in verdict.reasons[1]
    assert "1.50 points (over the allowed 1)" in verdict.reasons[1]


def test_judge_counts_a_macro_f1_gain_as_no_drop() -> None:
    assert judge(0.995, 100, f1_fp32=0.80, f1_int8=0.81).accepted


def test_judge_needs_both_macro_f1_figures_or_neither() -> None:
    with pytest.raises(ValueError, match="both"):
        judge(1.0, 100, f1_fp32=0.8)


def test_judge_uses_the_gate_it_is_given() -> None:
    assert judge(0.95, 100, gate=Gate(min_agreement=0.9)).accepted
    assert not judge(1.0, 10, 0.8, 0.79, gate=Gate(max_f1_drop=0.005)).accepted


def test_split_halves_keeps_calibration_and_check_disjoint() -> None:
    images = [np.full((2, 2, 3), i, dtype=np.uint8) for i in range(5)]
    calibrate, check = split_halves(images)
    assert [int(i[0, 0, 0]) for i in calibrate] == [0, 1]
    assert [int(i[0, 0, 0]) for i in check] == [2, 3, 4]
    # a lone photo only checks
    assert split_halves(images[:1]) == ([], images[:1])


def test_time_side_by_side_alternates_and_reports_the_median_ratio() -> None:
    # Given calls that record their order
    order: list[str] = []
    timing = time_side_by_side(
        lambda: order.append("fp32"), lambda: order.append("int8"), runs=3, batch=8, threads=1
    )
    # Then each ran once to warm up, then they alternated
    assert order == ["fp32", "int8"] + ["fp32", "int8"] * 3
    assert len(timing.fp32_ms) == len(timing.int8_ms) == 3
    # and the speed-up is the ratio of the medians
    ticks = itertools.count()
    slow = time_side_by_side(lambda: next(ticks), lambda: None, runs=1, batch=1, threads=1)
    assert slow.speedup == pytest.approx(slow.fp32_ms[0] / slow.int8_ms[0])
    summary = timing.summary()
    assert summary["runs"] == 3 and summary["batch"] == 8 and summary["intra_op_threads"] == 1


def test_serving_reads_the_precision_setting_and_the_int8_file_quantize_writes() -> None:
    source = MODEL_PY.read_text()
    variable = re.search(r'^PRECISION_VARIABLE = "([^"]+)"', source, re.M)
    file = re.search(r'^INT8_FILE = "([^"]+)"', source, re.M)
    assert variable and variable.group(1) == f"{ENV_PREFIX}MODEL_PRECISION"
    assert file and file.group(1) == INT8_FILE
    assert "model_precision" in Settings.model_fields
    assert Settings(model_precision="int8").model_precision == "int8"
    with pytest.raises(ValueError):
        Settings(model_precision="int4")  # type: ignore[arg-type]
