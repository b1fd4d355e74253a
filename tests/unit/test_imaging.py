"""camstream.imaging: header-only JPEG checks and the model's input, on real pixels."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from camstream.errors import DlqKind, FrameRejected
from camstream.imaging import (
    MODEL_SIZE,
    decode_jpeg,
    encode_jpeg,
    image_statistics,
    jpeg_dimensions,
    jpeg_to_model_input,
    reduction_for,
    to_model_input,
)


def _gradient(width: int, height: int) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    y = np.linspace(0, 255, height, dtype=np.uint8)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = x[None, :]
    image[..., 1] = y[:, None]
    image[..., 2] = 128
    return image


def _claim_size(jpeg: bytes, width: int, height: int) -> bytes:
    """Rewrite the SOF0 header's dimensions without touching the pixels."""
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[: sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9 :]


def test_jpeg_dimensions_reads_the_frame_header() -> None:
    jpeg = encode_jpeg(_gradient(640, 360))
    assert jpeg_dimensions(jpeg) == (640, 360)


def test_jpeg_dimensions_reports_a_claimed_size_without_allocating_it() -> None:
    # Given a small JPEG whose header claims 50000x50000
    bomb = _claim_size(encode_jpeg(_gradient(64, 64)), 50_000, 50_000)
    # Then the claim is read from the header alone
    assert jpeg_dimensions(bomb) == (50_000, 50_000)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", DlqKind.NOT_JPEG),
        (b"GIF89a....", DlqKind.NOT_JPEG),
        (b"\xff\xd8\xff\xe0\x00", DlqKind.CORRUPT_JPEG),
    ],
)
def test_jpeg_dimensions_rejects_what_is_not_a_jpeg(data: bytes, kind: DlqKind) -> None:
    with pytest.raises(FrameRejected) as err:
        jpeg_dimensions(data)
    assert err.value.kind == kind


def test_reduction_keeps_the_short_side_at_least_256() -> None:
    assert reduction_for(640, 480) == 1
    assert reduction_for(1280, 720) == 2
    assert reduction_for(3840, 2160) == 8


def test_model_input_is_rgb_224_centre_crop() -> None:
    # Given a BGR frame whose left half is pure blue
    image = np.zeros((480, 640, 3), dtype=np.uint8)
    image[:, :320, 0] = 255
    out = to_model_input(image)
    # Then the output is 224x224x3 uint8 RGB and the blue lands in channel 2
    assert out.shape == (MODEL_SIZE, MODEL_SIZE, 3)
    assert out.dtype == np.uint8
    assert out[112, 10, 2] == 255 and out[112, 10, 0] == 0


def test_reduced_decode_matches_full_decode_closely() -> None:
    jpeg = encode_jpeg(_gradient(1280, 720), 95)
    reduced = jpeg_to_model_input(jpeg, 1280, 720)
    full = to_model_input(decode_jpeg(jpeg))
    assert np.abs(reduced.astype(int) - full.astype(int)).mean() < 3


def test_statistics_move_in_the_expected_direction() -> None:
    image = to_model_input(_gradient(640, 480))
    dark = (image // 3).astype(np.uint8)
    assert image_statistics(dark)["brightness"] < image_statistics(image)["brightness"]
    assert image_statistics(dark)["contrast"] < image_statistics(image)["contrast"]


def test_fingerprint_is_equal_for_identical_frames_only() -> None:
    # Given a frame, a copy of it and the same frame with one pixel changed
    image = to_model_input(_gradient(640, 480))
    changed = image.copy()
    changed[100, 100] = (changed[100, 100].astype(int) + 40) % 256
    # Then only the identical copy shares the fingerprint
    fingerprint = image_statistics(image)["fingerprint"]
    assert image_statistics(image.copy())["fingerprint"] == fingerprint
    assert image_statistics(changed)["fingerprint"] != fingerprint
    assert float(int(fingerprint)) == fingerprint  # exact in a float


def test_black_frame_has_all_pixels_crushed() -> None:
    black = np.zeros((224, 224, 3), dtype=np.uint8)
    stats = image_statistics(black)
    assert stats["dark_fraction"] == 1.0 and stats["bright_fraction"] == 0.0
