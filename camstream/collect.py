"""Collect: sample one camera's frames from camstream.frames into a dataset, each with
the camera's Feast features as of its capture time.

Reading. A plain consumer assigns every partition of the frames topic: no group, no
commits, so collecting never moves a worker's offsets. It starts at ``since_ms``
(``offsets_for_times`` on the broker's timestamps; frames are then kept by their
capture time), else at the beginning, or, ``live`` without ``since_ms``, at the end.
Without ``live`` it stops at the end offsets seen at the start (or once records pass
``until_ms``); with ``live`` it reads new frames until ``max_frames``, a stop signal
or ``idle_timeout_s`` without a record.

Sampling (``FrameSampler``). Frames are the camera's when the record key is its id.
At most one frame per ``every_s`` of capture time; a sampled frame whose perceptual
hash is within ``near_duplicate_bits`` of one of the camera's recently kept frames is
a near-duplicate and dropped. Bad headers or JPEGs are counted and skipped. A kept
frame's exact JPEG bytes go to ``images/<camera>/<seq>.jpg``.

Features. The file offline store keeps ONE row per (camera_id, event_timestamp) of the
entity rows it is given and silently drops the others (feast#6787), so the query holds
unique keys and the answer is merged back onto every frame sharing a key
(``records_with_features``, which refuses to lose a frame). One call per feature view
the offline store can answer: an entity row whose every row in one view lies outside
that view's TTL is dropped from the whole answer, and one view's gap must not blank
the others. The worker pushes camera activity to the ONLINE store only, so
camera_activity_fv has no offline rows unless something writes them; its features
are then reported unavailable, not guessed. A frame the offline store has no row for
(captured before its camera was registered, or before a re-registration, which
replaces the camera's offline history) keeps None features and is counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import structlog

from camstream.datasets import (
    IMAGES_DIR,
    INFO_FILE,
    Dataset,
    DatasetInfo,
    FeatureValue,
    Record,
    dataset_dir,
)
from camstream.errors import CamstreamError, ConfigError, DlqKind, FrameRejected, ServiceError
from camstream.featurestore import META_VIEW, open_store
from camstream.imaging import decode_jpeg, hamming, jpeg_dimensions, perceptual_hash
from camstream.records import FrameHeaders
from camstream.settings import Settings

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message
    from feast import FeatureStore

log = structlog.get_logger(__name__)

SOURCE = "collect"
ORIGIN = "camera"
ACTIVITY_VIEW = "camera_activity_fv"
FEATURE_VIEWS = (META_VIEW, ACTIVITY_VIEW)
# Measured on the sample videos (pHash of the JPEG): a re-encode 0 bits, consecutive
# frames 0-2 (10-25 fps), frames 1 s apart 2-30 (median 8 on the street, 18 on bikes).
NEAR_DUPLICATE_BITS = 2
NEAR_DUPLICATE_WINDOW = 16  # kept frames per camera a new one is compared with
SAVE_EVERY_S = 60.0  # a live run saves its dataset this often
# A record produced after until_ms may still hold a frame captured before it.
UNTIL_SLACK_MS = 60_000
_CAMERA_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_AGO = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_EPOCH = pd.Timestamp(0, tz="UTC")

Key = tuple[str, int]  # (camera_id, capture_ts_ms): an entity row of the feature query
# progress(records scanned, records to scan (None when live), frames kept)
Progress = Callable[[int, int | None, int], None]
# Record headers as confluent-kafka hands them over.
RawHeaders = Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None


class FeatureJoinError(CamstreamError, RuntimeError):
    """The point-in-time join lost or duplicated a frame's row: a bug, never a result."""


class Outcome(StrEnum):
    """What became of one record of the frames topic."""

    KEPT = "kept"
    OTHER_CAMERA = "other_camera"
    INVALID = "invalid"
    OUTSIDE_RANGE = "outside_range"
    SKIPPED_RATE = "skipped_rate"
    ALREADY_COLLECTED = "already_collected"
    NEAR_DUPLICATE = "near_duplicate"


@dataclass(frozen=True)
class Frame:
    """A kept frame, its image written, waiting for its features."""

    camera: str
    seq: int
    capture_ts_ms: int
    path: str
    sha256: str
    phash: str

    @property
    def key(self) -> Key:
        return (self.camera, self.capture_ts_ms)


