"""The whole path on real services: producer -> Kafka -> Faust worker -> Triton, Feast ->
predictions, drift records and the DLQ."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
from confluent_kafka import Consumer, TopicPartition

from camstream.cameras import CameraSpec
from camstream.imaging import encode_jpeg
from camstream.records import UNCERTAIN, FrameHeaders
from camstream.settings import Settings
from camstream.stack.local import _scrape
from camstream.stack.process import ManagedProcess, free_port
from producers.producer import run_producers
from tests.support.stack import DRIFT_WINDOW, Stack, metric_sum, schema_validator

pytestmark = pytest.mark.integration

IMAGE_STATISTICS = (
    "brightness",
    "contrast",
    "sharpness",
    "colourfulness",
    "dark_fraction",
    "bright_fraction",
)
CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}


def _photo(stack: Stack, name: str) -> tuple[bytes, int, int]:
    image = cv2.imread(str(stack.assets.photos[name]), cv2.IMREAD_COLOR)
    assert image is not None
    return encode_jpeg(image, 90), image.shape[1], image.shape[0]


def _predictions_for(stack: Stack, camera_ids: set[str], expected: int) -> list[dict]:
    messages = stack.collect(
        stack.settings.predictions_topic,
        lambda msgs: len(msgs) >= expected,
        camera_ids=camera_ids,
    )
    return [json.loads(m.value()) for m in messages]


@pytest.mark.compose
def test_every_frame_from_real_videos_yields_exactly_one_valid_prediction(stack: Stack) -> None:
    # Given two cameras replaying the real sample videos
    cameras = [
        CameraSpec(id="e2e-street", source=str(stack.assets.vtest_video), fps=25),
        CameraSpec(id="e2e-bikes", source=str(stack.assets.bikes_video), fps=25),
    ]
    stack.register(*cameras)
    settings = stack.settings.model_copy(update={"kafka_bootstrap": stack.info.kafka_bootstrap})

    # When the producer publishes 60 frames of each
    stats = run_producers(settings, cameras, threading.Event(), max_frames=60)
    delivered = {(cid, seq) for cid, seqs in stats.delivered.items() for seq in seqs}
    assert len(delivered) == 120
    predictions = _predictions_for(stack, {c.id for c in cameras}, len(delivered))

    # Then every delivered (camera, seq) has exactly one schema-valid prediction
    counts = Counter((p["camera_id"], p["seq"]) for p in predictions)
    assert set(counts) == delivered
    assert max(counts.values()) == 1
    validator = schema_validator("prediction.schema.json")
    for prediction in predictions:
        validator.validate(prediction)
        assert prediction["enrichment"] == "ok"
        assert prediction["features"]["zone"] == "default"
        assert prediction["dedup_key"] == f"{prediction['camera_id']}:{prediction['seq']}"


@pytest.mark.compose
def test_drift_records_per_camera_window_are_schema_valid(stack: Stack) -> None:
    # Given the frames of the previous test (60 per camera) and windows of DRIFT_WINDOW
    # frames, when the drift topic is read, then each camera has full, valid windows.
    cameras = {"e2e-street", "e2e-bikes"}
    records = stack.collect(
        stack.settings.drift_topic,
        lambda msgs: {m.key().decode() for m in msgs if b'"window"' in m.value()} >= cameras,
        camera_ids=cameras,
    )
    validator = schema_validator("drift.schema.json")
    assert {m.key().decode() for m in records} == cameras
    windows = [json.loads(m.value()) for m in records]
    for record in windows:
        validator.validate(record)
    windows = [r for r in windows if r["kind"] == "window"]  # silence records have no frames
    assert {r["camera_id"] for r in windows} == cameras
    for record in windows:
        assert record["frame_count"] == DRIFT_WINDOW
        assert record["window_start_ms"] <= record["window_end_ms"]
        tests = {(s["name"], s["test"]) for s in record["statistics"]}
        assert {("label_distribution", "psi"), ("label_distribution", "jensen_shannon")} <= tests
        # KS on every image statistic: brightness, contrast, sharpness, colourfulness and
        # clipping (the shares of crushed and clipped pixels)
        assert {(name, "ks") for name in IMAGE_STATISTICS} <= tests, tests
        assert ("confidence", "mean_shift") in tests
        assert record["drift"] == bool(record["reasons"])


@pytest.mark.compose
@pytest.mark.parametrize(
    ("photo", "accepted"),
    [("cat", CAT_LABELS), ("espresso", {"espresso", "cup", "coffee mug"})],
)
def test_real_photo_gets_its_imagenet_label(stack: Stack, photo: str, accepted: set[str]) -> None:
    # Given a registered camera with a low threshold and a real photo
    camera = CameraSpec(id=f"photo-{photo}", source="unused", confidence_threshold=0.05)
    stack.register(camera)
    jpeg, width, height = _photo(stack, photo)

    # When it is published as a frame
    producer = stack.producer()
    stack.publish(producer, camera.id, 1, jpeg, width, height)
    producer.flush(10)

    # Then its top-1 label is the subject's
    (prediction,) = _predictions_for(stack, {camera.id}, 1)
    assert prediction["label"] in accepted, prediction["top_k"]


@pytest.mark.compose
def test_corrupt_jpeg_goes_to_dlq_and_later_frames_are_predicted(stack: Stack) -> None:
    # Given a camera sending a good frame, a corrupt JPEG, then two good frames
    camera_id = "dlq-cam"
    jpeg, width, height = _photo(stack, "orange")
    corrupt = jpeg[:2] + b"\x00" * 64 + jpeg[66 : len(jpeg) // 3]
    producer = stack.producer()
    stack.publish(producer, camera_id, 1, jpeg, width, height)
    stack.publish(producer, camera_id, 2, corrupt, width, height)
    stack.publish(producer, camera_id, 3, jpeg, width, height)
    stack.publish(producer, camera_id, 4, jpeg, width, height)
    producer.flush(10)

    # Then the corrupt one is in the DLQ with its reason and its original bytes
    (dead,) = stack.collect(
        stack.settings.dlq_topic, lambda msgs: len(msgs) >= 1, camera_ids={camera_id}
    )
    headers = {k: v for k, v in dead.headers()}
    assert dead.value() == corrupt
    assert headers["seq"] == b"2"
    assert headers["error-kind"] in {b"corrupt_jpeg", b"undecodable"}
    assert headers["error-message"]
    # and the frames around it are predicted
    predictions = _predictions_for(stack, {camera_id}, 3)
    assert sorted(p["seq"] for p in predictions) == [1, 3, 4]
    assert all(p["enrichment"] == "missing" for p in predictions)  # never registered


@pytest.mark.compose
def test_raising_the_feast_threshold_above_the_score_makes_the_label_uncertain(
    stack: Stack,
) -> None:
    # Given a registered camera whose frames are classified with a confident label
    camera = CameraSpec(id="threshold-cam", source="unused", confidence_threshold=0.01)
    stack.register(camera)
    jpeg, width, height = _photo(stack, "orange")
    producer = stack.producer()
    stack.publish(producer, camera.id, 1, jpeg, width, height)
    producer.flush(10)
    (first,) = _predictions_for(stack, {camera.id}, 1)
    assert first["label"] == "orange"
    score = first["score"]

    # When its threshold in Feast is raised above that score (no worker restart), while
    # the camera keeps sending the same image, five frames a second
    consumer = _tail(stack, stack.settings.predictions_topic)
    try:
        stack.register(camera.model_copy(update={"confidence_threshold": min(1.0, score + 0.01)}))
        changed_ms = time.time() * 1000
        seq, after = 1, list[dict[str, Any]]()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len([p for p in after if _uncertain(p)]) < 3:
            seq += 1
            stack.publish(producer, camera.id, seq, jpeg, width, height)
            producer.poll(0)
            polled_until = time.monotonic() + 0.2
            while time.monotonic() < polled_until:
                msg = consumer.poll(0.05)
                if msg is not None and not msg.error() and msg.key() == camera.id.encode():
                    after.append(json.loads(msg.value()))
    finally:
        consumer.close()

    # Then the same image is soon labelled uncertain, with its score kept: from the first
    # frame captured a cache TTL (plus a batch and a Feast read) after the change, on
    assert len([p for p in after if _uncertain(p)]) >= 3, after
    first = next(p for p in after if _uncertain(p))
    assert first["score"] == pytest.approx(score, abs=1e-4)
    assert first["threshold"] > score
    seen_after_s = (first["capture_ts_ms"] - changed_ms) / 1000
    assert seen_after_s < stack.settings.feature_cache_ttl_s + 1.5, seen_after_s
    assert all(_uncertain(p) for p in after if p["seq"] > first["seq"])


def _uncertain(prediction: dict[str, Any]) -> bool:
    return bool(prediction["label"] == UNCERTAIN)


def _tail(stack: Stack, topic: str) -> Consumer:
    """A consumer positioned at the end of every partition of ``topic``, now."""
    consumer = Consumer(
        {"bootstrap.servers": stack.info.kafka_bootstrap, "group.id": f"tail-{time.time_ns()}"}
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = [
        TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p))[1])
        for p in partitions
    ]
    consumer.assign(ends)
    return consumer


# -- data quality and micro-batching on the session stack -------------------------------


@pytest.mark.compose
def test_over_exposed_frames_raise_the_drift_flag_while_calibrating(stack: Stack) -> None:
    # Given a camera sending a window of nearly white frames (each its own: not frozen)
    camera_id = "e2e-overexposed"
    rng = np.random.default_rng(0)
    producer = stack.producer()
    for seq in range(1, DRIFT_WINDOW + 1):
        white = np.clip(rng.normal(250, 3, (360, 480, 3)), 0, 255).astype(np.uint8)
        stack.publish(producer, camera_id, seq, encode_jpeg(white, 90), 480, 360)
    producer.flush(10)

    # When its drift window closes
    (record,) = [
        json.loads(m.value())
        for m in stack.collect(
            stack.settings.drift_topic,
            lambda msgs: any(b'"window"' in m.value() for m in msgs),
            camera_ids={camera_id},
        )
        if json.loads(m.value())["kind"] == "window"
    ]

    # Then it is flagged for over-exposed frames, though the camera is still calibrating
    assert record["calibrating"] and record["drift"]
    (test,) = [t for t in record["statistics"] if t["name"] == "overexposed_frames"]
    assert test["drifted"] and test["value"] == 1.0
    assert [r for r in record["reasons"] if r.startswith("overexposed_frames share=")]
    assert not [r for r in record["reasons"] if r.startswith(("frozen", "black_frames"))]


def _triton_stats(stack: Stack) -> dict[str, Any]:
    """The served model's request, row and execution counts, over all its versions."""
    with grpcclient.InferenceServerClient(stack.info.triton_grpc) as client:
        stats = client.get_inference_statistics(stack.settings.model_name, as_json=True)
    totals: dict[str, Any] = {"requests": 0, "rows": 0, "executions": 0, "by_size": Counter()}
    for model in stats.get("model_stats", []):
        totals["requests"] += int(model["inference_stats"]["success"].get("count", 0))
        totals["rows"] += int(model.get("inference_count", 0))
        totals["executions"] += int(model.get("execution_count", 0))
        for entry in model.get("batch_stats", []):
            totals["by_size"][int(entry["batch_size"])] += int(entry["compute_infer"]["count"])
    return totals


