"""The view's Kafka readers and registry poll, each a thread that fills a FleetState.

The record topics (predictions, drift, shadow, DLQ) are read from ``history_s`` back,
so a page opened now has the last minutes to draw, then live; frames from their end
only (a thumbnail of the past is no use). Partitions are assigned directly (no group,
no commits, nothing to rebalance); topics that do not exist yet (a shadow topic before
the first shadow run) are looked for again every few seconds. A record the view cannot
read is counted and skipped, never fatal. The frames reader gets two things from each
frame: a count towards fps in, and, at the thumbnailer's rate, a thumbnail.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog
from confluent_kafka import OFFSET_END, Consumer, KafkaException, Message, TopicPartition
from prometheus_client import Counter

from camstream.settings import Settings
from camstream.view.state import FleetState
from camstream.view.thumbnails import Thumbnailer

log = structlog.get_logger(__name__)

RECORDS = Counter("camstream_view_records_total", "Records the view read, by topic", ["topic"])
UNREADABLE = Counter(
    "camstream_view_unreadable_records_total", "Records the view could not read", ["topic"]
)
THUMBNAILS = Counter("camstream_view_thumbnails_total", "Thumbnails made from frames")

ASSIGN_EVERY_S = 5.0  # how often topics and partitions are looked for again
LATE_FRAME_S = 10.0  # a frame captured longer ago than this gets no thumbnail


class TopicReader(threading.Thread):
    """Reads ``topics`` (name -> seconds of history, None = from the end) and hands
    every record to ``handle`` (then calls ``after_batch``, at least every 0.2 s),
    until ``stop`` is set."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        topics: Mapping[str, float | None],
        handle: Callable[[Message], None],
        stop: threading.Event,
        after_batch: Callable[[], None] | None = None,
        **config: Any,
    ) -> None:
        super().__init__(name=f"view-{name}", daemon=True)
        self.settings = settings
        self.topics = dict(topics)
        self.handle = handle
        self.after_batch = after_batch
        self.halt = stop
        self.config = config
        self.assigned: set[tuple[str, int]] = set()
        self.error: str | None = None

    def _consumer(self) -> Consumer:
        return Consumer(
            self.settings.kafka_client_config(
                **{
                    "group.id": f"camstream-view-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "latest",
                    "fetch.wait.max.ms": 50,
                    "queued.max.messages.kbytes": 16384,
                    **self.config,
                }
            )
        )

    def _assign_new(self, consumer: Consumer) -> None:
        """Assign partitions not assigned yet, each at its history's start."""
        fresh: list[TopicPartition] = []
        now_ms = int(time.time() * 1000)
        for topic, history_s in self.topics.items():
            metadata = consumer.list_topics(topic, timeout=5).topics.get(topic)
            if metadata is None or metadata.error is not None:
                continue  # not created yet: looked for again later
            for partition in metadata.partitions:
                if (topic, partition) in self.assigned:
                    continue
                start = OFFSET_END
                if history_s:
                    wanted = TopicPartition(topic, partition, now_ms - int(history_s * 1000))
                    (found,) = consumer.offsets_for_times([wanted], timeout=5)
                    start = found.offset if found.offset >= 0 else OFFSET_END
                fresh.append(TopicPartition(topic, partition, start))
        if fresh:
            consumer.incremental_assign(fresh)
            self.assigned |= {(tp.topic, tp.partition) for tp in fresh}
            log.info("view.assigned", reader=self.name, partitions=len(self.assigned))

    def run(self) -> None:
        consumer = self._consumer()
        next_assign = 0.0
        try:
            while not self.halt.is_set():
                if time.monotonic() >= next_assign:
                    try:
                        self._assign_new(consumer)
                    except KafkaException as exc:
                        log.warning("view.assign_failed", reader=self.name, error=str(exc))
                    next_assign = time.monotonic() + ASSIGN_EVERY_S
                if not self.assigned:
                    self.halt.wait(0.2)
                    continue
                for message in consumer.consume(num_messages=500, timeout=0.2):
                    if message.error() is None:
                        self._handle(message)
                if self.after_batch is not None:
                    self.after_batch()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("view.reader_failed", reader=self.name)
            raise
        finally:
            consumer.close()

    def _handle(self, message: Message) -> None:
        try:
            self.handle(message)
        except Exception as exc:
            UNREADABLE.labels(_role(message.topic() or "", self.settings)).inc()
            log.debug("view.unreadable", topic=message.topic(), error=str(exc))


def _role(topic: str, settings: Settings) -> str:
    return topic.removeprefix(settings.topic_prefix)


def _key(message: Message) -> str | None:
    key = message.key()
    if not key:
        return None
    return key.decode(errors="replace") if isinstance(key, bytes) else str(key)


