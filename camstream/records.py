"""The records camstream publishes: one definition per topic.

Producers, the worker and the tests use these classes; the JSON Schemas that
downstream consumers read (schemas/*.schema.json) are generated from them by
``camstream schemas`` and a test keeps the committed files equal to the generated ones.

Frame records are raw JPEG bytes with headers (FrameHeaders); predictions and drift
records are JSON (Prediction, DriftRecord).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from camstream.errors import DlqKind, FrameRejected

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
    def from_kafka(cls, headers: Mapping[str, bytes]) -> FrameHeaders:
        """Parse and validate headers; raises FrameRejected naming the header and value."""
        missing = [name for name in REQUIRED_FRAME_HEADERS if name not in headers]
        if missing:
            raise FrameRejected(DlqKind.MISSING_HEADERS, f"missing frame headers: {missing}")
        text: dict[str, str] = {}
        for name in REQUIRED_FRAME_HEADERS:
            try:
                text[name] = headers[name].decode()
            except UnicodeDecodeError as exc:
                raise FrameRejected(
                    DlqKind.BAD_HEADERS, f"header {name}={headers[name]!r} is not UTF-8"
                ) from exc
        if text["schema"] != FRAME_SCHEMA:
            raise FrameRejected(
                DlqKind.BAD_SCHEMA, f"header schema={text['schema']!r} must be {FRAME_SCHEMA!r}"
            )
        if text["content-type"] != "image/jpeg":
            raise FrameRejected(
                DlqKind.BAD_CONTENT_TYPE,
                f"header content-type={text['content-type']!r} must be 'image/jpeg'",
            )
        if not text["camera-id"]:
            raise FrameRejected(DlqKind.BAD_HEADERS, "header camera-id='' must not be empty")
        return cls(
            camera_id=text["camera-id"],
            seq=_integer_header(text, "seq", minimum=0),
            capture_ts_ms=_integer_header(text, "capture-ts-ms"),
            width=_integer_header(text, "width", minimum=1),
            height=_integer_header(text, "height", minimum=1),
        )


_INTEGER_KINDS = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}


def _integer_header(text: Mapping[str, str], name: str, minimum: int | None = None) -> int:
    raw = text[name]
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or (minimum is not None and value < minimum):
        raise FrameRejected(
            DlqKind.BAD_HEADERS, f"header {name}={raw!r} must be {_INTEGER_KINDS[minimum]}"
        )
    return value


class _Record(BaseModel):
    """A published record: every number finite, every field always written.

    ``allow_inf_nan=False``: JSON has no NaN or infinity (pydantic would write ``null``
    against a required number), so a record holding one cannot be built.
    ``json_schema_serialization_defaults_required``: a field with a default is still
    written in every document, so the schema marks it required (generated code in other
    languages then types it as always present).
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        json_schema_serialization_defaults_required=True,
    )

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


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


PREDICTION_SCHEMA: Final = "prediction/2"


class Prediction(_Record):
    """One classified frame; value of camstream.predictions, keyed by camera id.

    prediction/2 (from prediction/1): every field is required in the schema (all were
    always written), and float32 feature values (``threshold`` and ``features``) are the
    shortest decimal that reads back as the same float32: a threshold of 0.2 is 0.2.
    """

    schema_: Literal["prediction/2"] = Field(default=PREDICTION_SCHEMA, alias="schema")
    dedup_key: str = Field(description="'<camera_id>:<seq>', the same on any redelivery.")
    camera_id: str
    seq: int = Field(ge=0)
    capture_ts_ms: int
    model: ModelRef
    label: str = Field(description=f"Top-1 label, or '{UNCERTAIN}' below the threshold.")
    score: float = Field(ge=0, le=1, description="Top-1 score, whether or not it passed.")
    threshold: float = Field(
        ge=0,
        le=1,
        description="The camera's confidence_threshold feature (the worker's default "
        "without one); label is the top-1 label when score >= threshold.",
    )
    top_k: list[ClassScore]
    features: dict[str, FeatureValue] = Field(
        description="The camera's Feast features used; null where Feast has no value."
    )
    enrichment: Enrichment
    latency: Latency
    worker: str
    published_ts_ms: int

    model_config = ConfigDict(populate_by_name=True)


Comparison = Literal["gt", "ge", "abs_gt"]

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "gt": lambda value, limit: value > limit,
    "ge": lambda value, limit: value >= limit,
    "abs_gt": lambda value, limit: abs(value) > limit,
}