def _batches(stack: Stack) -> tuple[float, float, float, float]:
    """The worker's micro-batches so far: count, frames, at most 1 frame, at most 16."""
    text = _scrape(stack.info.metrics_ports["worker"])
    return (
        metric_sum(text, "camstream_worker_batch_size_count"),
        metric_sum(text, "camstream_worker_batch_size_sum"),
        metric_sum(text, 'camstream_worker_batch_size_bucket{le="1.0"}'),
        metric_sum(text, 'camstream_worker_batch_size_bucket{le="16.0"}'),
    )


def test_a_burst_goes_to_triton_in_bounded_micro_batches_of_concurrent_requests(
    stack: Stack,
) -> None:
    # Given the worker's limits (16 frames a batch, each batch split over 2 requests)
    assert (stack.settings.batch_max, stack.settings.infer_inflight) == (16, 2)
    merged: list[Counter[int]] = []
    # When a burst of 96 frames arrives at once (up to three bursts: whether Triton's
    # queue holds two requests at one moment depends on the machine's timing)
    for burst in range(3):
        grown = _burst(stack, f"e2e-burst-{burst}")
        merged.append(grown)
        if max(grown) > 8:
            break
    # Then, with CAMSTREAM_PIPELINE_DEPTH batches overlapping, more requests were in
    # flight than Triton's two instances take at once: the dynamic batcher merged
    # queued requests into executions larger than any one request (8 rows)
    assert max(max(g) for g in merged) > 8, merged