def _headers(message: Message) -> dict[str, bytes]:
    headers: dict[str, bytes] = {}
    for item in message.headers() or []:
        name, value = str(item[0]), item[1]
        headers[name] = value if isinstance(value, bytes) else str(value or "").encode()
    return headers


def record_handler(settings: Settings, state: FleetState) -> Callable[[Message], None]:
    """Predictions, drift, shadow and DLQ records into ``state``."""
    appliers: dict[str, Callable[[dict[str, Any]], None]] = {
        settings.predictions_topic: state.apply_prediction,
        settings.drift_topic: state.apply_drift,
        settings.shadow_topic: state.apply_shadow,
    }

    def handle(message: Message) -> None:
        topic = message.topic() or ""
        RECORDS.labels(_role(topic, settings)).inc()
        if topic == settings.dlq_topic:
            state.apply_dlq(_key(message), _headers(message))
            return
        record = json.loads(message.value() or b"null")
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        appliers[topic](record)

    return handle


class FrameHandler:
    """Frames: each counts towards its camera's fps in; at most one per camera per
    interval becomes its thumbnail. A frame that comes too soon is held (one per camera,
    the newest) and becomes the thumbnail once the interval is over (``flush``), so the
    last frame of a camera that stops is the one shown."""

    def __init__(self, settings: Settings, state: FleetState, thumbnails: Thumbnailer) -> None:
        self.role = _role(settings.frames_topic, settings)
        self.state = state
        self.thumbnails = thumbnails
        self.held: dict[str, bytes] = {}

    def __call__(self, message: Message) -> None:
        RECORDS.labels(self.role).inc()
        headers = _headers(message)
        camera_id = _key(message) or headers.get("camera-id", b"").decode(errors="replace")
        if not camera_id:
            raise ValueError("a frame without a camera id")
        try:
            capture_ms: int | None = int(headers.get("capture-ts-ms", b""))
        except ValueError:
            capture_ms = None
        self.state.apply_frame(camera_id, capture_ms)
        now = time.time()
        if capture_ms is not None and now - capture_ms / 1000 > LATE_FRAME_S:
            return  # a backlog being read: no thumbnail of the past
        jpeg = message.value() or b""
        if self.thumbnails.due(camera_id, now):
            self.held.pop(camera_id, None)
            self._thumbnail(camera_id, jpeg, now)
        elif len(self.held) < self.state.max_cameras or camera_id in self.held:
            self.held[camera_id] = jpeg

    def flush(self) -> None:
        """Thumbnails of the held frames whose camera's interval is over."""
        now = time.time()
        for camera_id in [c for c in self.held if self.thumbnails.due(c, now)]:
            self._thumbnail(camera_id, self.held.pop(camera_id), now)

    def _thumbnail(self, camera_id: str, jpeg: bytes, now: float) -> None:
        thumbnail = self.thumbnails.make(camera_id, jpeg, now)
        if thumbnail is not None:
            THUMBNAILS.inc()
            self.state.set_thumbnail(camera_id, thumbnail)


class RegistryPoller(threading.Thread):
    """Reads the registered cameras from the Feast repo when its camera file changes."""

    def __init__(
        self, repo: Path, state: FleetState, stop: threading.Event, every_s: float = 2.0
    ) -> None:
        super().__init__(name="view-registry", daemon=True)
        self.repo = repo
        self.state = state
        self.halt = stop
        self.every_s = every_s

    def run(self) -> None:
        from camstream.featurestore import META_FILE, registered_cameras

        seen: float | None = None
        while not self.halt.is_set():
            try:
                mtime = (self.repo / META_FILE).stat().st_mtime
            except OSError:
                mtime = None
            if mtime is not None and mtime != seen:
                try:
                    self.state.set_registry(registered_cameras(self.repo))
                    seen = mtime
                except Exception as exc:  # a file being replaced: read it next time
                    log.warning("view.registry_unreadable", repo=str(self.repo), error=str(exc))
            self.halt.wait(self.every_s)


def start_readers(
    settings: Settings,
    state: FleetState,
    thumbnails: Thumbnailer,
    stop: threading.Event,
    history_s: float,
    feast_repo: Path | None = None,
) -> list[threading.Thread]:
    """Start the readers (records, frames and, with a Feast repo, the registry)."""
    history = history_s or None
    frames = FrameHandler(settings, state, thumbnails)
    records = {
        topic: history
        for topic in (
            settings.predictions_topic,
            settings.drift_topic,
            settings.shadow_topic,
            settings.dlq_topic,
        )
    }
    threads: list[threading.Thread] = [
        TopicReader("records", settings, records, record_handler(settings, state), stop),
        TopicReader(
            "frames",
            settings,
            {settings.frames_topic: None},
            frames,
            stop,
            after_batch=frames.flush,
        ),
    ]
    if feast_repo is not None:
        threads.append(RegistryPoller(feast_repo, state, stop))
    for thread in threads:
        thread.start()
    return threads
