"""streams.enrich: a slow or failing Feast never holds a batch; pushes coalesce and retry.

Feast itself is replaced by a small stand-in here (the logic is what is under test),
except in the float32 test, which registers a camera in a real Feast (SQLite online
store, a temporary folder); the integration tests run the same code on the stack.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from camstream.records import Enrichment, FrameHeaders, ModelRef
from streams import enrich
from streams.enrich import FeatureCache, FeaturePusher, OnlineStore, feature_value
from streams.records_out import BatchTiming, build_prediction


class Store:
    """Stands in for a FeatureStore: answers, hangs or fails on demand."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.release.set()
        self.fail = False
        self.pushed: list[tuple[str, list[dict[str, Any]]]] = []

    def get(self) -> Store:
        return self

    def reset(self) -> None:
        pass

    def push(self, source: str, frame: Any, to: Any = None) -> None:
        if self.fail:
            raise RuntimeError("database is locked")
        self.pushed.append((source, frame.to_dict("records")))


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Store:
    fake = Store()

    def camera_features(_store: Store, ids: list[str]) -> dict[str, dict[str, Any]]:
        fake.release.wait(5)
        if fake.fail:
            raise RuntimeError("database is locked")
        return {cid: {"zone": "z", "confidence_threshold": 0.1} for cid in ids}

    monkeypatch.setattr(enrich, "camera_features", camera_features)
    return fake


def test_hung_store_gives_stale_from_cache_and_missing_without_waiting(store: Store) -> None:
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            cache = FeatureCache(store, ttl_s=0.05, timeout_s=0.1, executor=pool)  # type: ignore[arg-type]
            first = await cache.get(["known"])
            assert first["known"][1] is Enrichment.OK
            await asyncio.sleep(0.1)  # past the TTL
            store.release.clear()  # the store hangs
            started = asyncio.get_running_loop().time()
            during = await cache.get(["known", "new"])
            assert asyncio.get_running_loop().time() - started < 0.5
            assert during["known"] == ({"zone": "z", "confidence_threshold": 0.1}, Enrichment.STALE)
            assert during["new"] == ({}, Enrichment.MISSING)
            store.release.set()

    asyncio.run(scenario())


def test_an_aging_entry_is_refreshed_in_the_background_and_stays_ok(store: Store) -> None:
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            cache = FeatureCache(store, ttl_s=0.4, timeout_s=0.05, executor=pool)  # type: ignore[arg-type]
            assert (await cache.get(["cam"]))["cam"][1] is Enrichment.OK
            await asyncio.sleep(0.25)  # past half the TTL, within it
            store.release.clear()  # the refresh is slower than the deadline
            started = asyncio.get_running_loop().time()
            during = await cache.get(["cam"])
            # Then the batch did not wait for the refresh, and the entry is still fresh
            assert asyncio.get_running_loop().time() - started < 0.04
            assert during["cam"][1] is Enrichment.OK
            await asyncio.sleep(0.1)
            store.release.set()  # the refresh lands after 0.1 s, past the 0.05 s deadline
            await asyncio.sleep(0.1)
            store.release.clear()  # and the store hangs again
            # ...and it filled the cache: past the first read's TTL, still OK, no wait
            started = asyncio.get_running_loop().time()
            assert (await cache.get(["cam"]))["cam"][1] is Enrichment.OK
            assert asyncio.get_running_loop().time() - started < 0.04
            store.release.set()

    asyncio.run(scenario())


def test_late_read_still_fills_the_cache(store: Store) -> None:
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            cache = FeatureCache(store, ttl_s=10, timeout_s=0.05, executor=pool)  # type: ignore[arg-type]
            store.release.clear()
            assert (await cache.get(["cam"]))["cam"][1] is Enrichment.MISSING
            store.release.set()
            await asyncio.sleep(0.2)
            assert (await cache.get(["cam"]))["cam"][1] is Enrichment.OK

    asyncio.run(scenario())