@dataclass
class CollectResult:
    """What one collection read, kept and skipped, and the features it joined.

    ``read`` counts the camera's records; it is the sum of kept, skipped_rate,
    near_duplicates, invalid, outside_range and already_collected.
    """

    dataset: str
    root: Path
    camera: str
    scanned: int = 0  # records read from the topic, every camera's
    read: int = 0
    kept: int = 0
    skipped_rate: int = 0
    near_duplicates: int = 0
    invalid: int = 0
    outside_range: int = 0  # capture time outside [since_ms, until_ms]
    already_collected: int = 0  # the dataset already holds that camera's seq
    features_rows: int = 0  # kept frames with a row from every view joined
    features_missing: int = 0  # kept frames some view had no row for (None features)
    features: list[str] = field(default_factory=list)  # feature refs joined
    features_unavailable: list[str] = field(default_factory=list)  # no offline rows
    images: int = 0  # records in the dataset after the collection
    stopped: str = ""  # end, until, max, idle, signal

    def to_json(self) -> dict[str, Any]:
        return {name: str(v) if isinstance(v, Path) else v for name, v in vars(self).items()}


def parse_time(text: str, now_ms: int | None = None) -> int:
    """Epoch milliseconds of ``text``: ISO 8601 (without a zone: UTC, as Feast reads
    it), a time ago (``-30s``, ``-10m``, ``-2h``, ``-1d``) or epoch milliseconds."""
    value = text.strip()
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if value.isdigit():
        return int(value)
    ago = _AGO.match(value)
    if ago:
        delta = timedelta(**{_UNITS[ago.group(2)]: float(ago.group(1))})
        return now - int(delta / timedelta(milliseconds=1))
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"time {text!r}: write ISO 8601 (2026-05-01T12:00:00, UTC unless it names a "
            "zone), a time ago (-30s, -10m, -2h, -1d) or epoch milliseconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


# -- sampling ------------------------------------------------------------------------


class RateSampler:
    """At most one frame per ``every_s`` of capture time, per camera."""

    def __init__(self, every_s: float) -> None:
        self.interval_ms = round(every_s * 1000)
        self._last: dict[str, int] = {}

    def due(self, camera: str, capture_ts_ms: int) -> bool:
        last = self._last.get(camera)
        return last is None or abs(capture_ts_ms - last) >= self.interval_ms

    def take(self, camera: str, capture_ts_ms: int) -> None:
        self._last[camera] = capture_ts_ms


class NearDuplicates:
    """Perceptual hashes of each camera's last ``window`` kept frames."""

    def __init__(self, bits: int = NEAR_DUPLICATE_BITS, window: int = NEAR_DUPLICATE_WINDOW):
        self.bits = bits
        self.window = window
        self._recent: dict[str, deque[str]] = {}

    def matches(self, camera: str, phash: str) -> bool:
        """Whether ``phash`` is within ``bits`` of a recently kept frame of ``camera``."""
        return any(hamming(phash, seen) <= self.bits for seen in self._recent.get(camera, ()))

    def add(self, camera: str, phash: str) -> None:
        self._recent.setdefault(camera, deque(maxlen=self.window)).append(phash)


