"""Rate control and reconnection: a camera's source turned into frames at its target fps.

Two back-pressure policies (camstream.cameras.Backpressure):

- ``wait`` (files, folders, synthetic): the publisher pulls; frames of a faster source
  are skipped by sampling (decoding skipped where the source allows) and the rest are
  paced on a fixed schedule. A slow publisher slows playback; nothing is dropped.
- ``drop_oldest`` (live streams, devices): a reader thread reads eagerly and keeps one
  due frame, the freshest. A frame replaced before the publisher took it is dropped
  as ``stale``, so publishing never falls behind real time.

A source that fails is reopened with exponential backoff and full jitter; the camera's
state (connecting, up, down, ended) is kept in its counters.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import structlog

from producers.sources import Image, Source, SourceConnectionError, SourceEnded, now_ms
from producers.stats import CameraCounters, CameraState, DropReason

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Frame:
    image: Image
    capture_ts_ms: int


class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(max, base*2^n)),
    at least ``initial / 4`` so a flapping source never spins."""

    def __init__(
        self,
        initial_s: float,
        max_s: float,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max(max_s, initial_s)
        self.rand = rand
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.initial_s * 2.0**self.attempt)
        self.attempt += 1
        return max(self.initial_s / 4, ceiling * self.rand())

    def reset(self) -> None:
        self.attempt = 0


class Sampler:
    """Which frames of a stream are due at ``fps``: a fixed schedule that realigns after
    a gap (a reconnect) instead of bursting to catch up."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps
        self.next_due = 0.0

    def due(self, now: float) -> bool:
        if now < self.next_due:
            return False
        self.next_due += self.period
        if now - self.next_due > self.period:
            self.next_due = now + self.period
        return True


@dataclass(frozen=True, slots=True)
class FeedConfig:
    fps: float
    loop: bool
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    pace: bool = True  # False only for benchmarks: as fast as the source reads


def _open_with_backoff(
    source: Source,
    camera: str,
    counters: CameraCounters,
    backoff: Backoff,
    stop: threading.Event,
    *,
    reconnecting: bool,
) -> bool:
    """Open the source, retrying with backoff until it opens or ``stop``; True if open."""
    while not stop.is_set():
        if reconnecting:
            counters.on_reconnect()
        try:
            source.open()
        except SourceConnectionError as exc:
            delay = backoff.next_delay()
            counters.on_state(CameraState.DOWN, str(exc))
            log.warning("camera.open_failed", camera=camera, error=str(exc), retry_in_s=delay)
            reconnecting = True
            stop.wait(delay)
            continue
        return True
    return False


@dataclass
class _Feed:
    """What every feed works with: one camera's source, its settings and counters."""

    camera: str
    source: Source
    config: FeedConfig
    counters: CameraCounters


@dataclass
class PacedFeed(_Feed):
    """The ``wait`` policy: pull, sample and pace in the publisher's own thread."""

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        config, counters = self.config, self.counters
        backoff = Backoff(config.reconnect_initial_s, config.reconnect_max_s)
        period = 1.0 / config.fps if config.pace else 0.0
        next_due = time.monotonic()
        reconnecting = False
        try:
            while not stop.is_set():
                if not _open_with_backoff(
                    self.source, self.camera, counters, backoff, stop, reconnecting=reconnecting
                ):
                    return
                native = self.source.native_fps
                step = max(native / config.fps, 1.0) if native and config.pace else 1.0
                position, index, yielded = 0.0, 0, 0
                counters.on_state(CameraState.UP)
                try:
                    while not stop.is_set():
                        if index < position:  # sampled out: skip without decoding
                            self.source.skip()
                            counters.on_read()
                            index += 1
                            continue
                        delay = next_due - time.monotonic()
                        if delay > 0 and stop.wait(delay):
                            return
                        image = self.source.read()
                        counters.on_read()
                        index += 1
                        position += step
                        counters.on_captured()
                        yield Frame(image, now_ms())
                        yielded += 1
                        backoff.reset()
                        next_due += period
                        if time.monotonic() - next_due > period:  # fell behind: realign
                            next_due = time.monotonic()
                except SourceEnded as exc:
                    if not config.loop or yielded == 0:
                        counters.on_state(CameraState.ENDED, "" if yielded else str(exc))
                        log.info("camera.source_ended", camera=self.camera, reason=str(exc))
                        return
                    reconnecting = False  # a loop restarts at once
                except SourceConnectionError as exc:
                    counters.on_state(CameraState.DOWN, str(exc))
                    log.warning("camera.read_failed", camera=self.camera, error=str(exc))
                    reconnecting = True
                    stop.wait(backoff.next_delay())
        finally:
            self.source.close()


@dataclass
class LatestFeed(_Feed):
    """The ``drop_oldest`` policy: a reader thread keeps the freshest due frame."""

    def __post_init__(self) -> None:
        self._slot: Frame | None = None
        self._cond = threading.Condition()
        self._finished = False
        self._reader: threading.Thread | None = None

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        self._reader = threading.Thread(
            target=self._read_loop, args=(stop,), name=f"reader-{self.camera}", daemon=True
        )
        self._reader.start()
        try:
            while True:
                with self._cond:
                    while self._slot is None and not self._finished and not stop.is_set():
                        self._cond.wait(0.25)
                    frame, self._slot = self._slot, None
                    if frame is None:
                        return
                yield frame
        finally:
            with self._cond:
                self._finished = True  # the consumer left (stop, max_frames): stop reading
                if self._slot is not None:  # captured, never to be published
                    self.counters.on_dropped(DropReason.STALE)
                    self._slot = None
            self._reader.join(timeout=1.0)

    def _put(self, frame: Frame) -> None:
        with self._cond:
            if self._finished:
                return
            self.counters.on_captured()
            if self._slot is not None:
                self.counters.on_dropped(DropReason.STALE)
            self._slot = frame
            self._cond.notify()

    def _read_loop(self, stop: threading.Event) -> None:
        config, counters, source = self.config, self.counters, self.source
        backoff = Backoff(config.reconnect_initial_s, config.reconnect_max_s)
        sampler = Sampler(config.fps)
        reconnecting = False
        try:
            while not stop.is_set() and not self._finished:
                if not _open_with_backoff(
                    source, self.camera, counters, backoff, stop, reconnecting=reconnecting
                ):
                    return
                if reconnecting:
                    log.info("camera.reconnected", camera=self.camera)
                first = True
                try:
                    while not stop.is_set() and not self._finished:
                        image = source.read()
                        counters.on_read()
                        if first:
                            counters.on_state(CameraState.UP)
                            backoff.reset()
                            first = False
                        if sampler.due(time.monotonic()):
                            self._put(Frame(image, now_ms()))
                except (SourceConnectionError, SourceEnded) as exc:
                    counters.on_state(CameraState.DOWN, str(exc))
                    delay = backoff.next_delay()
                    log.warning(
                        "camera.stream_lost", camera=self.camera, error=str(exc), retry_in_s=delay
                    )
                    source.close()
                    reconnecting = True
                    stop.wait(delay)
        except Exception as exc:  # a bug must not leave the publisher waiting forever
            counters.on_state(CameraState.DOWN, repr(exc))
            log.exception("camera.reader_failed", camera=self.camera)
        finally:
            source.close()
            with self._cond:
                self._finished = True
                self._cond.notify_all()
