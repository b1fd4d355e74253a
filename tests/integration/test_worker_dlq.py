"""Bad input on the real stack: every kind lands in the DLQ with its reason and its
original bytes, the frames around it are predicted, and the worker's memory holds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from camstream.imaging import encode_jpeg
from camstream.records import FrameHeaders
from tests.support.stack import Stack
from tests.support.topics import read_to_end

pytestmark = pytest.mark.integration


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _bomb() -> bytes:
    """A 64x64 JPEG whose frame header claims 50000x50000 (7.5 GB once decoded)."""
    jpeg = encode_jpeg(np.full((64, 64, 3), 128, dtype=np.uint8))
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[: sof + 5] + (50_000).to_bytes(2, "big") * 2 + jpeg[sof + 9 :]


def test_each_kind_of_bad_frame_lands_in_the_dlq_with_its_reason(stack: Stack) -> None:
    # Given a camera sending real frames with one bad frame of each kind between them
    camera_id = "dlq-kinds-cam"
    image = cv2.imread(str(stack.assets.photos["orange"]), cv2.IMREAD_COLOR)
    good = encode_jpeg(image, 90)
    width, height = image.shape[1], image.shape[0]
    headers = FrameHeaders(camera_id, 0, 0, width, height).to_kafka()
    bomb_headers = [
        (k, b"50000" if k in ("width", "height") else v)
        for k, v in FrameHeaders(camera_id, 0, 0, 50_000, 50_000).to_kafka()
    ]
    bad: dict[str, tuple[bytes, list[tuple[str, bytes]] | None]] = {
        "not_jpeg": (b"\x00\x13garbage, not an image" * 40, None),
        "truncated_jpeg": (good[: len(good) * 2 // 3], None),
        "empty_value": (b"", None),
        "missing_headers": (good, [(k, v) for k, v in headers if k not in ("seq", "width")]),
        "too_many_pixels": (_bomb(), bomb_headers),
    }
    worker_pid = stack.info.pids["worker"]
    rss_before = _rss_mb(worker_pid)
    producer = stack.producer()
    seq = 0
    expected: dict[int, str] = {}
    for _round in range(10):
        for kind, (value, custom) in bad.items():
            seq += 1
            stack.publish(producer, camera_id, seq, good, width, height)
            seq += 1
            expected[seq] = kind
            if custom is None:
                stack.publish(producer, camera_id, seq, value, width, height)
            else:
                marked = [(k, str(seq).encode() if k == "seq" else v) for k, v in custom]
                if not any(k == "seq" for k, _v in custom):
                    marked.append(("x-test-seq", str(seq).encode()))
                stack.publish(producer, camera_id, seq, value, width, height, headers=marked)
    producer.flush(10)

    # When the DLQ and the predictions are read
    dead = stack.collect(
        stack.settings.dlq_topic, lambda m: len(m) >= len(expected), camera_ids={camera_id}
    )
    predictions = stack.collect(
        stack.settings.predictions_topic,
        lambda m: len(m) >= len(expected),
        camera_ids={camera_id},
    )

    # Then every bad frame is there once, with its reason, message and original bytes
    seen: dict[int, str] = {}
    for message in dead:
        h = dict(message.headers())
        frame_seq = int(h.get("seq") or h["x-test-seq"])
        kind = h["error-kind"].decode()
        assert h["error-message"], kind
        assert message.value() == (bad[kind][0] or b"")
        seen[frame_seq] = kind
    assert seen == expected
    # and every good frame around them is predicted
    good_seqs = sorted(json.loads(m.value())["seq"] for m in predictions)
    assert good_seqs == [s for s in range(1, seq + 1) if s not in expected]
    # and 50 bad frames (10 claiming 7.5 GB) left the worker's memory where it was
    assert _rss_mb(worker_pid) - rss_before < 150


def test_stale_frames_are_skipped_and_counted_without_a_record(stack: Stack) -> None:
    # Given a camera whose first frame was captured 10 minutes ago (older than
    # max_frame_age_s) and whose second is fresh
    from camstream.stack.local import _scrape

    camera_id = "stale-cam"
    image = cv2.imread(str(stack.assets.photos["orange"]), cv2.IMREAD_COLOR)
    jpeg = encode_jpeg(image, 90)
    width, height = image.shape[1], image.shape[0]
    old = FrameHeaders(camera_id, 1, int(time.time() * 1000) - 600_000, width, height)
    producer = stack.producer()
    producer.produce(stack.settings.frames_topic, jpeg, camera_id.encode(), headers=old.to_kafka())
    stack.publish(producer, camera_id, 2, jpeg, width, height)
    producer.flush(10)

    # When the fresh frame's prediction is out (the stale frame, before it in the same
    # partition, has been dealt with by then: batches publish in order), and the output
    # topics are read to their end offsets
    stack.collect(stack.settings.predictions_topic, lambda m: len(m) >= 1, camera_ids={camera_id})
    bootstrap = stack.info.kafka_bootstrap
    predictions = read_to_end(bootstrap, stack.settings.predictions_topic, {camera_id})
    dead = read_to_end(bootstrap, stack.settings.dlq_topic, {camera_id})

    # Then the stale frame has no prediction and no dead letter, only a count
    assert [json.loads(m.value())["seq"] for m in predictions] == [2]
    assert dead == []
    metrics = _scrape(stack.info.metrics_ports["worker"])
    assert f'camstream_worker_frames_stale_total{{camera="{camera_id}"}} 1.0' in metrics
