"""Camera features from Feast, cached per camera with a TTL, read off the event loop.

SQLite's online store has no async API, so reads run in an executor. When the store
fails, a camera with a cached entry is served from it (status ``stale``) and one
without gets no features (status ``missing``); predictions keep flowing either way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import Counter

from camstream.featurestore import camera_features, open_store
from camstream.records import Enrichment

log = structlog.get_logger(__name__)

FEATURE_READS = Counter(
    "camstream_worker_feature_reads_total", "Feast online reads by outcome", ["outcome"]
)

Features = dict[str, Any]


class FeatureCache:
    def __init__(self, repo: Path, ttl_s: float, executor: Executor) -> None:
        self._repo = repo
        self._ttl_s = ttl_s
        self._executor = executor
        self._store: Any = None
        self._entries: dict[str, tuple[Features, float]] = {}

    def _read(self, camera_ids: list[str]) -> dict[str, Features]:
        if self._store is None:
            self._store = open_store(self._repo)
        return camera_features(self._store, camera_ids)

    async def get(self, camera_ids: Iterable[str]) -> dict[str, tuple[Features, Enrichment]]:
        now = time.monotonic()
        wanted = set(camera_ids)
        expired = sorted(
            cid
            for cid in wanted
            if cid not in self._entries or now - self._entries[cid][1] > self._ttl_s
        )
        failed = False
        if expired:
            loop = asyncio.get_running_loop()
            try:
                fresh = await loop.run_in_executor(self._executor, self._read, expired)
            except Exception as exc:
                failed = True
                self._store = None  # reopen next time: the store may come back
                FEATURE_READS.labels("error").inc()
                log.warning("feast.read_failed", cameras=expired, error=repr(exc))
            else:
                FEATURE_READS.labels("ok").inc()
                for cid, features in fresh.items():
                    self._entries[cid] = (features, now)
        out: dict[str, tuple[Features, Enrichment]] = {}
        for cid in wanted:
            entry = self._entries.get(cid)
            if entry is None:
                out[cid] = ({}, Enrichment.MISSING)
            elif failed and cid in expired:
                out[cid] = (entry[0], Enrichment.STALE)
            elif all(value is None for value in entry[0].values()):
                out[cid] = (entry[0], Enrichment.MISSING)  # camera not registered
            else:
                out[cid] = (entry[0], Enrichment.OK)
        return out
