"""training.evaluate's numpy-only pieces, training.predict's serving preprocessing and
the explanation page's example choice and occlusion, in the application env."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from camstream.datasets import DatasetError, Record
from camstream.imaging import decode_jpeg, encode_jpeg, to_model_input
from training import explain
from training.evaluate import (
    capped_sample,
    expected_calibration_error,
    majority_label,
    pixel_features,
    reliability_bins,
    split_classes,
)
from training.predict import load_model_input


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    # Given ten predictions at 0.8 of which eight are right, ten at 0.3 of which three are
    confidence = [0.8] * 10 + [0.3] * 10
    correct = [True] * 8 + [False] * 2 + [True] * 3 + [False] * 7
    # Then the model is exactly as sure as it is right
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.0)


def test_ece_is_the_count_weighted_gap() -> None:
    # Given an over-confident bin (0.9, all wrong: gap 0.9) of 1 and a calibrated one of 3
    confidence = [0.95, 0.5, 0.5, 0.5]
    correct = [False, True, False, True]
    # gap(0.5 bin) = |2/3 - 0.5| = 1/6; ECE = (1 * 0.95 + 3 * 1/6) / 4
    assert expected_calibration_error(confidence, correct) == pytest.approx((0.95 + 0.5) / 4)


def test_reliability_bins_put_edges_in_the_lower_bin_and_zero_in_the_first() -> None:
    bins = reliability_bins([0.0, 0.1, 0.1000001, 1.0], [True, True, False, True], bins=10)
    assert [b["n"] for b in bins] == [2, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert bins[0]["accuracy"] == 1.0 and bins[1]["accuracy"] == 0.0
    assert np.isnan(bins[5]["confidence"])


def test_reliability_bins_refuse_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="shape"):
        reliability_bins([0.5, 0.5], [True])


def test_majority_label_breaks_ties_in_sorted_order() -> None:
    assert majority_label(["b", "a", "c", "b", "a"]) == "a"
    assert majority_label(["z", "z", "a"]) == "z"


def test_split_classes_keep_the_model_order_then_unknown_truth_sorted() -> None:
    classes = split_classes(["cat", "dog", "bird"], ["dog", "zebra", "cat", "ant", "dog"])
    assert classes == ["cat", "dog", "ant", "zebra"]


def test_capped_sample_is_seeded_and_keeps_manifest_order() -> None:
    records = [Record(path=f"images/{i:03d}.png", sha256=f"{i:064x}") for i in range(100)]
    first = capped_sample(records, 10)
    assert first == capped_sample(records, 10)
    assert [r.path for r in first] == sorted(r.path for r in first)
    assert capped_sample(records, 500) == records


def test_pixel_features_are_28x28_grey_in_unit_range() -> None:
    images = np.zeros((3, 224, 224, 3), dtype=np.uint8)
    images[1] = 255
    images[2, :, :112] = 255  # left half white
    features = pixel_features(images)
    assert features.shape == (3, 784) and features.dtype == np.float32
    assert features[0].max() == 0.0 and features[1].min() == pytest.approx(1.0)
    grid = features[2].reshape(28, 28)
    assert grid[:, :14].min() == pytest.approx(1.0) and grid[:, 14:].max() == 0.0


def test_load_model_input_is_the_serving_path_for_jpeg_and_png(tmp_path: Path) -> None:
    # Given a real-looking frame saved as JPEG and as PNG
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    jpeg = tmp_path / "frame.jpg"
    jpeg.write_bytes(encode_jpeg(frame, 85))
    png = tmp_path / "frame.png"
    cv2.imwrite(str(png), frame)
    # Then both load exactly as the worker prepares a decoded frame
    served = to_model_input(decode_jpeg(jpeg.read_bytes()))
    assert np.array_equal(load_model_input(jpeg), served)
    assert np.array_equal(load_model_input(png), to_model_input(frame))
    assert load_model_input(png).shape == (224, 224, 3)


def test_load_model_input_names_a_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DatasetError, match=r"broken\.png"):
        load_model_input(bad)
    with pytest.raises(DatasetError, match=r"missing\.png"):
        load_model_input(tmp_path / "missing.png")


def test_choose_examples_takes_the_surest_right_and_wrong_per_class() -> None:
    truth = ["a", "a", "a", "a", "b", "b"]
    pred = ["a", "a", "b", "b", "b", "a"]
    score = [0.6, 0.9, 0.7, 0.95, 0.8, 0.4]
    chosen = explain.choose_examples(truth, pred, score, ["a", "b"], per_class=1)
    right, wrong = chosen["a"]
    assert [e.index for e in right] == [1] and [e.index for e in wrong] == [3]
    assert [e.index for e in chosen["b"][0]] == [4] and [e.index for e in chosen["b"][1]] == [5]


def test_occlusion_batch_greys_one_window_two_cells_wide_around_each_cell() -> None:
    image = np.full((224, 224, 3), 200, dtype=np.uint8)
    batch = explain.occlusion_batch(image, grid=7)
    assert batch.shape == (49, 224, 224, 3)
    grey = (batch == explain.FILL).all(axis=3)
    # An inner window is 64 x 64 px centred on its 32 px cell; a corner one is clipped.
    assert grey[24].sum() == 64 * 64 and grey[24, 80:144, 80:144].all()
    assert grey[0].sum() == 48 * 48 and grey[0, :48, :48].all()
    assert grey[48, 176:, 176:].all() and not grey[48, :176].any()


def test_overlay_leaves_the_image_alone_when_nothing_mattered() -> None:
    image = np.full((224, 224, 3), 90, dtype=np.uint8)
    flat = np.full((7, 7), explain.MIN_DROP / 2, dtype=np.float32)
    assert np.array_equal(explain.overlay(image, flat), image)
    peak = np.zeros((7, 7), dtype=np.float32)
    peak[3, 3] = 0.5
    painted = explain.overlay(image, peak)
    assert not np.array_equal(painted[112, 112], image[112, 112])
    assert np.array_equal(painted[0, 0], image[0, 0])  # far from the peak: untouched


def test_occlusion_map_finds_the_evidence_of_a_saturated_model() -> None:
    # Given a model whose top probability is 1.0 in float32 with or without occlusion,
    # but whose other classes' share rises a thousandfold when window 2 is hidden
    class Saturated:
        def predict(self, batch: np.ndarray) -> np.ndarray:
            probs = np.tile(np.array([1.0, 1e-9, 1e-9], np.float32), (len(batch), 1))
            probs[1 + 2, 1:] = 1e-6
            return probs

    image = np.full((224, 224, 3), 90, dtype=np.uint8)
    drop, base = explain.occlusion_map(Saturated(), image, 0, grid=2)  # type: ignore[arg-type]
    # Then that window is where the heat is, about log(1000) nats of log-odds
    assert base == 1.0
    assert drop.shape == (2, 2) and int(drop.argmax()) == 2
    assert abs(float(drop[1, 0]) - np.log(1000.0)) < 0.01
    assert float(drop[0, 0]) == 0.0
