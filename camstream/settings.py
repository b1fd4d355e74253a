"""camstream's one settings object.

Every process reads its configuration here, from environment variables prefixed
``CAMSTREAM_`` and, when ``CAMSTREAM_CONFIG_FILE`` names one, a YAML or TOML file
(environment wins). Nothing else in camstream reads ``os.environ``.

Kafka client properties (security included: ``security.protocol``, ``sasl.*``,
``ssl.*``) pass through verbatim from ``CAMSTREAM_KAFKA_CONFIG``, a JSON object, or the
``kafka_config`` table of the settings file.

A child process gets its parent's settings exactly through ``Settings.child_env``:
the parent's environment without its ``CAMSTREAM_*`` variables, plus ``to_env()``,
which writes every field that was set or differs from its default (dicts as JSON).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from camstream import modelrepo
from camstream.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent

ENV_PREFIX = "CAMSTREAM_"
CONFIG_FILE_VAR = f"{ENV_PREFIX}CONFIG_FILE"


class Settings(BaseSettings):
    """Configuration shared by producers, workers, the CLI and the local stack."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    # Kafka
    kafka_bootstrap: str = Field(default="127.0.0.1:9092", description="Bootstrap servers.")
    kafka_config: dict[str, str] = Field(
        default_factory=dict,
        description="Extra Kafka client properties (SASL, SSL, ...) passed through verbatim.",
    )
    topic_prefix: str = "camstream."
    topic_partitions: int = Field(default=4, ge=1)
    topic_replication_factor: int = Field(
        default=1,
        ge=1,
        description="Replicas of the topics camstream creates; 3 on a three-broker cluster.",
    )
    max_message_bytes: int = Field(default=1_000_000, ge=10_000)

    # Triton
    triton_grpc: str = Field(
        default="127.0.0.1:8001",
        description="Triton's gRPC address, or several as a comma-separated list of "
        "host:port: the worker spreads requests over the healthy ones.",
    )
    model_name: str = "efficientnet_lite0"
    model_version: str = Field(default="", description="Empty means the latest version.")
    model_repo: Path = Field(default=REPO_ROOT / "triton_repo")
    infer_timeout_s: float = Field(default=10.0, gt=0)
    model_precision: Literal["fp32", "int8"] = Field(
        default="fp32",
        description="What Triton's model.py serves: int8 loads a version's model_int8.onnx "
        "(`camstream quantize` writes it only past its gate) when present and made from "
        "its model.onnx, else model.onnx. Read by the server from its environment: set it "
        "as CAMSTREAM_MODEL_PRECISION where tritonserver starts.",
    )

    # Feast
    feast_repo: Path | None = Field(
        default=None, description="An applied Feast repo; default <state_dir>/feast."
    )
    feature_cache_ttl_s: float = Field(default=2.0, ge=0)
    default_threshold: float = Field(default=0.0, ge=0, le=1)

    # Worker (streams/: validation, batching, inference, enrichment, delivery)
    worker_name: str = "camstream-worker"
    batch_max: int = Field(default=16, ge=1)
    batch_within_s: float = Field(default=0.02, gt=0)
    infer_inflight: int = Field(
        default=2, ge=1, description="Triton requests a micro-batch is split into, in flight."
    )
    decode_threads: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Threads decoding JPEGs (OpenCV releases the GIL); about one per core.",
    )
    opencv_threads: int = Field(
        default=1,
        ge=0,
        description="OpenCV's own threads per call (cv2.setNumThreads); 1 because the "
        "decode threads already keep the cores busy, 0 lets OpenCV choose.",
    )
    max_frame_bytes: int = Field(default=8_000_000, ge=1)
    max_frame_pixels: int = Field(default=40_000_000, ge=1)
    top_k: int = Field(default=5, ge=1, le=1000)
    worker_data_dir: Path | None = Field(
        default=None, description="Faust's data folder; default <state_dir>/worker."
    )
    shadow_window_pairs: int = Field(
        default=50, ge=1, description="Shadow pairs per camera in one agreement summary."
    )
    shadow_inflight: int = Field(
        default=1,
        ge=1,
        description="Shadow candidate requests at once; frames sampled beyond are skipped.",
    )
    pipeline_depth: int = Field(
        default=2,
        ge=1,
        le=8,
        description="Micro-batches in flight at once (decode of one overlaps inference of "
        "another); results are published in order and acked only once published.",
    )
    buffer_frames: int = Field(
        default=256,
        ge=1,
        description="Frames Faust may buffer per partition before pausing it. Faust stops "
        "fetching a partition at 80% and resumes at 40%, and sleeps a second when every "
        "partition is paused, so the 40% must hold over a second of work: 64 starved the "
        "worker under a backlog (publishing stalled 0.4-0.65 s at a time).",
    )
    max_frame_age_s: float = Field(
        default=60.0,
        ge=0,
        description="Frames captured longer ago than this are skipped and counted, not "
        "classified (no prediction, no DLQ); 0 turns the policy off.",
    )
    triton_retry_max_s: float = Field(
        default=5.0,
        gt=0,
        description="Backoff cap between attempts while Triton is down, and between gRPC's "
        "reconnects to a server that went away.",
    )
    publish_retry_max_s: float = Field(
        default=5.0,
        gt=0,
        description="Backoff cap between attempts to publish records Kafka refused; the "
        "worker keeps trying (and stops consuming) until they are in.",
    )
    breaker_failures: int = Field(
        default=3, ge=1, description="Consecutive failed batches that open the breaker."
    )
    breaker_reset_s: float = Field(
        default=2.0, gt=0, description="Open-breaker wait before one trial batch."
    )
    feature_timeout_s: float = Field(
        default=0.5,
        gt=0,
        description="Longest a batch waits for a Feast read; later, cache or `missing`.",
    )
    activity_window_s: float = Field(
        default=60.0, gt=0, description="Rolling window of the camera activity features."
    )
    feature_push_interval_s: float = Field(
        default=1.0, gt=0, description="How often activity and drift rows go to Feast."
    )
    session_timeout_s: float = Field(
        default=10.0,
        ge=6,
        description="Kafka group session timeout: how soon a dead worker's partitions move.",
    )
    delivery: Literal["at_least_once", "exactly_once"] = Field(
        default="at_least_once",
        description="at_least_once: a crash may publish a frame's records twice (same "
        "dedup_key). exactly_once: records and consumed offsets commit in one Kafka "
        "transaction per frames partition, each record in its frame's partition number; "
        "read_committed consumers see every record once, up to commit_interval_s later.",
    )
    commit_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often consumed offsets are committed (with exactly_once, how "
        "often records become visible to read_committed consumers).",
    )
    # -- end of worker settings --

    # Producers (producers/: sources, rate control, delivery)
    producer_buffer_mb: int = Field(
        default=64,
        ge=1,
        description="Frames waiting for the broker (all cameras); a frame that does not fit "
        "is dropped (reason buffer_full).",
    )
    producer_buffer_s: float = Field(
        default=60.0,
        ge=1,
        description="A frame the broker has not acknowledged within this is dropped "
        "(reason expired).",
    )
    producer_linger_ms: float = Field(default=5.0, ge=0, le=1000)
    producer_flush_s: float = Field(
        default=5.0, ge=0, description="On SIGTERM: time to flush frames in flight."
    )
    producer_open_timeout_s: float = Field(default=10.0, gt=0, description="Stream open.")
    producer_read_timeout_s: float = Field(default=5.0, gt=0, description="Stream read.")
    producer_reconnect_initial_s: float = Field(default=0.5, gt=0)
    producer_reconnect_max_s: float = Field(default=30.0, gt=0)
    producer_status_interval_s: float = Field(
        default=30.0, gt=0, description="How often each camera logs its status line."
    )
    producer_ffmpeg_options: str = Field(
        default="rtsp_transport;tcp|analyzeduration;100000",
        description="OPENCV_FFMPEG_CAPTURE_OPTIONS for streams (replaces OpenCV's defaults: "
        "keep rtsp_transport;tcp unless UDP is wanted).",
    )
    producer_registry_poll_s: float = Field(
        default=2.0,
        ge=0.1,
        le=300,
        description="`camstream produce --from-registry`: how often the Feast registry is "
        "read again, so added cameras start and removed ones stop within about this.",
    )
    # -- end of producer settings --

    # Drift and data quality (streams/drift.py)
    drift_window_frames: int = Field(
        default=50, ge=5, description="A camera's window closes after this many frames."
    )
    drift_window_ms: int = Field(
        default=0,
        ge=0,
        description="When > 0, windows close by capture time instead of frame count.",
    )
    drift_calibration_frames: int = Field(
        default=800,
        ge=0,
        description="A camera's first frames under a reference profile become its own "
        "baseline (scene differences between cameras are not drift); 0 compares every "
        "window with the model's reference profile instead.",
    )
    drift_calibration_margin: float = Field(
        default=0.05,
        ge=0,
        description="Each window test's limit is at least its largest value over the "
        "camera's own calibration windows times (1 + margin).",
    )
    drift_psi_threshold: float = Field(default=0.25, gt=0)
    drift_js_threshold: float = Field(default=0.35, gt=0, le=1)
    drift_label_bins: int = Field(
        default=10, ge=1, description="Most frequent baseline labels kept; the rest is 'other'."
    )
    drift_ks_pvalue: float = Field(default=0.001, gt=0, lt=1)
    drift_ks_stride: int = Field(
        default=10,
        ge=1,
        description="KS p-values count every stride-th frame: consecutive frames are "
        "nearly copies, not independent samples.",
    )
    drift_confidence_shift: float = Field(default=0.15, gt=0, le=1)
    drift_adwin_delta: float = Field(
        default=0.001, gt=0, lt=1, description="ADWIN's confidence on per-frame confidence."
    )
    drift_frozen_frames: int = Field(
        default=10, ge=2, description="Identical consecutive frames that mean a frozen camera."
    )
    drift_clipped_share: float = Field(
        default=0.6,
        gt=0,
        le=1,
        description="A frame is black (over-exposed) when this share of its pixels is "
        "crushed (clipped).",
    )
    drift_bad_frame_share: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="Share of black or over-exposed frames in a window that raises the flag.",
    )
    drift_silence_s: float = Field(
        default=10.0, gt=0, description="A camera that sent nothing for this long is reported."
    )
    drift_checkpoint_s: float = Field(
        default=1.0, ge=0, description="How often per-camera drift state is saved to disk."
    )
    drift_reference: Path | None = Field(
        default=None,
        description="Reference profile; default <model_repo>/<model_name>/reference_profile.json",
    )
    drift_state_dir: Path | None = Field(
        default=None, description="Per-camera drift state; default <worker_dir>/drift."
    )
    # -- end of drift settings --

    # Every long-running process serves Prometheus metrics; 0 picks a free port.
    metrics_port: int = Field(default=0, ge=0, le=65535)

    # The live view (`camstream view`): binding anything but loopback needs the token.
    view_token: str | None = Field(
        default=None,
        repr=False,
        description="Token every request to the live view must carry (16+ characters).",
    )

    # The model lifecycle
    datasets_dir: Path | None = Field(
        default=None, description="Datasets (a folder each); default <state_dir>/datasets."
    )
    registry_dir: Path | None = Field(
        default=None, description="The model registry; default <state_dir>/registry."
    )

    # Local stack
    state_dir: Path = Field(default=REPO_ROOT / ".camstream")
    cache_dir: Path = Field(default=Path.home() / ".cache" / "camstream")
    log_level: str = "INFO"

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_topic_safe(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError(
                "CAMSTREAM_TOPIC_PREFIX may only hold letters, digits, '.', '_' and '-'"
            )
        return value

    @field_validator("triton_grpc")
    @classmethod
    def _triton_grpc_is_address_list(cls, value: str) -> str:
        parse_addresses(value)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get(CONFIG_FILE_VAR)
        if path:
            file = Path(path)
            if not file.is_file():
                raise ConfigError(
                    f"{CONFIG_FILE_VAR}={path} does not exist: point it at a YAML or TOML "
                    "settings file, or unset it"
                )
            if file.suffix == ".toml":
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=file))
            else:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=file))
        return tuple(sources)

    # Topics -------------------------------------------------------------------------

    @property
    def frames_topic(self) -> str:
        return f"{self.topic_prefix}frames"

    @property
    def predictions_topic(self) -> str:
        return f"{self.topic_prefix}predictions"

    @property
    def drift_topic(self) -> str:
        return f"{self.topic_prefix}drift"

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic_prefix}frames.dlq"

    @property
    def shadow_topic(self) -> str:
        return f"{self.topic_prefix}shadow"

    @property
    def output_topics(self) -> tuple[str, ...]:
        """Every topic the worker publishes to."""
        return (self.predictions_topic, self.drift_topic, self.dlq_topic, self.shadow_topic)

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic of the pipeline: frames in, the outputs."""
        return (self.frames_topic, *self.output_topics)

    @property
    def triton_grpc_addresses(self) -> list[str]:
        """Every Triton gRPC address of ``triton_grpc``, in order."""
        return parse_addresses(self.triton_grpc)

    @property
    def feast_repo_path(self) -> Path:
        return self.feast_repo or self.state_dir / "feast"

    @property
    def datasets_path(self) -> Path:
        return self.datasets_dir or self.state_dir / "datasets"

    @property
    def registry_path(self) -> Path:
        return self.registry_dir or self.state_dir / "registry"

    @property
    def worker_dir(self) -> Path:
        return self.worker_data_dir or self.state_dir / "worker"

    @property
    def labels_path(self) -> Path:
        """The served version's labels (``model_version``, else the latest), else the
        model's."""
        served = modelrepo.served_version(self.model_repo, self.model_name, self.model_version)
        return modelrepo.labels_path(self.model_repo, self.model_name, served)

    @property
    def reference_profile_path(self) -> Path:
        """``drift_reference``, else the served version's profile, else the model's."""
        served = modelrepo.served_version(self.model_repo, self.model_name, self.model_version)
        return self.drift_reference or modelrepo.reference_profile_path(
            self.model_repo, self.model_name, served
        )

    def model_version_dir(self) -> Path:
        """The served version's folder: ``model_version``, or the latest when empty.
        Raises ConfigError when the repository has no such version."""
        return modelrepo.version_dir(self.model_repo, self.model_name, self.model_version)

    def kafka_client_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka configuration: bootstrap servers, pass-through properties, extras."""
        return {"bootstrap.servers": self.kafka_bootstrap, **self.kafka_config, **extra}

    # A child process's settings ------------------------------------------------------

    def to_env(self) -> dict[str, str]:
        """``CAMSTREAM_*`` variables for every field that was set or differs from its
        default, from which ``Settings()`` reads these settings back exactly (the fields
        set included: an explicit ``log_level`` stays explicit; None where the default is
        None is not written)."""
        env: dict[str, str] = {}
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            default = info.get_default(call_default_factory=True)
            if value is None and default is None:
                continue  # unset either way: an environment cannot say None
            if name in self.model_fields_set or value != default:
                env[f"{ENV_PREFIX}{name.upper()}"] = _env_value(name, value)
        return env

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a child process that must run with these settings: ``base``
        (default: this process's environment) without its own ``CAMSTREAM_*`` variables
        (a settings file included: its values are in ``to_env()``), plus ``to_env()``.

        Prometheus' multiprocess variables are dropped: ``import feast`` sets them in
        the importing process, and a child that inherits them runs prometheus_client in
        multiprocess mode, which serves nothing of its own and shares one global lock."""
        inherited = os.environ if base is None else base
        env = {
            k: v
            for k, v in inherited.items()
            if not k.startswith(ENV_PREFIX) and k.lower() not in PROMETHEUS_MULTIPROCESS_VARS
        }
        env.update(self.to_env())
        return env


def parse_addresses(value: str) -> list[str]:
    """``host:port[,host:port...]`` as a list; ValueError naming the bad entry."""
    addresses = [part.strip() for part in value.split(",")]
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"{address!r} is not host:port: set CAMSTREAM_TRITON_GRPC to one address "
                "or a comma-separated list, e.g. 10.0.0.5:8001,10.0.0.6:8001"
            )
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"CAMSTREAM_TRITON_GRPC lists an address twice: {value!r}")
    return addresses


PROMETHEUS_MULTIPROCESS_VARS = frozenset(
    {"prometheus_multiproc_dir", "prometheus_multiprocess_dir"}
)


def _env_value(name: str, value: Any) -> str:
    """One field's value as pydantic-settings parses it back from the environment."""
    if isinstance(value, dict | list):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, str | int | float | Path):
        return str(value)  # str(float) is its shortest exact repr
    raise ConfigError(f"setting {name}={value!r} cannot be passed to a child process")


def load_settings(**overrides: Any) -> Settings:
    """Read settings; invalid values raise one ConfigError naming every variable to fix."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {ENV_PREFIX}{field.upper()}: {err['msg']}")
        raise ConfigError("invalid settings; fix these:\n" + "\n".join(lines)) from exc
