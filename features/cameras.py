"""camstream's features: the camera entity, its metadata and its streaming activity.

Declarations only (``feast apply`` imports every .py file here). Paths are relative to
the repo folder; the local stack applies a copy of this folder inside its state dir.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource
from feast.types import Bool, Float32, Int64, String
from feast.value_type import ValueType

camera = Entity(
    name="camera",
    join_keys=["camera_id"],
    value_type=ValueType.STRING,
    description="One camera feed; its id is the Kafka key of its frames.",
)

camera_meta_source = FileSource(
    name="camera_meta_source",
    path="data/camera_meta.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)

camera_meta_fv = FeatureView(
    name="camera_meta_fv",
    entities=[camera],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="site", dtype=String),
        Field(name="zone", dtype=String),
        Field(name="indoor", dtype=Bool),
        Field(name="confidence_threshold", dtype=Float32),
        # Routing: which model answers for the camera ("" = the worker's default model),
        # which version ("" = the model's default, <model_repo>/<model>/serving.json),
        # and a shadow candidate ("NAME:VERSION" or "") on a fraction of its frames.
        Field(name="model", dtype=String),
        Field(name="model_version", dtype=String),
        Field(name="shadow_model", dtype=String),
        Field(name="shadow_fraction", dtype=Float32),
    ],
    source=camera_meta_source,
    online=True,
    description="Registered camera metadata; confidence_threshold gates the top-1 label; "
    "model, model_version and shadow_* route its frames.",
)

camera_activity_batch_source = FileSource(
    name="camera_activity_batch_source",
    path="data/camera_activity.parquet",
    timestamp_field="event_timestamp",
)

camera_activity_push_source = PushSource(
    name="camera_activity_push_source",
    batch_source=camera_activity_batch_source,
)

camera_activity_fv = FeatureView(
    name="camera_activity_fv",
    entities=[camera],
    ttl=timedelta(hours=1),
    schema=[
        Field(name="frames_in_window", dtype=Int64),
        Field(name="top_label", dtype=String),
        Field(name="label_counts", dtype=String),
        Field(name="mean_confidence", dtype=Float32),
        Field(name="last_seen_ms", dtype=Int64),
    ],
    source=camera_activity_push_source,
    online=True,
    description="Per-camera activity over the worker's rolling window (label_counts is "
    "a JSON object label -> frames), pushed by the stream worker every second.",
)

camera_drift_batch_source = FileSource(
    name="camera_drift_batch_source",
    path="data/camera_drift.parquet",
    timestamp_field="event_timestamp",
)

camera_drift_push_source = PushSource(
    name="camera_drift_push_source",
    batch_source=camera_drift_batch_source,
)

camera_drift_fv = FeatureView(
    name="camera_drift_fv",
    entities=[camera],
    ttl=timedelta(days=1),
    schema=[
        Field(name="drift", dtype=Bool),
        Field(name="drift_reasons", dtype=String),
        Field(name="drift_window_end_ms", dtype=Int64),
        Field(name="reference_profile_id", dtype=String),
    ],
    source=camera_drift_push_source,
    online=True,
    description="A camera's latest drift verdict, pushed by the stream worker.",
)

camera_enrichment_v1 = FeatureService(
    name="camera_enrichment_v1",
    features=[camera_meta_fv],
    description="What the worker reads to enrich a prediction.",
)
