"""camstream.records: the committed JSON Schemas are the generated ones, and records
produced by the classes validate against them."""

from __future__ import annotations

import json

import jsonschema
import pytest

from camstream.records import (
    SCHEMAS,
    ClassScore,
    Enrichment,
    FrameHeaderError,
    FrameHeaders,
    Latency,
    ModelRef,
    Prediction,
    render_schema,
)
from camstream.settings import REPO_ROOT


@pytest.mark.parametrize("filename", sorted(SCHEMAS))
def test_committed_schema_equals_the_generated_one(filename: str) -> None:
    committed = (REPO_ROOT / "schemas" / filename).read_text()
    assert committed == render_schema(SCHEMAS[filename]), "run `camstream schemas`"


def test_prediction_serialises_to_a_schema_valid_document() -> None:
    prediction = Prediction(
        dedup_key="cam:1",
        camera_id="cam",
        seq=1,
        capture_ts_ms=1,
        model=ModelRef(name="m", version="1"),
        label="tabby",
        score=0.9,
        threshold=0.2,
        top_k=[ClassScore(class_id=281, label="tabby", score=0.9)],
        features={"site": "x", "indoor": False, "confidence_threshold": 0.2},
        enrichment=Enrichment.OK,
        latency=Latency(queue_ms=1, decode_ms=1, infer_ms=1, enrich_ms=1, end_to_end_ms=4),
        worker="w",
        published_ts_ms=2,
    )
    document = json.loads(prediction.to_json_bytes())
    assert document["schema"] == "prediction/1"
    schema = json.loads((REPO_ROOT / "schemas" / "prediction.schema.json").read_text())
    jsonschema.validate(document, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**document, "enrichment": "maybe"}, schema)


def test_frame_headers_round_trip_through_kafka_headers() -> None:
    headers = FrameHeaders("cam-7", 42, 1_700_000_000_123, 640, 480)
    assert FrameHeaders.from_kafka(dict(headers.to_kafka())) == headers


def test_frame_headers_reject_a_negative_size() -> None:
    raw = dict(FrameHeaders("cam-7", 42, 1, 640, 480).to_kafka()) | {"width": b"-1"}
    with pytest.raises(FrameHeaderError) as err:
        FrameHeaders.from_kafka(raw)
    assert err.value.kind == "bad_headers"
