"""camstream.topics: the one-line formatter of `camstream tail` and `camstream up`."""

from __future__ import annotations

import json

from camstream.topics import FollowSummary, describe


def _prediction(camera: str, seq: int, e2e_ms: float) -> bytes:
    return json.dumps(
        {
            "seq": seq,
            "label": "orange",
            "score": 0.8765,
            "enrichment": "ok",
            "latency": {"end_to_end_ms": e2e_ms, "infer_ms": 7.4},
            "camera_id": camera,
        }
    ).encode()


def test_a_prediction_is_one_line_with_its_end_to_end_latency() -> None:
    line, e2e = describe("camstream.predictions", b"cam-1", _prediction("cam-1", 42, 81.6), [])
    assert line.split() == [
        "cam-1",
        "seq=42",
        "orange",
        "score=0.88",
        "enrich=ok",
        "e2e=82ms",
        "infer=7ms",
    ]
    assert e2e == 81.6


def test_a_drift_record_shows_the_flag_and_its_reasons() -> None:
    value = json.dumps({"drift": True, "frame_count": 50, "reasons": ["brightness"]}).encode()
    line, e2e = describe("site.drift", b"cam-2", value, None)
    assert line == "cam-2        DRIFT=True frames=50 reasons=['brightness']"
    assert e2e is None


def test_a_binary_record_shows_its_size_and_headers() -> None:
    # Given a dead letter: JPEG bytes with the original headers plus the error kind
    headers = [("camera-id", b"cam-3"), ("error-kind", b"not_jpeg"), ("empty", None)]
    line, e2e = describe("camstream.frames.dlq", b"cam-3", b"\xff\xd8junk", headers)
    # Then the line has the size and every header, readable
    topic, camera, size, unit, meta = line.split(" ", 4)
    assert (topic, camera, size, unit) == ("camstream.frames.dlq", "cam-3", "6", "bytes")
    assert json.loads(meta) == {"camera-id": "cam-3", "error-kind": "not_jpeg", "empty": ""}
    assert e2e is None


def test_other_json_records_are_printed_as_they_are() -> None:
    line, _ = describe("camstream.shadow", b"c", b'{"agreement": 0.9}', None)
    assert json.loads(line) == {"agreement": 0.9}


def test_summary_counts_records_cameras_rate_and_latency_percentiles() -> None:
    summary = FollowSummary()
    for index in range(11):
        summary.add(f"cam-{index % 2}", float(10 * (index + 1)), now_s=100.0 + index * 0.5)
    summary.add("cam-0", None, now_s=105.5)  # a drift record: no latency
    assert summary.records == 12
    assert summary.cameras == {"cam-0", "cam-1"}
    assert summary.line() == (
        "12 records from 2 cameras, 2.0/s; end-to-end ms p50=60 p95=105 p99=109"
    )


def test_an_empty_summary_says_so() -> None:
    assert FollowSummary().line() == "0 records from 0 cameras, 0.0/s"
