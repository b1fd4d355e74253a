"""Per-camera counters: the Prometheus metrics and the same figures for this run.

Prometheus counters live for the process (several runs in one test process add up),
so each run also keeps its own CameraCounters; both are updated in one call. Every
frame taken from a source ends in exactly one of: published, dropped (by reason), or
still in flight; ``accounted`` checks that.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

FRAMES_READ = Counter(
    "camstream_producer_frames_read_total",
    "Frames read from the camera's source, before sampling to the target fps",
    ["camera"],
)
FRAMES_CAPTURED = Counter(
    "camstream_producer_frames_captured_total",
    "Frames taken at the camera's target fps",
    ["camera"],
)
FRAMES_PUBLISHED = Counter(
    "camstream_producer_frames_published_total",
    "Frames the broker acknowledged (acks=all)",
    ["camera"],
)
FRAMES_DROPPED = Counter(
    "camstream_producer_frames_dropped_total",
    "Frames captured but never published, by reason",
    ["camera", "reason"],
)
FRAMES_DOWNSCALED = Counter(
    "camstream_producer_frames_downscaled_total",
    "Frames scaled down further to fit the broker's message limit",
    ["camera"],
)
PUBLISH_LATENCY = Histogram(
    "camstream_producer_publish_seconds",
    "From hand-off to the Kafka client to the broker's acknowledgement",
    ["camera"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RECONNECTS = Counter(
    "camstream_producer_reconnects_total",
    "Times the camera's source was reopened after a failure",
    ["camera"],
)
CAMERA_UP = Gauge(
    "camstream_producer_camera_up", "1 while the camera's source delivers frames", ["camera"]
)
INFLIGHT = Gauge(
    "camstream_producer_inflight_frames",
    "Frames handed to the Kafka client and not yet acknowledged or failed",
)


class DropReason(StrEnum):
    """Why a captured frame was not published (the ``reason`` label)."""

    STALE = "stale"  # a fresher frame replaced it before it could be published (live)
    BUFFER_FULL = "buffer_full"  # the client's bounded buffer was full (broker away)
    EXPIRED = "expired"  # not acknowledged within producer_buffer_s
    TOO_LARGE = "too_large"  # over the message limit even after downscaling
    ENCODE_FAILED = "encode_failed"
    FAILED = "failed"  # the broker or client refused it
    UNFLUSHED = "unflushed"  # still in flight when the producer stopped


class CameraState(StrEnum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    ENDED = "ended"


@dataclass
class CameraCounters:
    """One camera's figures for this run, and its Prometheus children."""

    camera: str
    record_seqs: bool = False
    read: int = 0
    captured: int = 0
    sent: int = 0
    published: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    downscaled: int = 0
    state: CameraState = CameraState.CONNECTING
    last_error: str = ""
    delivered_seqs: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _window: tuple[float, int] = field(default=(0.0, 0), repr=False)

    def __post_init__(self) -> None:
        cid = self.camera
        self._read = FRAMES_READ.labels(cid)
        self._captured = FRAMES_CAPTURED.labels(cid)
        self._published = FRAMES_PUBLISHED.labels(cid)
        self._latency = PUBLISH_LATENCY.labels(cid)
        self._reconnects = RECONNECTS.labels(cid)
        self._up = CAMERA_UP.labels(cid)
        self._downscaled = FRAMES_DOWNSCALED.labels(cid)
        self._up.set(0)
        self._window = (time.monotonic(), 0)

    def on_read(self) -> None:
        self.read += 1  # only the reading thread writes it
        self._read.inc()

    def on_captured(self) -> None:
        with self._lock:
            self.captured += 1
        self._captured.inc()

    def on_sent(self) -> None:
        with self._lock:
            self.sent += 1

    def on_published(self, seq: int, seconds: float) -> None:
        with self._lock:
            self.published += 1
            if self.record_seqs:
                self.delivered_seqs.append(seq)
        self._published.inc()
        self._latency.observe(seconds)

    def on_dropped(self, reason: DropReason, count: int = 1) -> None:
        with self._lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + count
        FRAMES_DROPPED.labels(self.camera, reason).inc(count)

    def on_downscaled(self) -> None:
        with self._lock:
            self.downscaled += 1
        self._downscaled.inc()

    def on_state(self, state: CameraState, error: str = "") -> None:
        with self._lock:
            self.state = state
            if error:
                self.last_error = error
        self._up.set(1 if state is CameraState.UP else 0)

    def on_reconnect(self) -> None:
        with self._lock:
            self.reconnects += 1
        self._reconnects.inc()

    def status(self) -> dict[str, Any]:
        """The status line's fields; fps is published frames/s since the last call."""
        now = time.monotonic()
        with self._lock:
            since, published_then = self._window
            self._window = (now, self.published)
            span = now - since
            return {
                "camera": self.camera,
                "state": str(self.state),
                "fps": round((self.published - published_then) / span, 2) if span > 0 else 0.0,
                "captured": self.captured,
                "published": self.published,
                "dropped": dict(self.dropped),
                "reconnects": self.reconnects,
                **({"error": self.last_error} if self.last_error else {}),
            }

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                "state": str(self.state),
                "read": self.read,
                "captured": self.captured,
                "published": self.published,
                "dropped": dict(self.dropped),
                "reconnects": self.reconnects,
                "downscaled": self.downscaled,
            }

    def accounted(self) -> bool:
        """Every captured frame is published or dropped (call after the producer stops)."""
        with self._lock:
            return self.captured == self.published + sum(self.dropped.values())


@dataclass
class ProducerStats:
    """What one producer run did, per camera."""

    cameras: dict[str, CameraCounters] = field(default_factory=dict)

    @property
    def delivered(self) -> dict[str, list[int]]:
        """Acknowledged seqs per camera (recorded only when the run keeps seqs)."""
        return {cid: list(c.delivered_seqs) for cid, c in self.cameras.items()}

    def dropped(self) -> dict[str, dict[str, int]]:
        return {cid: dict(c.dropped) for cid, c in self.cameras.items() if c.dropped}

    def summary(self) -> dict[str, dict[str, Any]]:
        return {cid: c.summary() for cid, c in self.cameras.items()}
