"""Publish camera frames to camstream.frames: one thread per camera, one Kafka producer.

A camera's frames come from its feed (producers.feed: sampling, pacing, reconnects);
each is scaled to fit the camera's max size, JPEG-encoded, checked against the
broker's message limit (scaled down further, or dropped as ``too_large``) and sent
keyed by camera id with the frame/1 headers (producers.delivery).

``seq`` starts at the camera's start time in epoch milliseconds and counts up, so it
keeps increasing across reconnects and producer restarts (below 1000 frames/s).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable

import structlog
from confluent_kafka import KafkaException

from camstream.cameras import Backpressure, CameraConfigError, CameraSpec, check_source
from camstream.errors import FrameRejected
from camstream.imaging import encode_jpeg, fit_within
from camstream.records import FrameHeaders
from camstream.settings import Settings
from producers.delivery import FramePublisher, ProducerFatalError, topic_message_limit
from producers.feed import FeedConfig, Frame, LatestFeed, PacedFeed
from producers.fleet import Fleet
from producers.sources import Image, Timeouts, make_source
from producers.stats import CameraCounters, CameraState, DropReason, ProducerStats

log = structlog.get_logger(__name__)

__all__ = ["CameraConfigError", "ProducerFatalError", "ProducerStats", "run_producers"]

# Scaling rounds a frame gets to fit the message limit before it is dropped.
FIT_ATTEMPTS = 3


def encode_within(
    image: Image, quality: int, limit: int, counters: CameraCounters
) -> tuple[bytes, int, int] | None:
    """JPEG bytes of at most ``limit`` bytes, with their width and height; the image is
    scaled down (area ~ bytes) when needed. None when it cannot fit (counted, logged)."""
    jpeg = encode_jpeg(image, quality)
    attempts = 0
    while len(jpeg) > limit:
        if attempts == FIT_ATTEMPTS:
            counters.on_dropped(DropReason.TOO_LARGE)
            if counters.dropped.get(DropReason.TOO_LARGE) == 1:  # once per camera
                log.error(
                    "frame.too_large",
                    camera=counters.camera,
                    bytes=len(jpeg),
                    limit=limit,
                    fix="lower jpeg_quality, max_width or max_height, or raise the topic's "
                    "max.message.bytes and CAMSTREAM_MAX_MESSAGE_BYTES",
                )
            return None
        scale = math.sqrt(limit / len(jpeg)) * 0.9
        height, width = image.shape[:2]
        image = fit_within(image, max(int(width * scale), 1), max(int(height * scale), 1))
        jpeg = encode_jpeg(image, quality)
        attempts += 1
    if attempts:
        counters.on_downscaled()
        if counters.downscaled == 1:
            log.warning(
                "frame.downscaled_to_fit",
                camera=counters.camera,
                size=f"{image.shape[1]}x{image.shape[0]}",
                limit=limit,
            )
    return jpeg, image.shape[1], image.shape[0]


class CameraWorker(threading.Thread):
    """Takes one camera's frames from its feed and hands them to the shared publisher."""

    def __init__(
        self,
        camera: CameraSpec,
        publisher: FramePublisher,
        counters: CameraCounters,
        settings: Settings,
        stop: threading.Event,
        max_frames: int | None = None,
        pace: bool = True,
    ) -> None:
        super().__init__(name=f"camera-{camera.id}", daemon=True)
        self.camera = camera
        self.publisher = publisher
        self.counters = counters
        self.stop_event = stop
        self.max_frames = max_frames
        timeouts = Timeouts(settings.producer_open_timeout_s, settings.producer_read_timeout_s)
        source = make_source(camera, timeouts)
        config = FeedConfig(
            fps=camera.fps,
            loop=camera.loop,
            reconnect_initial_s=settings.producer_reconnect_initial_s,
            reconnect_max_s=settings.producer_reconnect_max_s,
            pace=pace,
        )
        feed_cls = LatestFeed if camera.policy is Backpressure.DROP_OLDEST else PacedFeed
        self.feed = feed_cls(camera.id, source, config, counters)
        self.seq = time.time_ns() // 1_000_000

    def run(self) -> None:
        sent = 0
        try:
            for frame in self.feed.frames(self.stop_event):
                if self.stop_event.is_set():
                    self.counters.on_dropped(DropReason.UNFLUSHED)
                    break
                if self.publish(frame):
                    sent += 1
                if self.max_frames is not None and sent >= self.max_frames:
                    break
        except Exception as exc:
            self.counters.on_state(CameraState.DOWN, repr(exc))
            log.exception("camera.failed", camera=self.camera.id)
        if self.counters.state is not CameraState.DOWN:
            self.counters.on_state(CameraState.ENDED)
        log.info("camera.stopped", camera=self.camera.id, sent=sent)

    def publish(self, frame: Frame) -> bool:
        """Fit, encode and send one frame; False when it was dropped (counted)."""
        camera = self.camera
        image = fit_within(frame.image, camera.max_width, camera.max_height)
        try:
            encoded = encode_within(
                image, camera.jpeg_quality, self.publisher.frame_limit, self.counters
            )
        except FrameRejected:
            self.counters.on_dropped(DropReason.ENCODE_FAILED)
            return False
        if encoded is None:
            return False
        jpeg, width, height = encoded
        headers = FrameHeaders(camera.id, self.seq, frame.capture_ts_ms, width, height)
        self.seq += 1
        return self.publisher.send(self.counters, headers, jpeg)