class FrameSampler:
    """Decides record by record what a collection of ``camera`` keeps, and writes the
    kept frames' JPEG bytes, exactly as received, into the dataset folder."""

    def __init__(
        self,
        camera: str,
        root: Path,
        *,
        every_s: float,
        since_ms: int | None = None,
        until_ms: int | None = None,
        near_duplicates: NearDuplicates | None = None,
        known_paths: Iterable[str] = (),
    ) -> None:
        self.camera = camera
        self.root = root
        self.since_ms = since_ms
        self.until_ms = until_ms
        self.rate = RateSampler(every_s)
        self.near = near_duplicates or NearDuplicates()
        self.known = set(known_paths)
        self.counts: Counter[Outcome] = Counter()
        self.pending: list[Frame] = []  # kept since the last take_pending()

    def offer(
        self,
        key: bytes | None,
        headers: RawHeaders,
        value: bytes | None,
    ) -> Outcome:
        outcome = self._decide(key, headers, value)
        self.counts[outcome] += 1
        return outcome

    def take_pending(self) -> list[Frame]:
        taken, self.pending = self.pending, []
        return taken

    def _decide(
        self,
        key: bytes | None,
        headers: RawHeaders,
        value: bytes | None,
    ) -> Outcome:
        if key != self.camera.encode():
            return Outcome.OTHER_CAMERA
        try:
            meta, jpeg = _valid_frame(self.camera, headers, value)
        except FrameRejected as exc:
            log.info("collect.frame_invalid", camera=self.camera, kind=exc.kind, error=str(exc))
            return Outcome.INVALID
        ts = meta.capture_ts_ms
        if (self.since_ms is not None and ts < self.since_ms) or (
            self.until_ms is not None and ts > self.until_ms
        ):
            return Outcome.OUTSIDE_RANGE
        if not self.rate.due(self.camera, ts):
            return Outcome.SKIPPED_RATE
        path = f"{IMAGES_DIR}/{self.camera}/{meta.seq}.jpg"
        if path in self.known:
            self.rate.take(self.camera, ts)
            return Outcome.ALREADY_COLLECTED
        try:
            image = decode_jpeg(jpeg)
        except FrameRejected as exc:
            log.info(
                "collect.frame_invalid",
                camera=self.camera,
                seq=meta.seq,
                kind=exc.kind,
                error=str(exc),
            )
            return Outcome.INVALID
        self.rate.take(self.camera, ts)
        phash = perceptual_hash(image)
        if self.near.matches(self.camera, phash):
            return Outcome.NEAR_DUPLICATE
        self.near.add(self.camera, phash)
        _write_atomic(self.root / path, jpeg)
        self.known.add(path)
        digest = hashlib.sha256(jpeg).hexdigest()
        self.pending.append(Frame(self.camera, meta.seq, ts, path, digest, phash))
        return Outcome.KEPT


def _valid_frame(
    camera: str, headers: RawHeaders, value: bytes | None
) -> tuple[FrameHeaders, bytes]:
    """The frame's headers and JPEG, checked as the worker checks them (without decoding)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    raw = {name: v if isinstance(v, bytes) else (v or "").encode() for name, v in pairs}
    meta = FrameHeaders.from_kafka(raw)
    if meta.camera_id != camera:
        raise FrameRejected(
            DlqKind.BAD_HEADERS, f"header camera-id={meta.camera_id!r} differs from key {camera!r}"
        )
    if not value:
        raise FrameRejected(DlqKind.EMPTY_VALUE, "the record has no value")
    width, height = jpeg_dimensions(value)
    if (width, height) != (meta.width, meta.height):
        raise FrameRejected(
            DlqKind.DIMENSION_MISMATCH,
            f"headers say {meta.width}x{meta.height}, the JPEG is {width}x{height}",
        )
    return meta, value


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- point-in-time features ----------------------------------------------------------


def unique_keys(frames: Iterable[Frame]) -> list[Key]:
    """The entity rows to ask for: each (camera_id, capture_ts_ms) once."""
    return sorted({frame.key for frame in frames})


def entity_df(keys: Sequence[Key]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "camera_id": [camera for camera, _ts in keys],
            "event_timestamp": pd.to_datetime([ts for _camera, ts in keys], unit="ms", utc=True),
        }
    )


def feature_value(value: Any) -> FeatureValue:
    """A value from Feast's answer as JSON carries it: numpy scalars as Python ones,
    NaN/NA as None, a float32 as the shortest decimal that reads back as it (0.2)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        single = np.float32(value)
        return float(str(single)) if float(single) == value else value
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return str(value)


def rows_by_key(
    table: pd.DataFrame, names: Sequence[str], asked: set[Key]
) -> dict[Key, dict[str, FeatureValue]]:
    """Feast's answer keyed by (camera_id, capture ms); each key one asked for, once."""
    if table.empty:
        return {}
    ms = (pd.to_datetime(table["event_timestamp"], utc=True) - _EPOCH) // pd.Timedelta(
        milliseconds=1
    )
    out: dict[Key, dict[str, FeatureValue]] = {}
    columns = [table[name].tolist() for name in names]
    for index, (camera, ts) in enumerate(
        zip(table["camera_id"].tolist(), ms.tolist(), strict=True)
    ):
        key = (str(camera), int(ts))
        if key not in asked or key in out:
            raise FeatureJoinError(f"the offline store answered {key} twice or unasked")
        out[key] = {
            name: feature_value(column[index]) for name, column in zip(names, columns, strict=True)
        }
    return out


