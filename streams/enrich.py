"""Feast on the worker's side: camera features read with a deadline, rows pushed in bulk.

SQLite's online store has no async API, so every Feast call runs on one dedicated
thread (the FeatureStore is not shared across threads). Reads are cached per camera
with a TTL and never hold a batch longer than ``timeout_s``: when the store is slow or
failing, a camera with a cached entry is served from it (status ``stale``) and one
without gets no features (status ``missing``); predictions keep flowing either way.
Pushes (camera activity, drift state) coalesce to the latest row per camera and source
and go out on a timer, off the hot path; a failed push keeps its rows for the next one.

Feast stores Float32 features and reads them back as the nearest float64 (a threshold
of 0.2 comes back as 0.20000000298023224); ``feature_value`` turns each back into the
shortest decimal that is the same float32, so a record says 0.2 (see Prediction).
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Iterable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from prometheus_client import Counter

from camstream.featurestore import camera_features, open_store
from camstream.records import Enrichment

log = structlog.get_logger(__name__)

FEATURE_READS = Counter(
    "camstream_worker_feature_reads_total", "Feast online reads by outcome", ["outcome"]
)
FEATURE_PUSHES = Counter(
    "camstream_worker_feature_pushes_total",
    "Feast push calls by source and outcome",
    ["source", "outcome"],
)

Features = dict[str, Any]
Row = dict[str, Any]


def feature_value(value: Any) -> Any:
    """A feature value as read from Feast, as a record should carry it.

    A float that is exactly a float32 (every Float32 feature) becomes the shortest
    decimal that reads back as that float32 (0.20000000298023224 -> 0.2); other floats
    stay as they are; NaN and infinity, which JSON cannot carry, mean no value (None).
    """
    if isinstance(value, bool) or not isinstance(value, float | np.floating):
        return value
    number = float(value)
    if not math.isfinite(number):
        return None
    single = np.float32(number)
    return float(str(single)) if float(single) == number else number


class OnlineStore:
    """One lazily opened FeatureStore, used only from the Feast thread; reopened after
    a failure, since the store may come back as a new file."""

    def __init__(self, repo: Path) -> None:
        self._repo = repo
        self._store: Any = None

    def get(self) -> Any:
        if self._store is None:
            self._store = open_store(self._repo)
        return self._store

    def reset(self) -> None:
        self._store = None


class FeatureCache:
    def __init__(
        self, store: OnlineStore, ttl_s: float, timeout_s: float, executor: Executor
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._executor = executor
        self._entries: dict[str, tuple[Features, float]] = {}
        self._reading: asyncio.Future[dict[str, Features]] | None = None

    async def warm_up(self) -> None:
        """Import feast and open the store (seconds, once) before the first batch, so the
        first reads fit in their deadline; a store that is down now is not fatal."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._read, ["__warm_up__"])
        except Exception as exc:
            log.warning("feast.unavailable_at_start", error=repr(exc))

    def _read(self, camera_ids: list[str]) -> dict[str, Features]:
        try:
            read = camera_features(self._store.get(), camera_ids)
        except Exception:
            self._store.reset()
            raise
        return {
            cid: {name: feature_value(value) for name, value in features.items()}
            for cid, features in read.items()
        }

    def _stored(self, future: asyncio.Future[dict[str, Features]], read_at: float) -> None:
        """Done-callback: a read that outlived its batch still fills the cache."""
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            FEATURE_READS.labels("error").inc()
            log.warning("feast.read_failed", error=repr(exc))
            return
        FEATURE_READS.labels("ok").inc()
        for cid, features in future.result().items():
            self._entries[cid] = (features, read_at)

    def _age_s(self, cid: str, now: float) -> float:
        entry = self._entries.get(cid)
        return math.inf if entry is None else now - entry[1]

    async def get(self, camera_ids: Iterable[str]) -> dict[str, tuple[Features, Enrichment]]:
        wanted = set(camera_ids)
        now = time.monotonic()
        # Refresh ahead: an entry past half its TTL is read again in the background while
        # it is still served as fresh, so a read held up behind a push (one Feast thread)
        # or a busy machine has half the TTL plus the deadline before a record says stale.
        ages = {cid: self._age_s(cid, now) for cid in wanted}
        aging = sorted(cid for cid, age in ages.items() if age > self._ttl_s / 2)
        if aging:
            if self._reading is None or self._reading.done():
                loop = asyncio.get_running_loop()
                reading = loop.run_in_executor(self._executor, self._read, aging)
                reading.add_done_callback(functools.partial(self._stored, read_at=now))
                self._reading = reading
            if any(ages[cid] > self._ttl_s for cid in aging):  # only an expired one waits
                try:
                    await asyncio.wait_for(asyncio.shield(self._reading), self._timeout_s)
                except TimeoutError:
                    FEATURE_READS.labels("timeout").inc()
                except Exception:
                    pass  # counted and logged by the done-callback
        now = time.monotonic()
        out: dict[str, tuple[Features, Enrichment]] = {}
        for cid in wanted:
            entry = self._entries.get(cid)
            if entry is None:
                out[cid] = ({}, Enrichment.MISSING)
            elif now - entry[1] > self._ttl_s:
                out[cid] = (entry[0], Enrichment.STALE)
            elif all(value is None for value in entry[0].values()):
                out[cid] = (entry[0], Enrichment.MISSING)  # camera not registered
            else:
                out[cid] = (entry[0], Enrichment.OK)
        return out


class FeaturePusher:
    """Latest row per (push source, camera), pushed to the online store in one call per
    source whenever ``flush`` runs; rows of a failed push wait for the next flush."""

    def __init__(self, store: OnlineStore, executor: Executor) -> None:
        self._store = store
        self._executor = executor
        self._pending: dict[str, dict[str, Row]] = {}

    def offer(self, source: str, row: Row) -> None:
        self._pending.setdefault(source, {})[str(row["camera_id"])] = row

    def pending(self) -> int:
        return sum(len(rows) for rows in self._pending.values())

    def _push(self, batches: dict[str, list[Row]]) -> dict[str, BaseException | None]:
        import pandas as pd
        from feast.data_source import PushMode

        outcome: dict[str, BaseException | None] = {}
        for source, rows in batches.items():
            try:
                self._store.get().push(source, pd.DataFrame(rows), to=PushMode.ONLINE)
            except Exception as exc:
                self._store.reset()
                outcome[source] = exc
            else:
                outcome[source] = None
        return outcome

    async def flush(self) -> None:
        if not self._pending:
            return
        taken, self._pending = self._pending, {}
        batches = {source: list(rows.values()) for source, rows in taken.items()}
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(self._executor, self._push, batches)
        for source, exc in outcome.items():
            if exc is None:
                FEATURE_PUSHES.labels(source, "ok").inc()
                continue
            FEATURE_PUSHES.labels(source, "error").inc()
            log.warning("feast.push_failed", source=source, error=repr(exc))
            newer = self._pending.setdefault(source, {})
            for cid, row in taken[source].items():
                newer.setdefault(cid, row)
