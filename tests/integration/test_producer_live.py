"""Producers against a real Kafka broker (PLAINTEXT and SASL_PLAINTEXT listeners) with
live camera stand-ins: a GStreamer RTSP server and an MJPEG-over-HTTP server."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import cv2
import pytest
from confluent_kafka import KafkaException, Producer
from structlog.testing import capture_logs

from camstream.cameras import CameraSpec
from camstream.settings import Settings
from camstream.stack.assets import SampleAssets, ensure_assets
from camstream.stack.kafka import KafkaBroker
from camstream.stack.process import free_port
from producers.delivery import ProducerFatalError
from producers.producer import ProducerStats, run_producers
from producers.stats import DropReason
from tests.support.live import FrameRecord, RtspServer, by_camera, read_frames
from tests.support.mjpeg_server import MjpegServer

pytestmark = pytest.mark.integration

USER, PASSWORD = "camstream-producer", "right-password"
RUN_S = 30.0
TARGET_FPS = 10.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    root = tmp_path_factory.mktemp("producer-kafka")
    with KafkaBroker(
        root / "data", root / "logs", cache_dir=Settings().cache_dir, sasl_users={USER: PASSWORD}
    ) as kafka:
        yield kafka


@pytest.fixture(scope="module")
def assets() -> SampleAssets:
    return ensure_assets(Settings().cache_dir)


def _settings(broker: KafkaBroker, tmp_path: Path, prefix: str, **extra: object) -> Settings:
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=prefix,
        state_dir=tmp_path,
        producer_status_interval_s=5.0,
        **extra,  # type: ignore[arg-type]
    )
    broker.create_topics([settings.frames_topic], partitions=4)
    return settings


def _strictly_increasing(records: list[FrameRecord]) -> bool:
    seqs = [r.seq for r in records]
    return all(b > a for a, b in pairwise(seqs))


# -- sixteen cameras of every kind in one process, 30 s --------------------------------


def _folder(assets: SampleAssets, folder: Path) -> list[int]:
    """The sample photos as img1, img2, ... img10, each scaled to its own width (so the
    width header tells which image a frame was); returns the widths in name order."""
    folder.mkdir()
    photos = list(assets.photos.values())
    widths = []
    for index in range(1, 11):
        image = cv2.imread(str(photos[index % len(photos)]), cv2.IMREAD_COLOR)
        width = 200 + 10 * index
        resized = cv2.resize(image, (width, 150), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"img{index}.jpg"), resized)
        widths.append(width)
    return widths


@pytest.fixture(scope="module")
def sixteen(
    broker: KafkaBroker, assets: SampleAssets, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[CameraSpec], ProducerStats, dict[str, list[FrameRecord]], list[int]]]:
    tmp = tmp_path_factory.mktemp("sixteen")
    settings = _settings(broker, tmp, "sixteen.")
    widths = _folder(assets, tmp / "folder")
    with RtspServer(free_port()) as rtsp:
        mjpeg = MjpegServer(fps=20).start()
        try:
            cameras = [
                CameraSpec(id="rtsp", source=rtsp.url, fps=TARGET_FPS),
                CameraSpec(id="mjpeg", source=mjpeg.url, fps=TARGET_FPS),
                CameraSpec(id="folder", source=str(tmp / "folder"), fps=TARGET_FPS, loop=True),
                CameraSpec(
                    id="looping-file", source=str(assets.bikes_video), fps=TARGET_FPS, loop=True
                ),
                *(
                    CameraSpec(id=f"synthetic-{i}", source="synthetic:320x240", fps=TARGET_FPS)
                    for i in range(12)
                ),
            ]
            stop = threading.Event()
            timer = threading.Timer(RUN_S, stop.set)
            timer.start()
            try:
                stats = run_producers(settings, cameras, stop, record_seqs=True)
            finally:
                timer.cancel()
        finally:
            mjpeg.stop()
    records = read_frames(broker.client_config(), settings.frames_topic)
    yield cameras, stats, by_camera(records), widths


def test_sixteen_cameras_in_one_process_each_publish_within_ten_percent_of_target_fps(
    sixteen: tuple[list[CameraSpec], ProducerStats, dict[str, list[FrameRecord]], list[int]],
) -> None:
    cameras, stats, frames, _ = sixteen
    assert len(cameras) == 16
    for camera in cameras:
        records = frames[camera.id]
        span_s = (records[-1].capture_ts_ms - records[0].capture_ts_ms) / 1000
        measured = (len(records) - 1) / span_s
        assert span_s > RUN_S - 3, (camera.id, span_s)
        assert abs(measured - TARGET_FPS) <= 0.1 * TARGET_FPS, (camera.id, measured)
        assert _strictly_increasing(records), camera.id
        counters = stats.cameras[camera.id]
        # every acknowledged frame is in the topic, and every captured one is accounted
        assert sorted(counters.delivered_seqs) == [r.seq for r in records], camera.id
        assert counters.accounted(), counters.summary()


def test_live_streams_are_sampled_to_the_target_rate_not_queued(
    sixteen: tuple[list[CameraSpec], ProducerStats, dict[str, list[FrameRecord]], list[int]],
) -> None:
    _, stats, frames, _ = sixteen
    for camera in ("rtsp", "mjpeg"):
        counters = stats.cameras[camera]
        # the servers send 25 and 20 fps; only the freshest frame at 10 fps is taken
        assert counters.read > 1.6 * counters.captured, counters.summary()
        latest = frames[camera][-1]
        assert latest.width == 640, latest


def test_image_folder_frames_are_published_in_natural_name_order(
    sixteen: tuple[list[CameraSpec], ProducerStats, dict[str, list[FrameRecord]], list[int]],
) -> None:
    _, _, frames, widths = sixteen
    published = [r.width for r in frames["folder"]]
    # img1, img2, ... img10 (not img1, img10, img2), looping
    expected = [widths[i % len(widths)] for i in range(len(published))]
    assert published == expected


def test_looping_file_keeps_publishing_past_its_end(
    sixteen: tuple[list[CameraSpec], ProducerStats, dict[str, list[FrameRecord]], list[int]],
    assets: SampleAssets,
) -> None:
    _, stats, frames, _ = sixteen
    cap = cv2.VideoCapture(str(assets.bikes_video))
    native_fps, length = cap.get(cv2.CAP_PROP_FPS), cap.get(cv2.CAP_PROP_FRAME_COUNT)
    cap.release()
    one_pass = length * TARGET_FPS / native_fps  # frames published per pass of the clip
    assert len(frames["looping-file"]) > 2 * one_pass
    assert stats.cameras["looping-file"].summary()["dropped"] == {}


# -- a live RTSP server killed and restarted mid-stream ---------------------------------


def test_rtsp_server_killed_and_restarted_producer_reconnects_seq_strictly_increases(
    broker: KafkaBroker, tmp_path: Path
) -> None:
    # Given `camstream produce` reading a live RTSP stream
    settings = _settings(broker, tmp_path, "rtsp.")
    rtsp = RtspServer(free_port()).start()
    env = {
        **os.environ,
        "CAMSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
        "CAMSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "CAMSTREAM_PRODUCER_RECONNECT_INITIAL_S": "0.5",
        "CAMSTREAM_PRODUCER_RECONNECT_MAX_S": "2",
        "CAMSTREAM_PRODUCER_READ_TIMEOUT_S": "2",
    }
    argv = [sys.executable, "-m", "camstream", "produce", "--camera-id", "door"]
    producer = subprocess.Popen(
        [*argv, "--source", rtsp.url, "--fps", "10"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def wait_for_frames(count: int, since_ms: int) -> None:
        """Until ``count`` frames captured after ``since_ms`` are in the topic (60 s max)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and producer.poll() is None:
            frames = read_frames(broker.client_config(), settings.frames_topic)
            if sum(1 for f in frames if f.capture_ts_ms > since_ms) >= count:
                return
            time.sleep(1)

    try:
        wait_for_frames(25, 0)
        # When the server is killed, stays away 3 s, and comes back on the same port
        rtsp.kill()
        killed_ms = time.time_ns() // 1_000_000
        time.sleep(3)
        rtsp.start()
        restarted_ms = time.time_ns() // 1_000_000
        wait_for_frames(25, restarted_ms)
        # and the producer gets SIGTERM
        producer.send_signal(signal.SIGTERM)
        started = time.monotonic()
        out, err = producer.communicate(timeout=15)
        exit_s = time.monotonic() - started
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
        rtsp.kill()

    # Then it stopped within seconds, flushed, and reconnected by itself
    assert producer.returncode == 0, err[-3000:]
    assert exit_s < 8
    summary = json.loads(out.strip().splitlines()[-1])["door"]
    assert summary["reconnects"] >= 1, summary
    records = by_camera(read_frames(broker.client_config(), settings.frames_topic))["door"]
    assert len(records) == summary["published"]
    assert _strictly_increasing(records)
    before = [r for r in records if r.capture_ts_ms < killed_ms]
    after = [r for r in records if r.capture_ts_ms > restarted_ms]
    assert len(before) >= 20 and len(after) >= 20, (len(before), len(after))
    assert '"camera_up"' not in err  # logs are events, not metric dumps
    assert "camera.stream_lost" in err and "camera.reconnected" in err


