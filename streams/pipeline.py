"""The worker's per-frame logic as plain synchronous functions; the agent only moves data.

validate -> decode to model input -> (Triton) -> postprocess -> prediction record.
Every rejection raises camstream.errors.FrameRejected with a DlqKind that the DLQ and
the metrics use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from camstream.errors import DlqKind, FrameRejected
from camstream.imaging import image_statistics, jpeg_dimensions, jpeg_to_model_input
from camstream.modelrepo import read_labels
from camstream.records import (
    UNCERTAIN,
    ClassScore,
    FrameHeaders,
)


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int
    max_pixels: int


@dataclass(frozen=True, slots=True)
class PreparedFrame:
    headers: FrameHeaders
    image: npt.NDArray[np.uint8]
    stats: dict[str, float]


def validate(headers: Mapping[str, bytes], value: bytes | None, limits: Limits) -> FrameHeaders:
    """Check headers, size, the end marker and the JPEG's own declared dimensions before
    any decoding: a small JPEG that declares 50000x50000 never reaches the decoder, so a
    decode allocates at most max_pixels x 3 bytes (less: it runs at reduced scale)."""
    parsed = FrameHeaders.from_kafka(headers)  # raises FrameRejected
    if not value:
        raise FrameRejected(DlqKind.EMPTY_VALUE, "frame value is empty")
    if len(value) > limits.max_bytes:
        raise FrameRejected(
            DlqKind.TOO_LARGE, f"frame is {len(value)} bytes; the limit is {limits.max_bytes}"
        )
    width, height = jpeg_dimensions(value)  # raises FrameRejected
    if not value.rstrip(b"\x00").endswith(b"\xff\xd9"):
        # libjpeg would fill a cut-off scan with grey and classify half a frame.
        raise FrameRejected(DlqKind.TRUNCATED_JPEG, "JPEG has no end-of-image marker: truncated")
    if width * height > limits.max_pixels:
        raise FrameRejected(
            DlqKind.TOO_MANY_PIXELS,
            f"JPEG declares {width}x{height}; the limit is {limits.max_pixels} pixels",
        )
    if (width, height) != (parsed.width, parsed.height):
        raise FrameRejected(
            DlqKind.DIMENSION_MISMATCH,
            f"headers say {parsed.width}x{parsed.height} but the JPEG is {width}x{height}",
        )
    return parsed


def prepare(headers: FrameHeaders, value: bytes) -> PreparedFrame:
    """Decode (at reduced size) to the model's input and measure image statistics."""
    image = jpeg_to_model_input(value, headers.width, headers.height)  # or FrameRejected
    return PreparedFrame(headers, image, image_statistics(image))


def load_labels(path: Path) -> list[str]:
    """ImageNet class names, one per line; the first synonym is the label."""
    return read_labels(path)


def top_k(probs: npt.NDArray[np.float32], labels: Sequence[str], k: int) -> list[ClassScore]:
    k = min(k, probs.shape[0])
    best = np.argpartition(probs, -k)[-k:]
    best = best[np.argsort(probs[best])[::-1]]
    return [
        ClassScore(class_id=int(i), label=labels[i], score=min(1.0, max(0.0, float(probs[i]))))
        for i in best
    ]


def decide(top: Sequence[ClassScore], threshold: float) -> tuple[str, float]:
    """Top-1 label if its score reaches the camera's threshold, else 'uncertain'."""
    best = top[0]
    return (best.label if best.score >= threshold else UNCERTAIN), best.score


def threshold_for(features: Mapping[str, Any] | None, default: float) -> float:
    value = (features or {}).get("confidence_threshold")
    return float(value) if value is not None else default
