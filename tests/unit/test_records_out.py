"""streams.records_out: a prediction and a dead letter from their inputs alone."""

from __future__ import annotations

import numpy as np

from camstream.errors import DlqKind, FrameRejected
from camstream.records import UNCERTAIN, Enrichment, FrameHeaders, ModelRef
from streams.records_out import BatchTiming, build_prediction, dead_letter

LABELS = ["cat", "dog", "car", "bus"]
MODEL = ModelRef(name="m", version="3")


def _predict(probs: list[float], features: dict[str, object], **kw: object) -> object:
    headers = FrameHeaders("cam-1", 7, capture_ts_ms=1_000, width=64, height=48)
    args: dict[str, object] = {
        "model": MODEL,
        "features": features,
        "enrichment": Enrichment.OK,
        "default_threshold": 0.0,
        "k": 2,
        "timing": BatchTiming(received_s=1.5, decode_s=0.004, infer_s=0.02, enrich_s=0.001),
        "produced_s": 1.25,
        "worker": "w:1",
        "now_ms": 1_600,
    }
    args.update(kw)
    return build_prediction(headers, np.array(probs, dtype=np.float32), LABELS, **args)  # type: ignore[arg-type]


def test_a_prediction_carries_top_k_latencies_and_its_dedup_key() -> None:
    p = _predict([0.1, 0.6, 0.25, 0.05], {"confidence_threshold": 0.5, "site": "x"})
    assert p.dedup_key == "cam-1:7"  # type: ignore[attr-defined]
    assert p.label == "dog" and p.threshold == 0.5  # type: ignore[attr-defined]
    assert [c.label for c in p.top_k] == ["dog", "car"]  # type: ignore[attr-defined]
    latency = p.latency  # type: ignore[attr-defined]
    assert (latency.queue_ms, latency.decode_ms, latency.infer_ms) == (250.0, 4.0, 20.0)
    assert latency.end_to_end_ms == 600.0
    assert p.model == MODEL and p.published_ts_ms == 1_600  # type: ignore[attr-defined]


def test_a_top_1_below_the_cameras_threshold_is_uncertain_with_its_score() -> None:
    p = _predict([0.3, 0.28, 0.22, 0.2], {"confidence_threshold": 0.5})
    assert p.label == UNCERTAIN and round(p.score, 2) == 0.3  # type: ignore[attr-defined]


def test_a_camera_without_features_gets_the_default_threshold_and_no_timestamp_queue_0() -> None:
    p = _predict([0.3, 0.28, 0.22, 0.2], {}, default_threshold=0.25, produced_s=None)
    assert p.threshold == 0.25 and p.label == "cat"  # type: ignore[attr-defined]
    assert p.latency.queue_ms == 0.0  # type: ignore[attr-defined]


def test_a_dead_letter_keeps_the_original_bytes_and_headers_and_replaces_error_headers() -> None:
    headers = {"camera-id": b"cam-1", "seq": b"9", "error-kind": b"old"}
    error = FrameRejected(DlqKind.TOO_LARGE, "frame is 9 bytes; the limit is 8")
    record = dead_letter("t.dlq", b"cam-1", b"\xff\xd8junk", headers, 2, error)
    assert record.topic == "t.dlq" and record.key == b"cam-1" and record.partition == 2
    assert record.value == b"\xff\xd8junk"
    assert record.headers == [
        ("camera-id", b"cam-1"),
        ("seq", b"9"),
        ("error-kind", b"too_large"),
        ("error-message", b"frame is 9 bytes; the limit is 8"),
    ]
