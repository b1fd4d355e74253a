"""What the worker publishes, built by pure functions: a prediction, a dead letter.

No clock, no metrics, no I/O: the worker passes the time and the measured stage
durations in, so tests check every field against the inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from camstream.errors import FrameRejected
from camstream.records import Enrichment, FrameHeaders, Latency, ModelRef, Prediction
from streams.pipeline import decide, threshold_for, top_k
from streams.publish import Outgoing

ERROR_HEADERS = ("error-kind", "error-message")


@dataclass(frozen=True, slots=True)
class BatchTiming:
    """When a batch arrived (epoch s) and how long its stages took (s)."""

    received_s: float
    decode_s: float = 0.0
    infer_s: float = 0.0
    enrich_s: float = 0.0


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def build_prediction(
    headers: FrameHeaders,
    probs: npt.NDArray[np.float32],
    labels: Sequence[str],
    *,
    model: ModelRef,
    features: Mapping[str, Any],
    enrichment: Enrichment,
    default_threshold: float,
    k: int,
    timing: BatchTiming,
    produced_s: float | None,
    worker: str,
    now_ms: int,
) -> Prediction:
    """The prediction for one frame: top-k, the camera's threshold applied, latencies.

    ``produced_s``: the frame record's Kafka timestamp (None: unknown, queue time 0).
    """
    threshold = threshold_for(features, default_threshold)
    top = top_k(probs, labels, k)
    label, score = decide(top, threshold)
    produced = timing.received_s if produced_s is None else produced_s
    return Prediction(
        dedup_key=f"{headers.camera_id}:{headers.seq}",
        camera_id=headers.camera_id,
        seq=headers.seq,
        capture_ts_ms=headers.capture_ts_ms,
        model=model,
        label=label,
        score=score,
        threshold=threshold,
        top_k=top,
        features=dict(features),
        enrichment=enrichment,
        latency=Latency(
            queue_ms=_ms(max(0.0, timing.received_s - produced)),
            decode_ms=_ms(timing.decode_s),
            infer_ms=_ms(timing.infer_s),
            enrich_ms=_ms(timing.enrich_s),
            end_to_end_ms=float(max(0, now_ms - headers.capture_ts_ms)),
        ),
        worker=worker,
        published_ts_ms=now_ms,
    )


def dead_letter(
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: Mapping[str, bytes] | None,
    partition: int | None,
    error: FrameRejected,
) -> Outgoing:
    """The DLQ record of a rejected frame: its original bytes and headers (any earlier
    error headers replaced) plus ``error-kind`` and ``error-message``."""
    out = [(k, v) for k, v in (headers or {}).items() if k not in ERROR_HEADERS]
    out += [("error-kind", str(error.kind).encode()), ("error-message", str(error).encode())]
    return Outgoing(topic, key, value or b"", out, partition)