def _burst(stack: Stack, camera_id: str) -> Counter[int]:
    """96 frames at once from ``camera_id``, checked; Triton's executions by size."""
    jpeg, width, height = _photo(stack, "orange")
    batches_before, triton_before = _batches(stack), _triton_stats(stack)
    producer = stack.producer()
    for seq in range(1, 97):
        stack.publish(producer, camera_id, seq, jpeg, width, height)
    producer.flush(10)
    assert len(_predictions_for(stack, {camera_id}, 96)) == 96
    count, frames, single, bounded = (
        after - before for after, before in zip(_batches(stack), batches_before, strict=True)
    )
    triton = _triton_stats(stack)

    # The worker took it in micro-batches of at most 16 frames, most of several
    assert frames == 96
    assert bounded == count, "a micro-batch held more than CAMSTREAM_BATCH_MAX frames"
    assert count <= 96 / 4, f"{count} micro-batches for 96 frames"
    # and sent each batch of several frames as two requests (one for a single frame):
    # Triton counted exactly those requests and rows
    requests = triton["requests"] - triton_before["requests"]
    assert requests == 2 * count - single, (requests, count, single)
    assert triton["rows"] - triton_before["rows"] == 96
    grown: Counter[int] = triton["by_size"] - triton_before["by_size"]
    print(f"burst: {count:.0f} micro-batches, Triton executions by size {dict(grown)}")
    return grown