def records_with_features(
    frames: Sequence[Frame],
    answers: Sequence[Mapping[Key, Mapping[str, FeatureValue]]],
    names: Sequence[str],
) -> tuple[list[Record], int]:
    """One Record per frame, with every view's row for the frame's key (frames sharing
    a key share its row); None for each feature of a view that had no row for it.
    Returns the records and how many frames had a row from every view."""
    complete = 0
    records = []
    for frame in frames:
        features: dict[str, FeatureValue] = dict.fromkeys(names)
        found = [answer[frame.key] for answer in answers if frame.key in answer]
        for row in found:
            features.update(row)
        complete += len(found) == len(answers)
        records.append(
            Record(
                path=frame.path,
                sha256=frame.sha256,
                phash=frame.phash,
                origin=ORIGIN,
                camera=frame.camera,
                seq=frame.seq,
                capture_ts_ms=frame.capture_ts_ms,
                features=features,
            )
        )
    if [r.path for r in records] != [f.path for f in frames]:
        raise FeatureJoinError(f"{len(frames)} frames came back as {len(records)} records")
    return records, complete


def offline_views(store: FeatureStore) -> tuple[dict[str, list[str]], list[str]]:
    """Feature refs per view the offline store can answer, and the refs it cannot
    (a file source whose file does not exist: nothing was ever written offline)."""
    answerable: dict[str, list[str]] = {}
    unavailable: list[str] = []
    for name in FEATURE_VIEWS:
        view = store.get_feature_view(name)
        refs = [f"{name}:{feature.name}" for feature in view.features]
        path = str(getattr(view.batch_source, "path", "") or "")
        local = path and "://" not in path
        file = Path(path) if Path(path).is_absolute() else Path(store.repo_path) / path
        if local and not file.exists():
            unavailable += refs
        else:
            answerable[name] = refs
    return answerable, unavailable


def point_in_time_records(
    store: FeatureStore, views: Mapping[str, Sequence[str]], frames: Sequence[Frame]
) -> tuple[list[Record], int]:
    """The frames' records with each view's features as of each frame's capture time."""
    keys = unique_keys(frames)
    entities = entity_df(keys)
    answers = []
    names: list[str] = []
    for refs in views.values():
        view_names = [ref.split(":", 1)[1] for ref in refs]
        names += view_names
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # Feast prints to our stdout
                job = store.get_historical_features(entity_df=entities, features=list(refs))
                table = job.to_df()
        except Exception as exc:  # Feast's own errors share no base class
            raise ServiceError(
                f"Feast at {store.repo_path} could not join {refs[0].split(':')[0]} for "
                f"{len(keys)} frames: {exc!r}; the images are written, the manifest is not: "
                "collect again once `camstream status` shows the stack healthy"
            ) from exc
        answers.append(rows_by_key(table, view_names, set(keys)))
    return records_with_features(frames, answers, names)


# -- reading the topic ---------------------------------------------------------------


