"""streams.enrich: a slow or failing Feast never holds a batch; pushes coalesce and retry.

Feast itself is replaced by a small stand-in here (the logic is what is under test); the
integration tests run the same code against the real SQLite online store.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from camstream.records import Enrichment
from streams import enrich
from streams.enrich import FeatureCache, FeaturePusher


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