def check_cameras(cameras: list[CameraSpec]) -> list[CameraSpec]:
    """The enabled cameras, each checked; raises CameraConfigError naming camera and fix."""
    enabled = [c for c in cameras if c.enabled]
    if not enabled:
        raise CameraConfigError("no enabled camera; set 'enabled: true' on at least one")
    ids = [c.id for c in enabled]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise CameraConfigError(f"camera ids must be unique; repeated: {repeated}")
    for camera in enabled:
        check_source(camera)
    return enabled


def configure_ffmpeg(settings: Settings) -> None:
    """OpenCV reads its FFmpeg capture options from the environment at each open."""
    if settings.producer_ffmpeg_options:
        os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = settings.producer_ffmpeg_options


def run_producers(
    settings: Settings,
    cameras: list[CameraSpec],
    stop: threading.Event,
    max_frames: int | None = None,
    on_tick: Callable[[ProducerStats], None] | None = None,
    record_seqs: bool | None = None,
    pace: bool = True,
    follow: Callable[[], list[CameraSpec]] | None = None,
) -> ProducerStats:
    """Produce every enabled camera until each ends, ``stop`` is set or Kafka refuses
    the producer; then flush for up to ``producer_flush_s``.

    Bad camera configuration raises CameraConfigError before anything starts; refused
    credentials or a missing topic raise ProducerFatalError. Acknowledged seqs are kept
    per camera (``stats.delivered``) when ``record_seqs``, by default for bounded runs
    (``max_frames``) only, so a producer left running for weeks does not grow.
    ``pace=False`` (benchmarks only) reads file and synthetic sources as fast as they go.

    ``follow``: the cameras wanted now (``producers.fleet.registry_cameras``), called
    every ``producer_registry_poll_s`` instead of ``cameras``: cameras start and stop
    as it changes, and the producer runs until ``stop`` even with none.
    """
    enabled = check_cameras(cameras) if follow is None else []
    configure_ffmpeg(settings)
    try:
        publisher = FramePublisher(settings, topic_message_limit(settings))
    except KafkaException as exc:  # a property librdkafka does not accept
        raise ProducerFatalError(
            f"invalid Kafka client configuration ({exc}); fix CAMSTREAM_KAFKA_CONFIG"
        ) from exc
    keep = max_frames is not None if record_seqs is None else record_seqs
    stats = ProducerStats()
    fleet = Fleet(settings, publisher, stats, max_frames=max_frames, pace=pace, record_seqs=keep)
    for camera in enabled:
        fleet.start(camera)
    log.info(
        "producer.started",
        cameras=len(enabled),
        topic=settings.frames_topic,
        frame_limit=publisher.frame_limit,
        from_registry=follow is not None,
    )
    now = time.monotonic()
    next_status = now + settings.producer_status_interval_s
    next_poll = now
    try:
        while follow is not None or fleet.any_alive():
            if stop.wait(0.05) or publisher.fatal_event.is_set():
                break
            now = time.monotonic()
            if follow is not None and now >= next_poll:
                next_poll = now + settings.producer_registry_poll_s
                _follow(fleet, follow)
            if on_tick is not None:
                on_tick(stats)
            if now >= next_status:
                next_status += settings.producer_status_interval_s
                log_status(stats, publisher.in_flight())
    finally:
        fleet.halt()
        publisher.close(0 if publisher.fatal else settings.producer_flush_s)
    log_status(stats, 0)
    if publisher.fatal:
        raise ProducerFatalError(publisher.fatal)
    return stats


def _follow(fleet: Fleet, wanted: Callable[[], list[CameraSpec]]) -> None:
    """One poll of the wanted cameras; an unreadable registry keeps the fleet as it is."""
    try:
        cameras = wanted()
    except Exception as exc:  # a registry being rewritten, a full disk: try again later
        log.warning("fleet.registry_unreadable", error=repr(exc))
        return
    fleet.reconcile(cameras)


def log_status(stats: ProducerStats, in_flight: int) -> None:
    """One status line per camera: state, fps since the last line, totals, drops."""
    for counters in stats.cameras.values():
        log.info("camera.status", in_flight=in_flight, **counters.status())