def statistic_drifted(
    value: float,
    comparison: Comparison,
    threshold: float | None,
    p_value: float | None = None,
    p_value_limit: float | None = None,
) -> bool:
    """The rule every StatisticTest's ``drifted`` follows, as its field descriptions say."""
    beyond = threshold is None or _COMPARE[comparison](value, threshold)
    significant = p_value_limit is None or (p_value is not None and p_value < p_value_limit)
    return beyond and significant


class StatisticTest(_Record):
    """One statistic of a window, the limits applied to it and its verdict.

    ``drifted`` follows from the record's own fields alone:

        drifted == (threshold is null or value <comparison> threshold)
                   and (p_value_limit is null or p_value < p_value_limit)

    where ``gt`` is ``value > threshold``, ``ge`` is ``value >= threshold`` and ``abs_gt``
    is ``|value| > threshold``; at least one of threshold and p_value_limit is set.
    A statistic that could not be measured (NaN, e.g. from a NaN input) is left out of
    the record rather than written: a StatisticTest holding NaN or infinity cannot be
    built.
    """

    name: str = Field(description="What was compared, e.g. 'label_distribution', 'brightness'.")
    test: str = Field(
        description="The test, distance or signal: 'psi', 'jensen_shannon', 'ks', "
        "'mean_shift', 'adwin', or a data-quality signal such as 'max_identical_run'."
    )
    value: float = Field(description="The measured statistic (always a finite number).")
    comparison: Comparison = Field(
        description="How value meets threshold: 'gt' value > threshold, 'ge' value >= "
        "threshold, 'abs_gt' |value| > threshold."
    )
    threshold: float | None = Field(
        description="The limit on value: the configured threshold, raised where the "
        "camera's own calibration windows reached further (see the baseline field). "
        "null where the value has no limit and p_value < p_value_limit alone decides (a KS "
        "test against the reference profile, while the camera calibrates)."
    )
    p_value: float | None = Field(
        default=None, description="The test's p-value, for tests decided by one; else null."
    )
    p_value_limit: float | None = Field(
        default=None,
        description="Set for tests decided by a p-value: drifted requires p_value < "
        "p_value_limit (as well as the threshold, where set); null otherwise.",
    )
    drifted: bool = Field(
        description="(threshold is null or value <comparison> threshold) and "
        "(p_value_limit is null or p_value < p_value_limit)."
    )
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

    @model_validator(mode="after")
    def _decided_by_its_fields(self) -> StatisticTest:
        if self.threshold is None and self.p_value_limit is None:
            raise ValueError(f"{self.name}/{self.test}: neither threshold nor p_value_limit")
        if (self.p_value_limit is None) != (self.p_value is None):
            raise ValueError(f"{self.name}/{self.test}: p_value and p_value_limit go together")
        expected = statistic_drifted(
            self.value, self.comparison, self.threshold, self.p_value, self.p_value_limit
        )
        if self.drifted != expected:
            raise ValueError(f"{self.name}/{self.test}: drifted={self.drifted} breaks its rule")
        return self

    @classmethod
    def measured(
        cls,
        name: str,
        test: str,
        value: float,
        comparison: Comparison,
        threshold: float | None,
        *,
        p_value: float | None = None,
        p_value_limit: float | None = None,
        baseline: Literal["camera", "reference", "none"] = "none",
        sample_size: int | None = None,
    ) -> StatisticTest:
        """A test whose verdict is computed by the published rule (statistic_drifted)."""
        return cls(
            name=name,
            test=test,
            value=value,
            comparison=comparison,
            threshold=threshold,
            p_value=p_value,
            p_value_limit=p_value_limit,
            drifted=statistic_drifted(value, comparison, threshold, p_value, p_value_limit),
            baseline=baseline,
            sample_size=sample_size,
        )


DRIFT_SCHEMA: Final = "drift/4"


