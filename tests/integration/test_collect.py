"""Collect on the real stack: frames of two street cameras published to the real broker,
sampled into a dataset, each joined with the camera's Feast features as of its capture
time, frames that share a capture time included (feast#6787)."""

from __future__ import annotations

import json
import threading
import time
from itertools import combinations
from pathlib import Path

import cv2
import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from camstream.cameras import CameraSpec
from camstream.cli.collect import app as collect_app
from camstream.cli.common import new_app
from camstream.collect import NEAR_DUPLICATE_BITS, CollectResult, collect, entity_df
from camstream.datasets import Dataset, Record, dataset_dir, sha256_file
from camstream.featurestore import open_store
from camstream.imaging import decode_jpeg, encode_jpeg, hamming, perceptual_hash
from camstream.records import FrameHeaders
from camstream.settings import Settings
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

STREET = CameraSpec(
    id="collect-street", source="unused", site="north-gate", zone="crossing", indoor=False
)
BIKES = CameraSpec(
    id="collect-bikes", source="unused", site="riverside", zone="cycle-lane", indoor=True
)
META = ("site", "zone", "indoor")


def _video_frames(path: Path, every: int, count: int) -> list[bytes]:
    """``count`` JPEGs of the video, one every ``every`` frames."""
    capture = cv2.VideoCapture(str(path))
    frames: list[bytes] = []
    index = 0
    while len(frames) < count:
        ok, image = capture.read()
        assert ok, f"{path} has fewer than {count * every} frames"
        if index % every == 0:
            frames.append(encode_jpeg(image, 85))
        index += 1
    capture.release()
    return frames


def _distinct(frames: list[bytes]) -> bool:
    hashes = [perceptual_hash(decode_jpeg(f)) for f in frames]
    return all(hamming(a, b) > NEAR_DUPLICATE_BITS for a, b in combinations(hashes, 2))


def _publish(producer: Producer, topic: str, camera: str, seq: int, ts: int, jpeg: bytes) -> None:
    width, height = _size(jpeg)
    headers = FrameHeaders(camera, seq, ts, width, height).to_kafka()
    producer.produce(topic, value=jpeg, key=camera.encode(), headers=headers)


def _size(jpeg: bytes) -> tuple[int, int]:
    image = decode_jpeg(jpeg)
    return image.shape[1], image.shape[0]


def _check_manifest(
    settings: Settings, name: str, camera: CameraSpec, result: CollectResult
) -> list[Record]:
    """Every kept frame is in the manifest, its bytes intact, with its camera's features."""
    dataset = Dataset.load(dataset_dir(settings.datasets_path, name))
    records = [r for r in dataset.records if r.camera == camera.id]
    assert len(records) == result.kept
    for record in records:
        assert record.path == f"images/{camera.id}/{record.seq}.jpg"
        assert sha256_file(dataset.image_path(record)) == record.sha256
        assert record.origin == "camera" and record.label == "" and len(record.phash) == 16
        assert {k: record.features[k] for k in META} == {k: getattr(camera, k) for k in META}
        assert record.features["confidence_threshold"] == camera.confidence_threshold
    return records


