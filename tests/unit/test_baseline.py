"""training.baseline: the drift reference sees frames exactly as the worker does."""

from __future__ import annotations

import os
import subprocess

import cv2
import numpy as np
import pytest

from camstream.cameras import CameraSpec
from camstream.imaging import encode_jpeg, fit_within, image_statistics, to_model_input
from camstream.records import FrameHeaders
from camstream.settings import REPO_ROOT
from camstream.stack.triton import locate_model_env
from streams.pipeline import prepare
from training import baseline


def _scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A camera-like BGR frame: gradients, edges and sensor noise."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    image = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    image += rng.normal(0, 12, image.shape).astype(np.float32)
    frame = np.clip(image, 0, 255).astype(np.uint8)
    for n in range(12):
        top_left = (int(rng.integers(width)), int(rng.integers(height)))
        size = (int(rng.integers(20, width // 4)), int(rng.integers(20, height // 4)))
        bottom_right = (top_left[0] + size[0], top_left[1] + size[1])
        cv2.rectangle(frame, top_left, bottom_right, (n * 20, 255 - n * 20, 128), -1)
    return np.asarray(frame, dtype=np.uint8)


@pytest.mark.parametrize(
    ("width", "height"),
    [(768, 576), (640, 272), (1920, 1080), (320, 240)],  # the sample videos, HD, small
)
def test_a_jpeg_gives_identical_statistics_through_the_baseline_and_the_worker(
    width: int, height: int
) -> None:
    # Given a frame as a producer publishes it
    jpeg, declared_width, declared_height = baseline.as_produced(_scene(width, height))
    headers = FrameHeaders("cam", 1, 0, declared_width, declared_height)

    # When the baseline and the worker each make their model input and statistics of it
    reference_rgb, reference_stats = baseline.as_served(jpeg, declared_width, declared_height)
    served = prepare(headers, jpeg)

    # Then both are the same, value for value
    assert np.array_equal(reference_rgb, served.image)
    assert reference_stats == served.stats


def test_the_baseline_encodes_frames_as_a_producer_with_default_settings_does() -> None:
    # Given the producer's defaults for a camera
    camera = CameraSpec(id="cam", source="synthetic")
    assert (
        camera.max_width,
        camera.max_height,
    ) == (baseline.PRODUCER_MAX_WIDTH, baseline.PRODUCER_MAX_HEIGHT)
    assert camera.jpeg_quality == baseline.PRODUCER_JPEG_QUALITY
    # When a frame too large for them is published, then it is the producer's JPEG
    frame = _scene(1920, 1080, seed=1)
    fitted = fit_within(frame, camera.max_width, camera.max_height)
    jpeg, width, height = baseline.as_produced(frame)
    assert jpeg == encode_jpeg(fitted, camera.jpeg_quality)
    assert (width, height) == (fitted.shape[1], fitted.shape[0]) == (1280, 720)


def test_the_old_full_size_decode_skews_sharpness_against_the_worker() -> None:
    # Given a 768x576 frame, which the worker decodes at half size
    frame = _scene(768, 576, seed=2)
    jpeg, width, height = baseline.as_produced(frame)
    # When it is measured from a full-size frame (the former reference) and as served
    full_size = image_statistics(to_model_input(frame))
    _rgb, served = baseline.as_served(jpeg, width, height)
    # Then the statistics differ: the skew the served path removes
    assert full_size["sharpness"] != pytest.approx(served["sharpness"], rel=0.01)


def test_the_baseline_imports_in_the_model_environment() -> None:
    # The model environment is part of every set-up (`make setup`): missing, this fails.
    model_python = locate_model_env().bin_dir / "python"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    code = "import training.baseline, training.drift_frames, onnxruntime"
    result = subprocess.run(
        [str(model_python), "-c", code],
        check=False,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