def test_pushes_keep_the_latest_row_per_camera_and_retry_after_a_failure(store: Store) -> None:
    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            pusher = FeaturePusher(store, pool)  # type: ignore[arg-type]
            pusher.offer("src", {"camera_id": "a", "n": 1})
            pusher.offer("src", {"camera_id": "a", "n": 2})
            store.fail = True
            await pusher.flush()
            assert pusher.pending() == 1
            store.fail = False
            await pusher.flush()
            assert store.pushed == [("src", [{"camera_id": "a", "n": 2}])]
            assert pusher.pending() == 0

    asyncio.run(scenario())


def test_float32_features_read_back_as_the_decimal_that_was_written() -> None:
    # Feast keeps Float32 features: 0.2 reads back as 0.20000000298023224.
    assert feature_value(float(np.float32(0.2))) == 0.2
    assert feature_value(np.float32(0.35)) == 0.35
    assert feature_value(float(np.float32(0.123456789))) == 0.12345679
    # A float that is no float32 stays itself; NaN and infinity are no value at all.
    assert feature_value(0.1) == 0.1
    assert feature_value(float("nan")) is None and feature_value(float("inf")) is None
    assert [feature_value(v) for v in (True, 3, "zone", None)] == [True, 3, "zone", None]


def _prediction(features: dict[str, Any], status: Enrichment) -> dict[str, Any]:
    prediction = build_prediction(
        FrameHeaders("cam", 1, 1_000, 64, 48),
        np.array([0.1, 0.7, 0.2], dtype=np.float32),
        ["cat", "dog", "car"],
        model=ModelRef(name="m", version="1"),
        features=features,
        enrichment=status,
        default_threshold=0.5,
        k=2,
        timing=BatchTiming(received_s=1.0),
        produced_s=None,
        worker="w",
        now_ms=1_100,
    )
    document: dict[str, Any] = json.loads(prediction.to_json_bytes())
    return document


def test_a_threshold_of_0_2_in_the_store_is_0_2_in_the_prediction(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the store answers as Feast does, with the float32 read back as a float64
    monkeypatch.setattr(
        enrich,
        "camera_features",
        lambda _store, ids: {cid: {"confidence_threshold": float(np.float32(0.2))} for cid in ids},
    )

    async def scenario() -> dict[str, Any]:
        with ThreadPoolExecutor(1) as pool:
            cache = FeatureCache(store, ttl_s=10, timeout_s=1, executor=pool)  # type: ignore[arg-type]
            features, status = (await cache.get(["cam"]))["cam"]
            return _prediction(features, status)

    # When a prediction is made with the camera's features, then it says 0.2 exactly
    document = asyncio.run(scenario())
    assert document["threshold"] == 0.2
    assert document["features"]["confidence_threshold"] == 0.2


def test_a_threshold_of_0_2_registered_in_real_feast_is_0_2_in_the_prediction(
    tmp_path: Path,
) -> None:
    # Given a camera registered with threshold 0.2 in a real Feast (SQLite online store)
    from camstream.cameras import CameraSpec
    from camstream.featurestore import apply_repo, prepare_repo, upsert_cameras

    repo = prepare_repo(tmp_path / "feast")
    upsert_cameras(apply_repo(repo), [CameraSpec(id="cam", source="x", confidence_threshold=0.2)])

    async def scenario() -> dict[str, Any]:
        with ThreadPoolExecutor(1) as pool:
            cache = FeatureCache(OnlineStore(repo), ttl_s=10, timeout_s=60, executor=pool)
            features, status = (await cache.get(["cam"]))["cam"]
            assert status is Enrichment.OK
            return _prediction(features, status)

    # When the worker reads it and makes a prediction, then the record says 0.2
    document = asyncio.run(scenario())
    assert document["threshold"] == 0.2
    assert document["features"]["confidence_threshold"] == 0.2