class _TopicReader:
    """The frames topic's records from the start offsets, until the end offsets seen
    at the start (not live), until_ms, idle_timeout_s without a record, or ``stop``."""

    def __init__(
        self,
        consumer: Consumer,
        topic: str,
        bounds: Mapping[int, tuple[int, int]],
        *,
        live: bool,
        until_ms: int | None,
        idle_timeout_s: float,
        stop: threading.Event,
    ) -> None:
        self.consumer = consumer
        self.topic = topic
        self.ends = {p: end for p, (_start, end) in bounds.items()}
        self.pending = {p for p, (start, end) in bounds.items() if live or start < end}
        self.to_read = None if live else sum(max(0, end - start) for start, end in bounds.values())
        self.live = live
        self.until_ms = until_ms
        self.idle_timeout_s = idle_timeout_s
        self.stop = stop
        self.stopped = ""
        self._passed_until = False

    def __iter__(self) -> Iterator[Message]:
        from confluent_kafka import KafkaError

        last = time.monotonic()
        while True:
            if self.stop.is_set():
                self.stopped = "signal"
                return
            if not self.pending:
                self.stopped = "until" if self._passed_until else "end"
                return
            msg = self.consumer.poll(0.5)
            if msg is None:
                if time.monotonic() - last > self.idle_timeout_s:
                    self.stopped = "idle"
                    return
                continue
            err = msg.error()
            partition = msg.partition() or 0
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    last = time.monotonic()
                    if not self.live:
                        self._done(partition)
                elif err.fatal():
                    raise ServiceError(f"Kafka failed while collecting: {err.str()}")
                else:  # a broker error is not activity: the idle timeout still runs
                    log.warning("collect.kafka_error", error=err.str())
                continue
            last = time.monotonic()
            if partition not in self.pending:
                continue
            _kind, ts = msg.timestamp()
            if self.until_ms is not None and ts > self.until_ms + UNTIL_SLACK_MS:
                self._passed_until = True
                self._done(partition)
                continue
            if not self.live and (msg.offset() or 0) + 1 >= self.ends[partition]:
                self._done(partition)
            yield msg

    def _done(self, partition: int) -> None:
        from confluent_kafka import TopicPartition

        if partition in self.pending:
            self.pending.discard(partition)
            with contextlib.suppress(Exception):
                self.consumer.pause([TopicPartition(self.topic, partition)])