class DriftRecord(_Record):
    """Drift and data quality of one camera over one window; value of camstream.drift.

    ``kind`` is ``window`` for a closed window of frames, ``silence`` when a camera sent
    nothing for longer than the configured time (frame_count 0).

    drift/4 (from drift/3): ``model`` is the version that classified the window's frames
    (cameras may run different models and versions), and ``recalibrated_from`` names
    the version a camera was calibrated under before a promotion or rollback moved it.
    drift/3 (from drift/2): every field is required in the schema; each statistic names
    its comparison and p-value limit, so its ``drifted`` can be recomputed; a KS
    threshold is null (not 0.0) where the p-value alone decides.
    """

    schema_: Literal["drift/4"] = Field(default=DRIFT_SCHEMA, alias="schema")
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
    recalibrated_from: ModelRef | None = Field(
        default=None,
        description="Set on the first record after the camera moved to another model version "
        "(a promotion or rollback): the version it was calibrated under until then. Its "
        "calibration starts again under ``model``'s reference profile.",
    )
    statistics: list[StatisticTest]
    drift: bool = Field(
        description="Whether any statistic that counts drifted: every statistic, or only "
        "those with baseline 'none' (data quality) while calibrating."
    )
    reasons: list[str] = Field(
        description="One line per statistic that drifted and counts; empty unless drift."
    )
    worker: str

    model_config = ConfigDict(populate_by_name=True)


SHADOW_SCHEMA: Final = "shadow/1"


class ShadowPair(_Record):
    """One frame classified by the champion (the version answering for the camera) and
    by a shadow candidate; value of camstream.shadow (kind ``pair``), keyed by camera.

    Labels are the raw top-1 of each model, before the camera's threshold."""

    schema_: Literal["shadow/1"] = Field(default=SHADOW_SCHEMA, alias="schema")
    kind: Literal["pair"] = "pair"
    camera_id: str
    seq: int = Field(ge=0)
    capture_ts_ms: int
    window: int = Field(
        ge=0, description="The per-camera summary window this pair counts in (its summary's)."
    )
    champion: ModelRef
    candidate: ModelRef
    champion_label: str
    champion_score: float = Field(ge=0, le=1)
    candidate_label: str
    candidate_score: float = Field(ge=0, le=1)
    agree: bool = Field(description="champion_label == candidate_label")
    champion_infer_ms: float = Field(description="The champion request's time for this frame.")
    candidate_infer_ms: float = Field(description="The candidate request's time for it.")
    worker: str
    published_ts_ms: int

    model_config = ConfigDict(populate_by_name=True)


class LabelPair(_Record):
    champion_label: str
    candidate_label: str
    count: int = Field(ge=1)


class ShadowSummary(_Record):
    """Agreement of a shadow candidate with the champion over one window of one camera's
    pairs; value of camstream.shadow (kind ``summary``). Every figure is recomputable
    from the window's pairs (same camera, candidate and ``window``)."""

    schema_: Literal["shadow/1"] = Field(default=SHADOW_SCHEMA, alias="schema")
    kind: Literal["summary"] = "summary"
    camera_id: str
    window: int = Field(ge=0)
    champion: ModelRef
    candidate: ModelRef
    window_start_ms: int = Field(description="Earliest capture time among the pairs.")
    window_end_ms: int = Field(description="Latest capture time among the pairs.")
    pairs: int = Field(ge=0)
    agreement_rate: float | None = Field(
        ge=0, le=1, description="Share of pairs whose top-1 labels agree; null with no pair."
    )
    confusion: list[LabelPair] = Field(
        description="How often each (champion label, candidate label) occurred, most first."
    )
    confidence_shift: float | None = Field(
        description="Mean of candidate_score - champion_score over the pairs."
    )
    champion_infer_ms_p50: float | None
    candidate_infer_ms_p50: float | None
    latency_ratio: float | None = Field(
        description="candidate_infer_ms_p50 / champion_infer_ms_p50."
    )
    failures: int = Field(ge=0, description="Sampled frames whose candidate request failed.")
    skipped: int = Field(
        ge=0, description="Sampled frames not sent because the shadow lane was full."
    )
    worker: str
    published_ts_ms: int

    model_config = ConfigDict(populate_by_name=True)


class ShadowRecord(RootModel[Annotated[ShadowPair | ShadowSummary, Field(discriminator="kind")]]):
    """A record of camstream.shadow: a pair or a window summary (its ``kind``)."""


SCHEMAS: dict[str, type[BaseModel]] = {
    "prediction.schema.json": Prediction,
    "drift.schema.json": DriftRecord,
    "shadow.schema.json": ShadowRecord,
}


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema of one record; its ``$id`` names the file it is published as."""
    (filename,) = [name for name, cls in SCHEMAS.items() if cls is model]
    schema = model.model_json_schema(by_alias=True, mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://camstream.dev/schemas/{filename}"
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