# -- drift against a camera's own baseline, across a worker restart ---------------------

CALIBRATION_FRAMES = 2 * DRIFT_WINDOW
PHOTOS = ("cat", "espresso", "squirrel", "orange", "baboon")


@dataclass
class ChildWorker:
    """A second worker on the session stack's services, on topics of its own, with drift
    settings of its own (the session worker's cameras calibrate for 800 frames)."""

    stack: Stack
    settings: Settings
    process: ManagedProcess
    port: int

    def start(self) -> None:
        self.process.start()
        self.process.wait_ready(
            lambda: all(
                line in _scrape(self.port)
                for line in ("camstream_worker_assigned 1.0", "camstream_worker_ready 1.0")
            ),
            timeout_s=90,
        )

    def publish(
        self,
        camera_id: str,
        seqs: range,
        scene: Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.uint8]] | None = None,
        captured_ms: Callable[[int], int] | None = None,
    ) -> None:
        """Frames of the sample photos in turn (changed by ``scene``), captured now (or
        at ``captured_ms(seq)``)."""
        producer = self.stack.producer()
        for seq in seqs:
            image = cv2.imread(str(self.stack.assets.photos[PHOTOS[seq % len(PHOTOS)]]))
            image = cv2.resize(image, (480, 360))
            if scene is not None:
                image = scene(image)
            capture = captured_ms(seq) if captured_ms else int(time.time() * 1000)
            meta = FrameHeaders(camera_id, seq, capture, 480, 360)
            producer.produce(
                self.settings.frames_topic,
                value=encode_jpeg(image, 90),
                key=camera_id.encode(),
                headers=meta.to_kafka(),
            )
        producer.flush(10)

    def predicted(self, camera_id: str, seqs: range) -> None:
        """Wait until every one of ``seqs`` has its prediction (the drift monitor has
        seen them by then: records are built after it)."""
        wanted = set(seqs)
        self.stack.collect(
            self.settings.predictions_topic,
            lambda msgs: wanted <= {json.loads(m.value())["seq"] for m in msgs},
            camera_ids={camera_id},
        )

    def windows(self, camera_id: str, count: int) -> list[dict[str, Any]]:
        messages = self.stack.collect(
            self.settings.drift_topic,
            lambda msgs: sum(b'"window"' in m.value() for m in msgs) >= count,
            camera_ids={camera_id},
        )
        records = [json.loads(m.value()) for m in messages]
        return [r for r in records if r["kind"] == "window"]