# -- SASL ---------------------------------------------------------------------------------


def test_sasl_right_credentials_are_accepted(broker: KafkaBroker, tmp_path: Path) -> None:
    settings = _settings(broker, tmp_path, "sasl-ok.").model_copy(
        update={
            "kafka_bootstrap": broker.sasl_bootstrap,
            "kafka_config": {
                k: v
                for k, v in broker.sasl_client_config(USER, PASSWORD).items()
                if k != "bootstrap.servers"
            },
        }
    )
    camera = CameraSpec(id="sasl", source="synthetic:320x240", fps=30)
    stats = run_producers(settings, [camera], threading.Event(), max_frames=15)
    assert stats.cameras["sasl"].published == 15
    records = read_frames(broker.client_config(), settings.frames_topic)
    assert sorted(r.seq for r in records) == sorted(stats.delivered["sasl"])


def test_sasl_wrong_credentials_are_refused_with_a_clear_error(
    broker: KafkaBroker, tmp_path: Path
) -> None:
    settings = _settings(broker, tmp_path, "sasl-bad.")
    wrong = {
        k: v
        for k, v in broker.sasl_client_config(USER, "wrong-password").items()
        if k != "bootstrap.servers"
    }
    # In process: a ProducerFatalError that names the fix, within seconds
    bad = settings.model_copy(
        update={"kafka_bootstrap": broker.sasl_bootstrap, "kafka_config": wrong}
    )
    camera = CameraSpec(id="sasl", source="synthetic:320x240", fps=30)
    started = time.monotonic()
    with pytest.raises(ProducerFatalError, match=r"refused the producer's credentials.*sasl"):
        run_producers(bad, [camera], threading.Event(), max_frames=15)
    assert time.monotonic() - started < 10
    # From the command line: exit status 2 and the same message, nothing published
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "camstream", "produce", "--camera-id", "sasl"),
            *("--source", "synthetic:320x240", "--max-frames", "5"),
        ],
        env={
            **os.environ,
            "CAMSTREAM_KAFKA_BOOTSTRAP": broker.sasl_bootstrap,
            "CAMSTREAM_KAFKA_CONFIG": json.dumps(wrong),
            "CAMSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "refused the producer's credentials" in proc.stderr
    assert "CAMSTREAM_KAFKA_CONFIG" in proc.stderr
    assert read_frames(broker.client_config(), settings.frames_topic) == []


# -- delivery guarantees and the broker's message limit ----------------------------------


@dataclass(frozen=True)
class LogBatch:
    """A record batch header as the broker stored it (Kafka's RecordBatch v2)."""

    partition: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records: int


def _stored_batches(broker: KafkaBroker, topic: str) -> list[LogBatch]:
    """Every record batch in ``topic``'s log segments on the broker's disk, in order."""
    batches = []
    log_dirs = Path(broker.server_properties()["log.dirs"])
    for folder in sorted(log_dirs.glob(f"{topic}-*")):
        partition = int(folder.name.rsplit("-", 1)[1])
        for segment in sorted(folder.glob("*.log")):
            data, at = segment.read_bytes(), 0
            while at + 61 <= len(data):
                (length,) = struct.unpack_from(">i", data, at + 8)
                if length == 0:
                    break
                magic = data[at + 16]
                assert magic == 2, f"record batch v{magic} in {segment}"
                producer_id, epoch, sequence, count = struct.unpack_from(">qhii", data, at + 43)
                batches.append(LogBatch(partition, producer_id, epoch, sequence, count))
                at += 12 + length
    return batches


def test_frames_are_sent_by_an_idempotent_producer_with_acks_all(
    broker: KafkaBroker, tmp_path: Path
) -> None:
    # Given a producer publishing a camera to its frames topic, with pass-through client
    # properties that ask for weaker guarantees (they must not win)
    settings = _settings(broker, tmp_path, "idempotent.").model_copy(
        update={"kafka_config": {"acks": "1", "enable.idempotence": "false"}}
    )
    camera = CameraSpec(id="idem", source="synthetic:320x240", fps=30)
    stats = run_producers(settings, [camera], threading.Event(), max_frames=30)
    assert stats.cameras["idem"].published == 30
    # When the batches the broker stored are read from its log segments
    batches = _stored_batches(broker, settings.frames_topic)
    # Then every batch carries a producer id and per-partition sequence numbers (a
    # producer without idempotence writes producer id -1 and sequence -1), the sequences
    # run on without a gap, and the broker holds each frame once
    assert sum(b.records for b in batches) == 30
    assert {b.producer_id for b in batches} != {-1} and min(b.producer_id for b in batches) >= 0
    for partition in {b.partition for b in batches}:
        mine = [b for b in batches if b.partition == partition]
        expected = 0
        for batch in mine:
            assert batch.producer_epoch >= 0 and batch.base_sequence == expected, mine
            expected += batch.records
    # and an idempotent producer is an acks=all producer: librdkafka refuses any other
    # acks with idempotence (a single broker cannot tell acks=1 from acks=all apart:
    # Kafka caps min.insync.replicas at the replication factor)
    with pytest.raises(KafkaException, match="acks"):
        Producer(broker.client_config(**{"enable.idempotence": True, "acks": 1}))


def test_seq_keeps_increasing_across_producer_restarts(broker: KafkaBroker, tmp_path: Path) -> None:
    # Given a camera produced by one producer run, then by a second one (a restart)
    settings = _settings(broker, tmp_path, "restarts.")
    camera = CameraSpec(id="restarted", source="synthetic:320x240", fps=30)
    first = run_producers(settings, [camera], threading.Event(), max_frames=20)
    second = run_producers(settings, [camera], threading.Event(), max_frames=20)
    # Then every seq of the second run is above every seq of the first, and the camera's
    # frames in the topic carry strictly increasing seqs
    assert min(second.delivered["restarted"]) > max(first.delivered["restarted"])
    records = by_camera(read_frames(broker.client_config(), settings.frames_topic))["restarted"]
    assert len(records) == 40
    assert _strictly_increasing(records)


def test_the_topics_message_limit_is_read_from_the_broker(
    broker: KafkaBroker, tmp_path: Path
) -> None:
    # Given frames topics whose max.message.bytes (set on the broker only) is below the
    # size of a camera's frames (1280x720, noisy: ~300 KB as JPEG), and one so small no
    # JPEG fits
    roomy = Settings(kafka_bootstrap=broker.bootstrap, topic_prefix="limit.", state_dir=tmp_path)
    tiny = roomy.model_copy(update={"topic_prefix": "tiny-limit."})
    broker.create_topics([roomy.frames_topic], 1, config={"max.message.bytes": "60000"})
    broker.create_topics([tiny.frames_topic], 1, config={"max.message.bytes": "1500"})
    camera = CameraSpec(id="big", source="synthetic:1280x720", fps=30, jpeg_quality=95)

    # When the camera is produced to each
    stats = run_producers(roomy, [camera], threading.Event(), max_frames=10)
    stop = threading.Event()
    timer = threading.Timer(2.0, stop.set)  # nothing is ever sent: max_frames never ends it
    timer.start()
    with capture_logs() as logs:
        refused = run_producers(tiny, [camera], stop)
    timer.cancel()

    # Then frames are scaled down to fit the broker's limit, and all are published
    counters = stats.cameras["big"]
    assert counters.published == 10 and counters.downscaled == 10, counters.summary()
    records = read_frames(broker.client_config(), roomy.frames_topic)
    assert len(records) == 10
    assert all(r.size <= 60000 - 1024 and r.width < 1280 for r in records), records
    # and where nothing fits, frames are dropped as too_large, with a message that
    # names the fix (once per camera)
    summary = refused.cameras["big"].summary()
    assert refused.cameras["big"].published == 0
    assert summary["dropped"].get(DropReason.TOO_LARGE, 0) >= 1, summary
    (event,) = [e for e in logs if e["event"] == "frame.too_large"]
    assert event["camera"] == "big" and event["limit"] == 1500 - 1024
    assert "max.message.bytes" in event["fix"] and "CAMSTREAM_MAX_MESSAGE_BYTES" in event["fix"]
    assert read_frames(broker.client_config(), tiny.frames_topic) == []
