"""The records camstream publishes: one definition per topic.

Producers, the worker and the tests use these classes; the JSON Schemas that
downstream consumers read (schemas/*.schema.json) are generated from them by
``camstream schemas`` and a test keeps the committed files equal to the generated ones.

Frame records are raw JPEG bytes with headers (FrameHeaders); predictions and drift
records are JSON (Prediction, DriftRecord).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FRAME_SCHEMA = "frame/1"
UNCERTAIN = "uncertain"

REQUIRED_FRAME_HEADERS = (
    "schema",
    "camera-id",
    "seq",
    "capture-ts-ms",
    "width",
    "height",
    "content-type",
)


class FrameHeaderError(ValueError):
    """Frame headers that break the frame/1 contract; ``kind`` names the reason."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class FrameHeaders:
    """The headers of a camstream.frames record (all UTF-8 strings on the wire)."""

    camera_id: str
    seq: int
    capture_ts_ms: int
    width: int
    height: int
    content_type: str = "image/jpeg"
    schema: str = FRAME_SCHEMA

    def to_kafka(self) -> list[tuple[str, bytes]]:
        return [
            ("schema", self.schema.encode()),
            ("camera-id", self.camera_id.encode()),
            ("seq", str(self.seq).encode()),
            ("capture-ts-ms", str(self.capture_ts_ms).encode()),
            ("width", str(self.width).encode()),
            ("height", str(self.height).encode()),
            ("content-type", self.content_type.encode()),
        ]

    @classmethod
    def from_kafka(cls, headers: dict[str, bytes]) -> FrameHeaders:
        """Parse and validate headers; raises FrameHeaderError naming what is wrong."""
        missing = [name for name in REQUIRED_FRAME_HEADERS if name not in headers]
        if missing:
            raise FrameHeaderError("missing_headers", f"missing frame headers: {missing}")
        try:
            text = {k: headers[k].decode() for k in REQUIRED_FRAME_HEADERS}
        except UnicodeDecodeError as exc:
            raise FrameHeaderError("bad_headers", f"header is not UTF-8: {exc}") from exc
        if text["schema"] != FRAME_SCHEMA:
            raise FrameHeaderError("bad_schema", f"unsupported frame schema {text['schema']!r}")
        if text["content-type"] != "image/jpeg":
            raise FrameHeaderError(
                "bad_content_type", f"unsupported content-type {text['content-type']!r}"
            )
        try:
            parsed = cls(
                camera_id=text["camera-id"],
                seq=int(text["seq"]),
                capture_ts_ms=int(text["capture-ts-ms"]),
                width=int(text["width"]),
                height=int(text["height"]),
            )
        except ValueError as exc:
            raise FrameHeaderError("bad_headers", f"non-integer header: {exc}") from exc
        if parsed.width <= 0 or parsed.height <= 0 or parsed.seq < 0 or not parsed.camera_id:
            raise FrameHeaderError("bad_headers", "camera-id, seq, width or height out of range")
        return parsed


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class ModelRef(_Record):
    name: str
    version: str


class ClassScore(_Record):
    class_id: int = Field(ge=0)
    label: str
    score: float = Field(ge=0, le=1)


class Enrichment(StrEnum):
    OK = "ok"
    MISSING = "missing"
    STALE = "stale"


FeatureValue = str | int | float | bool | None


class Latency(_Record):
    """Milliseconds spent in each stage of the worker, and end to end from capture."""

    queue_ms: float = Field(description="From the record's Kafka timestamp to the worker.")
    decode_ms: float
    infer_ms: float
    enrich_ms: float
    end_to_end_ms: float = Field(description="From capture-ts-ms to publication.")


class Prediction(_Record):
    """One classified frame; value of camstream.predictions, keyed by camera id."""

    schema_: Literal["prediction/1"] = Field(default="prediction/1", alias="schema")
    dedup_key: str = Field(description="'<camera_id>:<seq>', the same on any redelivery.")
    camera_id: str
    seq: int = Field(ge=0)
    capture_ts_ms: int
    model: ModelRef
    label: str = Field(description=f"Top-1 label, or '{UNCERTAIN}' below the threshold.")
    score: float = Field(ge=0, le=1, description="Top-1 score, whether or not it passed.")
    threshold: float = Field(ge=0, le=1)
    top_k: list[ClassScore]
    features: dict[str, FeatureValue]
    enrichment: Enrichment
    latency: Latency
    worker: str
    published_ts_ms: int

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class StatisticTest(_Record):
    name: str = Field(description="What was compared, e.g. 'label_distribution', 'brightness'.")
    test: str = Field(
        description="The test, distance or signal: 'psi', 'jensen_shannon', 'ks', "
        "'mean_shift', 'adwin', or a data-quality signal such as 'max_identical_run'."
    )
    value: float
    p_value: float | None = None
    threshold: float = Field(
        description="The limit applied: the configured threshold, raised where the camera's "
        "own calibration windows reached further (see the baseline field)."
    )
    drifted: bool
    baseline: Literal["camera", "reference", "none"] = Field(
        default="none",
        description="Compared with the camera's own calibrated baseline, with the model "
        "version's reference profile (while the camera calibrates), or nothing "
        "(data-quality signals).",
    )
    sample_size: int | None = Field(
        default=None,
        description="Frames the p-value counts: every stride-th frame, as consecutive "
        "video frames are nearly copies of each other.",
    )


class DriftRecord(_Record):
    """Drift and data quality of one camera over one window; value of camstream.drift.

    ``kind`` is ``window`` for a closed window of frames, ``silence`` when a camera sent
    nothing for longer than the configured time (frame_count 0).
    """

    schema_: Literal["drift/2"] = Field(default="drift/2", alias="schema")
    kind: Literal["window", "silence"] = "window"
    camera_id: str
    window_start_ms: int
    window_end_ms: int
    frame_count: int = Field(ge=0)
    model: ModelRef
    reference_profile_id: str
    calibrating: bool = Field(
        default=False,
        description="The camera's first frames calibrate its own baseline; meanwhile its "
        "windows are compared with the model's reference profile for information only, and "
        "only data-quality signals raise the drift flag.",
    )
    baseline_id: str | None = Field(
        default=None, description="The camera baseline compared with; null while calibrating."
    )
    statistics: list[StatisticTest]
    drift: bool
    reasons: list[str]
    worker: str

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


SCHEMAS: dict[str, type[BaseModel]] = {
    "prediction.schema.json": Prediction,
    "drift.schema.json": DriftRecord,
}


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://camstream.dev/schemas/{model.__name__.lower()}.schema.json"
    return schema


def render_schema(model: type[BaseModel]) -> str:
    return json.dumps(json_schema(model), indent=2, sort_keys=True) + "\n"


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, model in SCHEMAS.items():
        path = folder / filename
        path.write_text(render_schema(model))
        written.append(path)
    return written