def _open_reader(
    settings: Settings,
    *,
    since_ms: int | None,
    until_ms: int | None,
    live: bool,
    idle_timeout_s: float,
    stop: threading.Event,
) -> _TopicReader:
    """A consumer assigned to every partition of the frames topic at its start offset."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    topic = settings.frames_topic
    consumer = Consumer(
        settings.kafka_client_config(
            **{
                "group.id": f"camstream-collect-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
            }
        )
    )
    try:
        metadata = consumer.list_topics(timeout=10)
        described = metadata.topics.get(topic)
        if described is None or described.error is not None or not described.partitions:
            raise ConfigError(
                f"topic {topic} does not exist on {settings.kafka_bootstrap}: start the stack "
                "(`camstream up`), or check CAMSTREAM_KAFKA_BOOTSTRAP and CAMSTREAM_TOPIC_PREFIX"
            )
        ids = sorted(described.partitions)
        marks = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in ids
        }
        if since_ms is not None:
            found = consumer.offsets_for_times(
                [TopicPartition(topic, p, since_ms) for p in ids], timeout=10
            )
            starts = {
                tp.partition: tp.offset if tp.offset >= 0 else marks[tp.partition][1]
                for tp in found
            }
        else:
            starts = {p: marks[p][1] if live else marks[p][0] for p in ids}
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in ids])
    except KafkaException as exc:
        consumer.close()
        raise ServiceError(
            f"Kafka at {settings.kafka_bootstrap} did not answer for {topic}: {exc}; "
            "is the stack up (`camstream status`)?"
        ) from exc
    except BaseException:
        consumer.close()
        raise
    return _TopicReader(
        consumer,
        topic,
        {p: (starts[p], marks[p][1]) for p in ids},
        live=live,
        until_ms=until_ms,
        idle_timeout_s=idle_timeout_s,
        stop=stop,
    )


# -- the stage -----------------------------------------------------------------------


def _open_dataset(root: Path, name: str, camera: str, topic: str) -> Dataset:
    if (root / INFO_FILE).is_file():
        return Dataset.load(root)
    info = DatasetInfo(
        name=name,
        source=SOURCE,
        created_ms=time.time_ns() // 1_000_000,
        description=f"frames collected from {topic}, first from camera {camera}",
    )
    return Dataset.create(root, info)


def _check(
    camera: str, every_s: float, idle_timeout_s: float, max_frames: int | None, bits: int
) -> None:
    if not _CAMERA_FOLDER.match(camera):
        raise ConfigError(
            f"camera {camera!r}: collect names image folders after cameras, so the id must be "
            "1-200 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if (
        every_s < 0
        or idle_timeout_s <= 0
        or (max_frames is not None and max_frames < 1)
        or not 0 <= bits <= 64
    ):
        raise ConfigError(
            f"every_s={every_s}, idle_timeout_s={idle_timeout_s}, max_frames={max_frames}, "
            f"near_duplicate_bits={bits}: the rate must be >= 0 s, the idle timeout > 0 s, "
            "the maximum >= 1 frame and the near-duplicate bits 0-64"
        )


def collect(
    settings: Settings,
    camera: str,
    dataset_name: str,
    *,
    max_frames: int | None,
    every_s: float,
    since_ms: int | None,
    until_ms: int | None,
    live: bool,
    idle_timeout_s: float,
    progress: Progress | None = None,
    near_duplicate_bits: int = NEAR_DUPLICATE_BITS,
    stop: threading.Event | None = None,
    save_every_s: float = SAVE_EVERY_S,
) -> CollectResult:
    """Sample ``camera``'s frames from the frames topic into dataset ``dataset_name``
    (created if new), each with its point-in-time features; see the module docstring.
    The dataset is saved atomically at the end (and every ``save_every_s`` when live);
    a new dataset that kept nothing is not created."""
    _check(camera, every_s, idle_timeout_s, max_frames, near_duplicate_bits)
    root = dataset_dir(settings.datasets_path, dataset_name)
    dataset = _open_dataset(root, dataset_name, camera, settings.frames_topic)
    store = open_store(settings.feast_repo_path)
    views, unavailable = offline_views(store)
    near = NearDuplicates(near_duplicate_bits)
    mine = sorted(
        (r for r in dataset.records if r.camera == camera and r.phash),
        key=lambda r: r.capture_ts_ms or 0,
    )
    for record in mine[-near.window :]:
        near.add(camera, record.phash)
    sampler = FrameSampler(
        camera,
        root,
        every_s=every_s,
        since_ms=since_ms,
        until_ms=until_ms,
        near_duplicates=near,
        known_paths=(r.path for r in dataset.records),
    )
    result = CollectResult(
        dataset_name,
        root,
        camera,
        features=[ref for refs in views.values() for ref in refs],
        features_unavailable=unavailable,
    )
    if unavailable:
        log.info("collect.features_unavailable", camera=camera, features=unavailable)

    def flush() -> None:
        frames = sampler.take_pending()
        if not frames:
            return
        records, complete = point_in_time_records(store, views, frames)
        dataset.records.extend(records)
        dataset.save()
        result.features_rows += complete
        result.features_missing += len(frames) - complete
        log.info("collect.saved", camera=camera, dataset=dataset_name, frames=len(frames))

    reader = _open_reader(
        settings,
        since_ms=since_ms,
        until_ms=until_ms,
        live=live,
        idle_timeout_s=idle_timeout_s,
        stop=stop or threading.Event(),
    )
    last_save = last_progress = time.monotonic()
    try:
        for msg in reader:
            result.scanned += 1
            outcome = sampler.offer(msg.key(), msg.headers(), msg.value())
            now = time.monotonic()
            if progress is not None and (now - last_progress > 0.2 or outcome == Outcome.KEPT):
                progress(result.scanned, reader.to_read, sampler.counts[Outcome.KEPT])
                last_progress = now
            if max_frames is not None and sampler.counts[Outcome.KEPT] >= max_frames:
                result.stopped = "max"
                break
            if live and now - last_save >= save_every_s:
                flush()
                last_save = now
    except KeyboardInterrupt:
        result.stopped = "signal"
    finally:
        reader.consumer.close()
    result.stopped = result.stopped or reader.stopped
    flush()
    counts = sampler.counts
    result.kept = counts[Outcome.KEPT]
    result.skipped_rate = counts[Outcome.SKIPPED_RATE]
    result.near_duplicates = counts[Outcome.NEAR_DUPLICATE]
    result.invalid = counts[Outcome.INVALID]
    result.outside_range = counts[Outcome.OUTSIDE_RANGE]
    result.already_collected = counts[Outcome.ALREADY_COLLECTED]
    result.read = counts.total() - counts[Outcome.OTHER_CAMERA]
    result.images = len(dataset.records)
    if result.features_missing:
        log.warning(
            "collect.features_missing",
            camera=camera,
            frames=result.features_missing,
            fix="register the camera before its frames are captured; re-registering a "
            "camera replaces its offline history",
        )
    log.info("collect.done", **result.to_json())
    return result
