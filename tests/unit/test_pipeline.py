"""streams.pipeline: what gets rejected before decoding, and how labels are decided."""

from __future__ import annotations

import numpy as np
import pytest

from camstream.imaging import encode_jpeg
from camstream.records import UNCERTAIN, FrameHeaders
from streams.pipeline import FrameRejected, Limits, decide, prepare, threshold_for, top_k, validate

LIMITS = Limits(max_bytes=2_000_000, max_pixels=20_000_000)


def _frame(width: int = 320, height: int = 240) -> tuple[dict[str, bytes], bytes]:
    image = np.full((height, width, 3), 90, dtype=np.uint8)
    headers = dict(FrameHeaders("cam-1", 7, 1_700_000_000_000, width, height).to_kafka())
    return headers, encode_jpeg(image)


def test_valid_frame_passes_and_prepares_to_model_input() -> None:
    headers, jpeg = _frame()
    parsed = validate(headers, jpeg, LIMITS)
    assert (parsed.camera_id, parsed.seq) == ("cam-1", 7)
    prepared = prepare(parsed, jpeg)
    assert prepared.image.shape == (224, 224, 3)
    assert {"brightness", "contrast", "sharpness", "colourfulness"} <= set(prepared.stats)


@pytest.mark.parametrize(
    ("mutate", "kind"),
    [
        (lambda h, v: ({k: x for k, x in h.items() if k != "seq"}, v), "missing_headers"),
        (lambda h, v: ({**h, "seq": b"seven"}, v), "bad_headers"),
        (lambda h, v: ({**h, "content-type": b"image/png"}, v), "bad_content_type"),
        (lambda h, v: ({**h, "schema": b"frame/9"}, v), "bad_schema"),
        (lambda h, v: (h, b""), "empty_value"),
        (lambda h, v: (h, b"\x00garbage" * 10), "not_jpeg"),
        (lambda h, v: (h, v[: len(v) // 2]), "truncated_jpeg"),
        (lambda h, v: ({**h, "width": b"640"}, v), "dimension_mismatch"),
        (lambda h, v: (h, v + b"\x00" * 2_000_001), "too_large"),
    ],
)
def test_invalid_frames_are_rejected_with_a_reason(mutate, kind) -> None:  # type: ignore[no-untyped-def]
    headers, jpeg = _frame()
    bad_headers, bad_value = mutate(headers, jpeg)
    # validate alone rejects each of them, before any decoding
    with pytest.raises(FrameRejected) as err:
        validate(bad_headers, bad_value, LIMITS)
    assert err.value.kind == kind
    assert str(err.value)


def test_declared_dimensions_over_the_limit_are_rejected_before_decoding() -> None:
    headers, jpeg = _frame(64, 64)
    sof = jpeg.index(b"\xff\xc0")
    bomb = jpeg[: sof + 5] + (50_000).to_bytes(2, "big") * 2 + jpeg[sof + 9 :]
    headers |= {"width": b"50000", "height": b"50000"}
    with pytest.raises(FrameRejected) as err:
        validate(headers, bomb, LIMITS)
    assert err.value.kind == "too_many_pixels"


def test_top_k_is_sorted_and_threshold_gates_the_label() -> None:
    probs = np.array([0.05, 0.6, 0.1, 0.25], dtype=np.float32)
    labels = ["a", "b", "c", "d"]
    top = top_k(probs, labels, 3)
    assert [c.label for c in top] == ["b", "d", "c"]
    assert decide(top, 0.5) == ("b", pytest.approx(0.6))
    assert decide(top, 0.7)[0] == UNCERTAIN


def test_threshold_comes_from_features_or_the_default() -> None:
    assert threshold_for({"confidence_threshold": 0.4}, 0.1) == pytest.approx(0.4)
    assert threshold_for({"confidence_threshold": None}, 0.1) == pytest.approx(0.1)
    assert threshold_for(None, 0.3) == pytest.approx(0.3)