def test_collect_keeps_every_sampled_frame_with_its_point_in_time_features(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two registered cameras and, after that, real frames of the two street videos
    stack.register(STREET, BIKES)
    settings = stack.settings.model_copy(
        update={
            "kafka_bootstrap": stack.info.kafka_bootstrap,
            "feast_repo": Path(stack.info.feast_repo),
            "datasets_dir": tmp_path / "datasets",
        }
    )
    topic = settings.frames_topic
    street = _video_frames(stack.assets.vtest_video, every=30, count=8)
    bikes = _video_frames(stack.assets.bikes_video, every=20, count=12)
    assert _distinct(street) and _distinct(bikes[::4])
    since = int(time.time() * 1000)
    producer = stack.producer()
    # street: frames 2, 3 and 4 share one capture time (feast#6787), frame 9 repeats
    # frame 1 (a near-duplicate), frame 10 is not a JPEG
    street_ts = [since, *[since + 100] * 3, since + 200, since + 300, since + 400, since + 500]
    for seq, (ts, jpeg) in enumerate(zip(street_ts, street, strict=True), start=1):
        _publish(producer, topic, STREET.id, seq, ts, jpeg)
    _publish(producer, topic, STREET.id, 9, since + 900, street[0])
    bad = FrameHeaders(STREET.id, 10, since + 950, 64, 48).to_kafka()
    producer.produce(topic, value=b"not a jpeg", key=STREET.id.encode(), headers=bad)
    # bikes: a frame every 250 ms of capture time
    for seq, jpeg in enumerate(bikes, start=1):
        _publish(producer, topic, BIKES.id, seq, since + 250 * (seq - 1), jpeg)
    assert producer.flush(15) == 0

    # When the street camera is collected with no rate limit
    result = collect(
        settings,
        STREET.id,
        "streets",
        max_frames=None,
        every_s=0.0,
        since_ms=since,
        until_ms=None,
        live=False,
        idle_timeout_s=10,
    )

    # Then every distinct frame is kept with its features, the shared capture time too
    assert (result.read, result.kept, result.near_duplicates, result.invalid) == (10, 8, 1, 1)
    assert result.stopped == "end"
    assert (result.features_rows, result.features_missing) == (8, 0)
    records = _check_manifest(settings, "streets", STREET, result)
    assert sorted(r.seq for r in records) == list(range(1, 9))
    shared = [r for r in records if r.capture_ts_ms == since + 100]
    assert len(shared) == 3
    # ...where the file offline store, asked for those three rows as they are, answers
    # one (feast#6787): the unique-key query is what kept them
    store = open_store(settings.feast_repo_path)
    raw = store.get_historical_features(
        entity_df=entity_df([(r.camera, r.capture_ts_ms or 0) for r in shared]),
        features=["camera_meta_fv:site"],
    ).to_df()
    assert len(raw) == 1
    # camera activity is pushed to the online store only: the offline store cannot answer
    activity = [ref for ref in result.features_unavailable if ref.startswith("camera_activity")]
    assert set(result.features) | set(result.features_unavailable) >= {
        f"camera_meta_fv:{name}" for name in (*META, "confidence_threshold")
    }
    assert activity or all("frames_in_window" in r.features for r in records)

    # When the bikes camera is collected through the CLI at one frame a second (its
    # logging set-up would bind the runner's stderr, closed after the call)
    monkeypatch.setattr("camstream.observability.configure_logging", lambda *_a, **_k: None)
    commands = new_app()
    commands.add_typer(collect_app)
    env = {
        "CAMSTREAM_STATE_DIR": str(settings.state_dir),
        "CAMSTREAM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CAMSTREAM_FEAST_REPO": str(settings.feast_repo),
        "CAMSTREAM_DATASETS_DIR": str(settings.datasets_dir),
    }
    args = ["collect", "--camera", BIKES.id, "--dataset", "streets", "--since", str(since)]
    cli = CliRunner().invoke(commands, [*args, "--every-s", "1", "--json"], env=env)

    # Then one frame per second of capture time is kept, beside the street frames
    assert cli.exit_code == 0, cli.output
    report = json.loads(cli.stdout.strip().splitlines()[-1])
    assert (report["read"], report["kept"], report["skipped_rate"]) == (12, 3, 9)
    assert report["features_rows"] == 3 and report["images"] == 11
    bikes_result = CollectResult(**{**report, "root": Path(report["root"])})
    kept = _check_manifest(settings, "streets", BIKES, bikes_result)
    assert sorted(r.capture_ts_ms for r in kept) == [since, since + 1000, since + 2000]

    # And a second collection over the same range adds nothing
    again = collect(
        settings,
        STREET.id,
        "streets",
        max_frames=None,
        every_s=0.0,
        since_ms=since,
        until_ms=None,
        live=False,
        idle_timeout_s=10,
    )
    assert (again.kept, again.already_collected, again.images) == (0, 8, 11)


def test_collect_live_reads_new_frames_until_max(stack: Stack, tmp_path: Path) -> None:
    # Given a registered camera and a live collection waiting for its next frames
    stack.register(STREET)
    settings = stack.settings.model_copy(
        update={
            "kafka_bootstrap": stack.info.kafka_bootstrap,
            "feast_repo": Path(stack.info.feast_repo),
            "datasets_dir": tmp_path / "datasets",
        }
    )
    results: list[CollectResult] = []
    stop = threading.Event()

    def run() -> None:
        results.append(
            collect(
                settings,
                STREET.id,
                "live",
                max_frames=2,
                every_s=0.0,
                since_ms=None,
                until_ms=None,
                live=True,
                idle_timeout_s=30,
                stop=stop,
            )
        )

    worker = threading.Thread(target=run, daemon=True)
    worker.start()

    # When the camera publishes new distinct frames (until the collection has two)
    frames = _video_frames(stack.assets.vtest_video, every=60, count=12)
    producer = stack.producer()
    for seq, jpeg in enumerate(frames, start=1000):
        if not worker.is_alive():
            break
        _publish(producer, settings.frames_topic, STREET.id, seq, int(time.time() * 1000), jpeg)
        producer.flush(5)
        worker.join(1.0)
    stop.set()
    worker.join(30)

    # Then it stopped at two frames, both saved with their features
    (result,) = results
    assert (result.kept, result.stopped) == (2, "max")
    _check_manifest(settings, "live", STREET, result)
