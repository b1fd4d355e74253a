"""Rate control, back-pressure, reconnects and frame fitting, with in-process sources."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from camstream.imaging import fit_within
from producers.feed import Backoff, FeedConfig, LatestFeed, PacedFeed, Sampler
from producers.producer import encode_within
from producers.sources import (
    FolderSource,
    Image,
    SourceConnectionError,
    SourceEnded,
    SyntheticSource,
)
from producers.stats import CameraCounters, CameraState, DropReason


class FakeStream:
    """A live source at ``fps`` that fails once after ``fail_after`` frames."""

    native_fps = 0.0

    def __init__(self, fps: float, fail_after: int | None = None) -> None:
        self.period = 1.0 / fps
        self.fail_after = fail_after
        self.count = 0
        self.opens = 0

    def open(self) -> None:
        self.opens += 1

    def read(self) -> Image:
        time.sleep(self.period)
        self.count += 1
        if self.fail_after is not None and self.count == self.fail_after:
            raise SourceConnectionError("stream lost")
        image = np.zeros((4, 4, 3), np.uint8)
        image[0, 0, 0] = self.count % 256
        return image

    def skip(self) -> None:
        self.read()

    def close(self) -> None:
        pass


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, rand=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5
    jittered = Backoff(0.5, 4.0, rand=lambda: 0.0)
    assert jittered.next_delay() == 0.125  # never zero: a flapping source does not spin


def test_sampler_takes_exactly_the_target_rate_from_a_faster_stream() -> None:
    sampler = Sampler(10)
    due = sum(sampler.due(i / 25) for i in range(25 * 60))  # 60 s of a 25 fps stream
    assert due == 600


def test_sampler_realigns_after_a_gap_instead_of_bursting() -> None:
    sampler = Sampler(10)
    assert sampler.due(0.0)
    assert sampler.due(30.0)  # a 30 s reconnect gap
    assert not sampler.due(30.05)


def test_latest_feed_drops_stale_frames_when_the_publisher_is_slow() -> None:
    # Given a 100 fps stream sampled to 50 fps, and a publisher that needs 100 ms a frame
    counters = CameraCounters("cam")
    feed = LatestFeed("cam", FakeStream(100), FeedConfig(fps=50, loop=False), counters)
    stop = threading.Event()
    taken = []
    started = time.monotonic()
    for frame in feed.frames(stop):
        taken.append(frame)
        time.sleep(0.1)
        if len(taken) == 10:
            break
    elapsed = time.monotonic() - started
    # Then it never falls behind: 10 frames in ~1 s, the rest dropped as stale and counted
    assert elapsed < 1.6
    assert counters.dropped[DropReason.STALE] >= 20
    assert counters.captured == len(taken) + counters.dropped[DropReason.STALE]
    # and each frame taken is the freshest there was (capture times ~100 ms apart)
    gaps = np.diff([f.capture_ts_ms for f in taken[1:]])
    assert gaps.min() >= 60


def test_latest_feed_reconnects_a_lost_stream() -> None:
    counters = CameraCounters("cam")
    stream = FakeStream(100, fail_after=5)
    config = FeedConfig(fps=50, loop=False, reconnect_initial_s=0.05)
    stop = threading.Event()
    for taken, _frame in enumerate(LatestFeed("cam", stream, config, counters).frames(stop)):
        if taken == 9:
            break
    assert stream.opens == 2
    assert counters.reconnects == 1
    assert counters.state is CameraState.UP


def test_paced_feed_publishes_a_folder_in_natural_order_and_ends(tmp_path: Path) -> None:
    for index in (10, 2, 1):
        cv2.imwrite(str(tmp_path / f"img{index}.png"), np.full((4, 4 * index, 3), 9, np.uint8))
    counters = CameraCounters("cam")
    feed = PacedFeed("cam", FolderSource(tmp_path), FeedConfig(fps=100, loop=False), counters)
    widths = [f.image.shape[1] for f in feed.frames(threading.Event())]
    assert widths == [4, 8, 40]
    assert counters.state is CameraState.ENDED


def test_paced_feed_holds_the_target_fps() -> None:
    counters = CameraCounters("cam")
    feed = PacedFeed("cam", SyntheticSource(64, 48), FeedConfig(fps=50, loop=False), counters)
    stamps = []
    for frame in feed.frames(threading.Event()):
        stamps.append(frame.capture_ts_ms)
        if len(stamps) == 26:
            break
    assert (stamps[-1] - stamps[0]) == pytest.approx(500, abs=60)


def test_folder_source_ends() -> None:
    source = FolderSource(Path("/nonexistent-but-unopened"))
    with pytest.raises(SourceEnded):
        source.read()


def test_fit_within_keeps_the_aspect_ratio_and_never_upscales() -> None:
    image = np.zeros((1080, 1920, 3), np.uint8)
    assert fit_within(image, 1280, 720).shape == (720, 1280, 3)
    assert fit_within(image, 640, 640).shape == (360, 640, 3)
    small = np.zeros((100, 100, 3), np.uint8)
    assert fit_within(small, 1280, 720) is small


def test_frame_over_the_message_limit_is_downscaled_to_fit() -> None:
    noise = np.random.default_rng(1).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    counters = CameraCounters("cam")
    encoded = encode_within(noise, 95, 200_000, counters)
    assert encoded is not None
    jpeg, width, height = encoded
    assert len(jpeg) <= 200_000
    assert width < 1280 and abs(width / height - 1280 / 720) < 0.02
    assert counters.downscaled == 1


def test_frame_that_cannot_fit_is_rejected_and_counted() -> None:
    noise = np.random.default_rng(1).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    counters = CameraCounters("cam")
    assert encode_within(noise, 95, 300, counters) is None
    assert counters.dropped == {DropReason.TOO_LARGE: 1}
