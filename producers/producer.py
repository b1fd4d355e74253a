"""Publish camera frames to camstream.frames: one thread per camera, one Kafka producer.

Each frame is JPEG-encoded and sent keyed by camera id with the frame/1 headers. The
Kafka producer is idempotent with acks=all; delivery reports drive the metrics. ``seq``
starts at the process's start time in epoch milliseconds and counts up, so it keeps
increasing across reconnects and producer restarts (at under 1000 frames/s).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from confluent_kafka import KafkaError, Message, Producer
from prometheus_client import Counter, Histogram

from camstream.cameras import CameraSpec
from camstream.imaging import encode_jpeg
from camstream.records import FrameHeaders
from camstream.settings import Settings
from producers.sources import fit_width, open_source

log = structlog.get_logger(__name__)

FRAMES = Counter(
    "camstream_producer_frames_total", "Frames by camera and outcome", ["camera", "outcome"]
)
PUBLISH_LATENCY = Histogram(
    "camstream_producer_publish_seconds",
    "From hand-off to the Kafka client to the broker's acknowledgement",
    ["camera"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


@dataclass
class ProducerStats:
    """What one producer run did, per camera; delivered holds acknowledged seqs."""

    delivered: dict[str, list[int]] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, camera: str, seq: int | None, outcome: str) -> None:
        with self.lock:
            if outcome == "delivered" and seq is not None:
                self.delivered.setdefault(camera, []).append(seq)
            elif outcome == "failed":
                self.failed[camera] = self.failed.get(camera, 0) + 1
            else:
                self.dropped[camera] = self.dropped.get(camera, 0) + 1
        FRAMES.labels(camera, outcome).inc()


def kafka_producer(settings: Settings) -> Producer:
    return Producer(
        settings.kafka_client_config(
            **{
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.max.bytes": settings.max_message_bytes,
                "queue.buffering.max.kbytes": 256 * 1024,
                "client.id": "camstream-producer",
            }
        )
    )


class CameraThread(threading.Thread):
    """Reads one camera, encodes its frames and hands them to the shared producer."""

    def __init__(
        self,
        camera: CameraSpec,
        producer: Producer,
        topic: str,
        stats: ProducerStats,
        stop: threading.Event,
        max_frames: int | None,
        max_bytes: int,
    ) -> None:
        super().__init__(name=f"camera-{camera.id}", daemon=True)
        self.camera = camera
        self.producer = producer
        self.topic = topic
        self.stats = stats
        self.stop_event = stop
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.seq = time.time_ns() // 1_000_000
        self.sent = 0

    def run(self) -> None:
        cid = self.camera.id
        try:
            for frame in open_source(self.camera):
                if self.stop_event.is_set():
                    break
                image = fit_width(frame.image, self.camera.max_width)
                jpeg = encode_jpeg(image, self.camera.jpeg_quality)
                if len(jpeg) > self.max_bytes:
                    log.error("frame.too_large", camera=cid, bytes=len(jpeg), limit=self.max_bytes)
                    self.stats.record(cid, None, "too_large")
                    continue
                headers = FrameHeaders(
                    camera_id=cid,
                    seq=self.seq,
                    capture_ts_ms=frame.capture_ts_ms,
                    width=image.shape[1],
                    height=image.shape[0],
                )
                self._send(headers, jpeg)
                self.seq += 1
                self.sent += 1
                if self.max_frames is not None and self.sent >= self.max_frames:
                    break
        except Exception:
            log.exception("camera.failed", camera=cid)
            raise
        log.info("camera.ended", camera=cid, sent=self.sent)

    def _send(self, headers: FrameHeaders, jpeg: bytes) -> None:
        cid, seq = headers.camera_id, headers.seq
        started = time.monotonic()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                PUBLISH_LATENCY.labels(cid).observe(time.monotonic() - started)
                self.stats.record(cid, seq, "delivered")
            else:
                log.error("frame.delivery_failed", camera=cid, seq=seq, error=str(err))
                self.stats.record(cid, seq, "failed")

        try:
            self.producer.produce(
                self.topic,
                value=jpeg,
                key=cid.encode(),
                headers=headers.to_kafka(),
                on_delivery=on_delivery,
            )
        except BufferError:
            # The client's queue is full (broker unreachable): drop the frame, counted.
            self.stats.record(cid, seq, "dropped_buffer_full")


def run_producers(
    settings: Settings,
    cameras: list[CameraSpec],
    stop: threading.Event,
    max_frames: int | None = None,
    on_tick: Callable[[ProducerStats], None] | None = None,
) -> ProducerStats:
    """Produce every enabled camera until each ends or ``stop`` is set; then flush."""
    producer = kafka_producer(settings)
    stats = ProducerStats()
    threads = [
        CameraThread(
            camera,
            producer,
            settings.frames_topic,
            stats,
            stop,
            max_frames,
            settings.max_message_bytes,
        )
        for camera in cameras
        if camera.enabled
    ]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads) and not stop.is_set():
        producer.poll(0.1)
        if on_tick is not None:
            on_tick(stats)
    for thread in threads:
        thread.join(timeout=5)
    remaining = producer.flush(10)
    if remaining:
        log.warning("producer.unflushed", messages=remaining)
    log.info(
        "producer.stopped",
        delivered={k: len(v) for k, v in stats.delivered.items()},
        failed=stats.failed,
        dropped=stats.dropped,
    )
    return stats
