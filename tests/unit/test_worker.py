"""streams.worker.FrameWorker composed from its parts, with fakes only at the edges
(Triton, Feast, Kafka): real JPEGs through the real decoder, drift monitor and records."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from camstream.imaging import encode_jpeg
from camstream.records import Enrichment, FrameHeaders, ModelRef
from streams.activity import ActivityTracker
from streams.breaker import CircuitBreaker
from streams.drift import DriftMonitor, ReferenceProfile, Thresholds
from streams.infer import ResilientClassifier
from streams.pipeline import Limits
from streams.publish import Publisher
from streams.routing import Router
from streams.stages import Decoder, DriftThread
from streams.worker import FrameWorker, Topics, WorkerConfig

LABELS = ["cat", "dog", "car"]
MODEL = ModelRef(name="m", version="4")


# What each model version answers for every image (a Triton stand-in: this is the unit
# test of the worker's composition; tests/integration runs the real server).
ANSWERS = {
    ("m", "4"): [0.2, 0.7, 0.1],  # dog
    ("m", "5"): [0.1, 0.1, 0.8],  # car
    ("fashion", "1"): [0.05, 0.95],  # LABELS_FASHION[1]
}
LABELS_FASHION = ["shirt", "bag"]


class FakeTriton:
    """Answers from ANSWERS per model version; remembers the requests it saw."""

    model_ref = MODEL

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.requests: list[tuple[str, str, int]] = []

    async def classify(
        self, images: npt.NDArray[np.uint8], model: str = "", version: str = ""
    ) -> npt.NDArray[np.float32]:
        assert images.shape[1:] == (224, 224, 3) and images.dtype == np.uint8
        self.rows.append(len(images))
        self.requests.append((model, version, len(images)))
        row = np.array(ANSWERS[(model, version)], dtype=np.float32)
        return np.tile(row, (len(images), 1))

    async def is_ready(self, model: str, version: str) -> bool | None:
        return (model, version) in ANSWERS

    async def connect(self) -> ModelRef:
        return MODEL

    async def close(self) -> None:
        return None


class FakeFeatures:
    """Camera metadata for 'cam-a' (and ``extra``); records which cameras were asked for."""

    def __init__(self, extra: dict[str, dict[str, Any]] | None = None) -> None:
        self.asked: list[set[str]] = []
        self.known = {"cam-a": {"confidence_threshold": 0.5, "site": "north"}, **(extra or {})}

    async def get(self, cameras: Any) -> dict[str, tuple[dict[str, Any], Enrichment]]:
        wanted = set(cameras)
        self.asked.append(wanted)
        await asyncio.sleep(0.01)
        return {
            cid: (self.known[cid], Enrichment.OK) if cid in self.known else ({}, Enrichment.MISSING)
            for cid in wanted
        }

    async def warm_up(self) -> None:
        return None


class FakePusher:
    def __init__(self) -> None:
        self.rows: list[tuple[str, dict[str, Any]]] = []

    def offer(self, source: str, row: dict[str, Any]) -> None:
        self.rows.append((source, row))

    async def flush(self) -> None:
        return None


@dataclass
class Message:
    key: bytes
    partition: int
    timestamp: float


@dataclass
class Event:
    headers: dict[str, bytes]
    value: bytes
    message: Message


def _event(camera: str, seq: int, jpeg: bytes, width: int, height: int) -> Event:
    now_ms = time.time_ns() // 1_000_000
    headers = dict(FrameHeaders(camera, seq, now_ms, width, height).to_kafka())
    return Event(headers, jpeg, Message(camera.encode(), seq % 2, now_ms / 1000))


def _repository(root: Path) -> Path:
    """A model repository with m versions 4 and 5 (default 4) and fashion version 1."""
    for model, version, labels in (
        ("m", 4, LABELS),
        ("m", 5, LABELS),
        ("fashion", 1, LABELS_FASHION),
    ):
        folder = root / model / str(version)
        folder.mkdir(parents=True)
        (folder / "labels.txt").write_text("\n".join(labels) + "\n")
        profile = {
            "id": f"ref-{model}-{version}",
            "labels": {labels[0]: 1.0},
            "confidence": [0.7] * 50,
            "image_stats": {"brightness": list(np.linspace(0, 255, 50))},
        }
        (folder / "reference_profile.json").write_text(json.dumps(profile))
    (root / "m" / "serving.json").write_text(json.dumps({"version": 4}))
    return root


def _worker(
    sent: list[tuple[str, bytes | None, bytes, Any, int | None]],
    repo: Path,
    features: FakeFeatures | None = None,
) -> FrameWorker:
    async def send(
        topic: str, key: bytes | None, value: bytes, headers: Any, partition: int | None
    ) -> Any:
        sent.append((topic, key, value, headers, partition))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    triton = FakeTriton()
    reference = ReferenceProfile(
        id="ref-1",
        labels={"dog": 0.6, "cat": 0.4},
        confidence=[0.7] * 50,
        image_stats={"brightness": list(np.linspace(0, 255, 50))},
    )
    monitor = DriftMonitor(
        reference,
        Thresholds(psi=0.25, js=0.35, ks_pvalue=0.001, confidence_shift=0.15),
        window_frames=5,
        model=MODEL,
        worker_id="w",
        calibration_frames=0,
    )
    return FrameWorker(
        WorkerConfig(
            topics=Topics("t.predictions", "t.drift", "t.dlq"),
            limits=Limits(max_bytes=2_000_000, max_pixels=10_000_000),
            top_k=2,
            default_threshold=0.9,
            max_frame_age_s=60.0,
            worker_id="w",
        ),
        triton=triton,  # type: ignore[arg-type]
        classifier=ResilientClassifier(triton, CircuitBreaker(3, 1.0), 2, 1.0),
        router=Router(repo, "m"),
        decoder=Decoder(2),
        features=features or FakeFeatures(),  # type: ignore[arg-type]
        pusher=FakePusher(),  # type: ignore[arg-type]
        activity=ActivityTracker(60.0),
        drift=DriftThread(monitor),
        publisher=Publisher(send, retry_max_s=1.0),
        depth=2,
    )


def test_a_batch_gives_predictions_dead_letters_and_a_drift_record_in_order(
    tmp_path: Path,
) -> None:
    # Given six real frames of two cameras and one frame whose headers lie about its size
    image = np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    jpeg = encode_jpeg(image)
    events = [_event("cam-a" if i % 2 else "cam-b", i, jpeg, 320, 240) for i in range(10)]
    events.append(_event("cam-a", 99, jpeg, 640, 480))
    sent: list[tuple[str, bytes | None, bytes, Any, int | None]] = []
    worker = _worker(sent, _repository(tmp_path))
    by_topic = _run(worker, events, sent)
    # Then the lying frame is a dead letter with its reason and original bytes
    [dlq] = by_topic["t.dlq"]
    assert dlq[2] == jpeg and dict(dlq[3])["error-kind"] == b"dimension_mismatch"
    # and every other frame is one prediction, in order, with the camera's threshold
    predictions = [json.loads(r[2]) for r in by_topic["t.predictions"]]
    assert [p["seq"] for p in predictions] == list(range(10))
    for p, record in zip(predictions, by_topic["t.predictions"], strict=True):
        assert p["model"] == {"name": "m", "version": "4"}
        assert record[4] == p["seq"] % 2  # the frame's partition
        if p["camera_id"] == "cam-a":
            assert (p["label"], p["threshold"], p["enrichment"]) == ("dog", 0.5, "ok")
        else:  # no features: the default threshold 0.9 makes 0.7 uncertain
            assert (p["label"], p["threshold"], p["enrichment"]) == ("uncertain", 0.9, "missing")
    # and each camera's fifth frame closed a drift window
    drift = [json.loads(r[2]) for r in by_topic["t.drift"]]
    assert sorted(d["camera_id"] for d in drift) == ["cam-a", "cam-b"]
    assert all(d["frame_count"] == 5 for d in drift)
    # and Triton saw the batch split over two requests, Feast was asked once
    triton = worker.triton
    assert sorted(triton.rows) == [5, 5]  # type: ignore[attr-defined]
    assert worker.features.asked == [{"cam-a", "cam-b"}]  # type: ignore[attr-defined]


Sent = list[tuple[str, bytes | None, bytes, Any, int | None]]


def _run(worker: FrameWorker, events: list[Event], sent: Sent) -> dict[str, Sent]:
    async def scenario() -> None:
        await worker.start()
        await worker.process(events)
        await worker.stop()

    asyncio.run(scenario())
    by_topic: dict[str, Sent] = {}
    for record in sent:
        by_topic.setdefault(record[0], []).append(record)
    return by_topic


def test_each_camera_is_answered_by_the_version_its_features_name(tmp_path: Path) -> None:
    # Given cameras on the default (m, its serving.json default 4), on m pinned to 5, on
    # another model, and on a model the repository lacks
    routes = {
        "cam-pinned": {"model": "m", "model_version": "5"},
        "cam-fashion": {"model": "fashion", "model_version": ""},
        "cam-lost": {"model": "nothing", "model_version": ""},
    }
    image = np.random.default_rng(2).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    jpeg = encode_jpeg(image)
    cameras = ["cam-a", *routes]
    events = [_event(cameras[i % 4], i, jpeg, 320, 240) for i in range(12)]
    sent: Sent = []
    worker = _worker(sent, _repository(tmp_path), FakeFeatures(routes))

    # When one batch holds all of them
    by_topic = _run(worker, events, sent)

    # Then each prediction names the version that made it, with that version's labels
    predictions = {json.loads(r[2])["seq"]: json.loads(r[2]) for r in by_topic["t.predictions"]}
    expected = {
        "cam-a": ({"name": "m", "version": "4"}, "dog"),
        "cam-pinned": ({"name": "m", "version": "5"}, "car"),
        "cam-fashion": ({"name": "fashion", "version": "1"}, "bag"),
    }
    assert sorted(predictions) == [i for i in range(12) if cameras[i % 4] != "cam-lost"]
    for p in predictions.values():
        assert (p["model"], p["top_k"][0]["label"]) == expected[p["camera_id"]]
        assert "model" not in p["features"]  # routing is in ``model``, not repeated
    # ...every request pinned to its version, each version's three frames sent to it
    rows: dict[tuple[str, str], int] = {}
    for model, version, count in worker.triton.requests:  # type: ignore[attr-defined]
        rows[(model, version)] = rows.get((model, version), 0) + count
    assert rows == {("fashion", "1"): 3, ("m", "4"): 3, ("m", "5"): 3}
    # ...and the camera routed to a missing model has its frames in the DLQ, saying why
    lost = by_topic["t.dlq"]
    assert len(lost) == 3 and all(dict(r[3])["error-kind"] == b"no_model" for r in lost)
    assert b"no version" in dict(lost[0][3])["error-message"]