def _child_worker(
    stack: Stack, data_dir: Path, name: str, **drift: float | int
) -> Iterator[ChildWorker]:
    """Start a worker named ``name`` (its own consumer group, topics ``name.*``) with
    the given drift settings; stop it afterwards."""
    assert stack.local is not None and stack.local.kafka is not None
    port = free_port()
    settings = stack.local.child_settings(
        topic_prefix=f"{name}.",
        worker_name=f"{name}-worker",
        worker_data_dir=data_dir,
        metrics_port=port,
        **drift,
    )
    topics = [
        settings.frames_topic,
        settings.predictions_topic,
        settings.drift_topic,
        settings.dlq_topic,
    ]
    stack.local.kafka.create_topics(topics, partitions=settings.topic_partitions)
    process = ManagedProcess(
        f"{name}-worker",
        [sys.executable, "-m", "camstream", "worker"],
        stack.local.logs_dir / f"{name}-worker.log",
        env=settings.child_env(),
        stop_timeout_s=20,
    )
    worker = ChildWorker(stack, settings, process, port)
    worker.start()
    try:
        yield worker
    finally:
        process.stop()


@pytest.fixture(scope="module")
def calibrated(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildWorker]:
    """Cameras that calibrate after two windows."""
    yield from _child_worker(
        stack,
        tmp_path_factory.mktemp("calibrated-worker"),
        "e2e-calibrated",
        drift_calibration_frames=CALIBRATION_FRAMES,
        drift_ks_stride=1,  # windows of 10 frames: every frame counts in the p-value
    )


def test_windows_after_calibration_are_compared_with_the_cameras_baseline_across_a_restart(
    calibrated: ChildWorker,
) -> None:
    camera_id = "e2e-calibrated-cam"
    # Given a camera's first two windows (its calibration), then two more of the same
    # scene, and half a window more
    calibrated.publish(camera_id, range(1, 4 * DRIFT_WINDOW + 6))
    calibrated.predicted(camera_id, range(1, 4 * DRIFT_WINDOW + 6))
    before = calibrated.windows(camera_id, 4)
    assert [r["calibrating"] for r in before] == [True, True, False, False]
    baseline_id = before[2]["baseline_id"]
    profile = before[0]["reference_profile_id"]
    assert baseline_id and baseline_id.startswith(f"{camera_id}@{profile}")
    for record in before[2:]:
        # Then the calibrated windows are compared with the camera's own baseline: every
        # image statistic by KS, the labels, the confidence shift and ADWIN on confidence
        tests = {(t["name"], t["test"]): t for t in record["statistics"]}
        assert {(name, "ks") for name in IMAGE_STATISTICS} <= set(tests)
        assert ("confidence", "adwin") in tests and ("label_distribution", "psi") in tests
        compared = [t for t in record["statistics"] if t["test"] != "share"]
        assert {t["baseline"] for t in compared} - {"none"} == {"camera"}, compared
        assert record["baseline_id"] == baseline_id
        # and the same scene is no drift
        assert not record["drift"], record["reasons"]

    # When the worker is restarted (SIGTERM, then started again on its state folder)
    # and the camera sends the other half of the open window
    first_worker = before[-1]["worker"]
    calibrated.process.stop()
    calibrated.start()
    calibrated.publish(camera_id, range(4 * DRIFT_WINDOW + 6, 5 * DRIFT_WINDOW + 1))
    (resumed,) = calibrated.windows(camera_id, 5)[4:]

    # Then the window opened before the restart completes where it was, against the same
    # baseline (no new calibration), closed by the new process
    assert resumed["worker"] != first_worker
    assert resumed["frame_count"] == DRIFT_WINDOW
    assert not resumed["calibrating"] and resumed["baseline_id"] == baseline_id
    predictions = calibrated.stack.collect(
        calibrated.settings.predictions_topic,
        lambda msgs: any(json.loads(m.value())["seq"] == 4 * DRIFT_WINDOW + 1 for m in msgs),
        camera_ids={camera_id},
    )
    first_of_window = next(
        json.loads(m.value())
        for m in predictions
        if json.loads(m.value())["seq"] == 4 * DRIFT_WINDOW + 1
    )
    assert resumed["window_start_ms"] == first_of_window["capture_ts_ms"]

    # and when the scene darkens, the next window drifts from the camera's baseline
    calibrated.publish(camera_id, range(5 * DRIFT_WINDOW + 1, 6 * DRIFT_WINDOW + 1), _darkened)
    (dark,) = calibrated.windows(camera_id, 6)[5:]
    assert dark["drift"] and not dark["calibrating"] and dark["baseline_id"] == baseline_id
    assert _flagged(dark, "brightness ks=")

    # and when it turns to washed-out grey at the same brightness, the windows drift by
    # contrast and colourfulness
    calibrated.publish(camera_id, range(6 * DRIFT_WINDOW + 1, 10 * DRIFT_WINDOW + 1), _washed_out)
    grey = calibrated.windows(camera_id, 10)[6:]
    assert all(r["drift"] and r["baseline_id"] == baseline_id for r in grey), grey
    assert _flagged(grey[0], "contrast ks=") and _flagged(grey[0], "colourfulness ks=")
    assert not _flagged(grey[0], "brightness ks="), grey[0]["reasons"]
    # and when the camera sees only noise, ADWIN sees the model's confidence fall (it
    # checks every 32 frames: within ten windows of ten)
    calibrated.publish(camera_id, range(10 * DRIFT_WINDOW + 1, 20 * DRIFT_WINDOW + 1), _noise)
    noisy = calibrated.windows(camera_id, 20)[10:]
    assert any(_flagged(r, "confidence adwin=") for r in noisy), [r["reasons"] for r in noisy]


