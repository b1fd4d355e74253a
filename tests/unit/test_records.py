"""camstream.records: the committed JSON Schemas are the generated ones, and records
produced by the classes validate against them."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from camstream.errors import DlqKind, FrameRejected
from camstream.records import (
    SCHEMAS,
    ClassScore,
    Enrichment,
    FrameHeaders,
    Latency,
    ModelRef,
    Prediction,
    StatisticTest,
    json_schema,
    render_schema,
)
from camstream.settings import REPO_ROOT


@pytest.mark.parametrize("filename", sorted(SCHEMAS))
def test_committed_schema_equals_the_generated_one(filename: str) -> None:
    committed = (REPO_ROOT / "schemas" / filename).read_text()
    assert committed == render_schema(SCHEMAS[filename]), "run `camstream schemas`"


@pytest.mark.parametrize("filename", sorted(SCHEMAS))
def test_a_schema_id_names_its_file(filename: str) -> None:
    assert json_schema(SCHEMAS[filename])["$id"] == f"https://camstream.dev/schemas/{filename}"


def _objects(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [node] if "properties" in node else []
        return found + [o for value in node.values() for o in _objects(value)]
    if isinstance(node, list):
        return [o for value in node for o in _objects(value)]
    return []


@pytest.mark.parametrize("filename", sorted(SCHEMAS))
def test_every_field_a_record_always_writes_is_required(filename: str) -> None:
    # Given the published schema: every object's every property is required, the
    # version field `schema` and the drift record's kind, calibrating, baseline_id too
    schema = json.loads((REPO_ROOT / "schemas" / filename).read_text())
    for obj in _objects(schema):
        assert set(obj["required"]) == set(obj["properties"]), obj.get("title")
    # a topic with several kinds of record (camstream.shadow) publishes one of them
    records = [schema]
    if "oneOf" in schema:
        records = [schema["$defs"][o["$ref"].rsplit("/", 1)[-1]] for o in schema["oneOf"]]
    assert all("schema" in record["required"] for record in records)


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
    assert document["schema"] == "prediction/2"
    schema = json.loads((REPO_ROOT / "schemas" / "prediction.schema.json").read_text())
    jsonschema.validate(document, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**document, "enrichment": "maybe"}, schema)


def test_frame_headers_round_trip_through_kafka_headers() -> None:
    headers = FrameHeaders("cam-7", 42, 1_700_000_000_123, 640, 480)
    assert FrameHeaders.from_kafka(dict(headers.to_kafka())) == headers


@pytest.mark.parametrize(
    ("header", "value", "kind", "message"),
    [
        ("width", b"0", DlqKind.BAD_HEADERS, "header width='0' must be a positive integer"),
        ("width", b"-1", DlqKind.BAD_HEADERS, "header width='-1' must be a positive integer"),
        ("height", b"tall", DlqKind.BAD_HEADERS, "header height='tall' must be a positive integer"),
        ("seq", b"-3", DlqKind.BAD_HEADERS, "header seq='-3' must be a non-negative integer"),
        (
            "capture-ts-ms",
            b"now",
            DlqKind.BAD_HEADERS,
            "header capture-ts-ms='now' must be an integer",
        ),
        ("camera-id", b"", DlqKind.BAD_HEADERS, "header camera-id='' must not be empty"),
        ("camera-id", b"\xff", DlqKind.BAD_HEADERS, "header camera-id=b'\\xff' is not UTF-8"),
        ("schema", b"frame/9", DlqKind.BAD_SCHEMA, "header schema='frame/9' must be 'frame/1'"),
        (
            "content-type",
            b"image/png",
            DlqKind.BAD_CONTENT_TYPE,
            "header content-type='image/png' must be 'image/jpeg'",
        ),
    ],
)
def test_frame_headers_reject_a_bad_header_naming_it_and_its_value(
    header: str, value: bytes, kind: DlqKind, message: str
) -> None:
    raw = dict(FrameHeaders("cam-7", 42, 1, 640, 480).to_kafka()) | {header: value}
    with pytest.raises(FrameRejected) as err:
        FrameHeaders.from_kafka(raw)
    assert (err.value.kind, str(err.value)) == (kind, message)


def test_frame_headers_name_every_missing_header() -> None:
    raw = dict(FrameHeaders("cam-7", 42, 1, 640, 480).to_kafka())
    del raw["seq"], raw["height"]
    with pytest.raises(FrameRejected) as err:
        FrameHeaders.from_kafka(raw)
    assert err.value.kind is DlqKind.MISSING_HEADERS and str(err.value.kind) == "missing_headers"
    assert str(err.value) == "missing frame headers: ['seq', 'height']"


def test_a_statistic_holding_nan_or_infinity_cannot_be_built() -> None:
    # JSON has no NaN: pydantic would write null against a required number.
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="finite"):
            StatisticTest.measured(
                "brightness", "ks", value, "ge", 0.3, p_value=0.5, p_value_limit=0.01
            )
        with pytest.raises(ValidationError, match="finite"):
            StatisticTest.measured(
                "brightness", "ks", 0.4, "ge", 0.3, p_value=value, p_value_limit=0.01
            )


def test_a_statistic_whose_flag_breaks_its_own_rule_cannot_be_built() -> None:
    fields = {"name": "label_distribution", "test": "psi", "value": 0.3, "comparison": "gt"}
    StatisticTest.model_validate(fields | {"threshold": 0.25, "drifted": True})
    with pytest.raises(ValidationError, match="breaks its rule"):
        StatisticTest.model_validate(fields | {"threshold": 0.25, "drifted": False})
    with pytest.raises(ValidationError, match="neither threshold nor p_value_limit"):
        StatisticTest.model_validate(fields | {"threshold": None, "drifted": True})


def test_frame_headers_reject_a_negative_size() -> None:
    raw = dict(FrameHeaders("cam-7", 42, 1, 640, 480).to_kafka()) | {"width": b"-1"}
    with pytest.raises(FrameRejected) as err:
        FrameHeaders.from_kafka(raw)
    assert err.value.kind == "bad_headers"