def _darkened(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return (image * 0.25).astype(np.uint8)


def _washed_out(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Grey, a fifth of the contrast, about the same mean brightness."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    flat = grey.mean() + (grey - grey.mean()) * 0.2
    return cv2.cvtColor(flat.astype(np.uint8), cv2.COLOR_GRAY2BGR)


def _noise(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Uniform noise of the frame's shape: nothing a classifier is sure of."""
    return np.random.default_rng().integers(0, 256, image.shape, dtype=np.uint8)


def _flagged(record: dict[str, Any], reason: str) -> bool:
    return any(r.startswith(reason) for r in record["reasons"])


# -- drift windows closed by capture time, and by the clock -----------------------------

TIME_WINDOW_MS = 2000


@pytest.fixture
def timed(stack: Stack, tmp_path: Path) -> Iterator[ChildWorker]:
    """Windows of two seconds of capture time (the frame count no longer decides)."""
    yield from _child_worker(
        stack, tmp_path, "e2e-timed", drift_window_ms=TIME_WINDOW_MS, drift_calibration_frames=0
    )


def test_drift_windows_close_by_capture_time_and_by_the_clock_when_a_camera_goes_quiet(
    timed: ChildWorker,
) -> None:
    camera_id = "e2e-timed-cam"
    # Given a camera's frames over three windows of capture time, unevenly: 15 in the
    # first, 5 in the second, 3 in the third (windows of 10 frames would split them
    # otherwise), each group sent once its last frame's capture time has passed (the
    # worker's clock closes a window two window lengths after it opened)
    w = TIME_WINDOW_MS
    groups = [
        [w * n // 20 for n in range(15)],
        [w + w * n // 10 for n in range(5)],
        [2 * w, 2 * w + w // 10, 2 * w + w // 5],
    ]
    start_ms = int(time.time() * 1000)
    seq = 0
    for group in groups:
        time.sleep(max(0.0, (start_ms + group[-1]) / 1000 - time.time()) + 0.01)
        seq += len(group)
        first = seq - len(group) + 1
        timed.publish(
            camera_id,
            range(first, seq + 1),
            captured_ms=lambda s, group=group, first=first: start_ms + group[s - first],
        )

    # When the camera then goes quiet
    records = timed.windows(camera_id, 3)

    # Then the first frame of each new window closed the one before it, and the last
    # window, left open, closed on the clock with the frames it had, two window lengths
    # after it opened
    spans = [
        (r["window_start_ms"] - start_ms, r["window_end_ms"] - start_ms, r["frame_count"])
        for r in records
    ]
    assert spans == [
        (0, groups[0][-1], 15),
        (w, groups[1][-1], 5),
        (2 * w, groups[2][-1], 3),
    ], records
    assert time.time() * 1000 >= start_ms + 4 * w
