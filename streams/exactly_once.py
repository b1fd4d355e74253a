"""Exactly-once delivery on Faust's transaction manager, and the fixes it needs.

With ``delivery="exactly_once"`` Faust runs one transactional producer per frames
partition, whose transaction carries that partition's consumed offsets. Three fixes
make it hold (tests/integration/test_worker_exactly_once.py):

- stock Faust would send our records outside any transaction (it picks the transaction
  from the output topic's partition, which its consumer does not know), so each record
  is sent explicitly in the transaction of the frame it came from, to the same
  partition number of its topic (``transactional_send``; ``partition_mismatch`` checks
  at start that every output topic has enough partitions);
- a commit never runs between a batch's records and its acks (``guard_commits``: the
  commit takes the worker's publish guard);
- every rebalance starts fresh transactional producers (``fresh_transactions``: Faust
  would keep producers that another worker fenced).

These patch Faust internals. ``check_internals`` names every one this module (and the
consumer-lag gauge in streams.app) relies on, and fails loudly, naming the missing
ones, when a Faust upgrade removes them: the app calls it at build time and
tests/unit/test_exactly_once.py runs it on the pinned Faust.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from typing import Any

import faust
from faust.exceptions import ProducerSendError
from prometheus_client import Counter

from camstream.errors import ConfigError, ServiceError
from camstream.settings import Settings
from streams.publish import Send

REVOKED = Counter(
    "camstream_worker_records_revoked_total",
    "exactly_once: records not sent because their frame's partition moved to another "
    "worker mid-batch (that worker processes the frame again)",
)

# (object, attribute, must be a coroutine function)
PRODUCER_INTERNALS = (
    ("_transaction_producers", False),
    ("commit_transactions", True),
    ("maybe_begin_transaction", True),
    ("begin_transaction", True),
)
CONSUMER_INTERNALS = (("_committed_offset", False),)


def check_internals(app: faust.App, *, consumer: bool = True) -> None:
    """Raise ServiceError naming every Faust internal this module patches or reads
    that the installed Faust lacks (or whose kind changed).

    ``consumer=False`` leaves the consumer's out: touching ``app.consumer`` creates
    it, which must not happen while the app is being built (its agents and topics are
    not declared yet); the app checks those once its agent runs.
    """
    missing = []
    owners: list[tuple[Any, tuple[tuple[str, bool], ...]]] = [(app.producer, PRODUCER_INTERNALS)]
    if consumer:
        owners.append((app.consumer, CONSUMER_INTERNALS))
    for owner, names in owners:
        for name, coroutine in names:
            value = getattr(owner, name, None)
            if value is None or (coroutine and not inspect.iscoroutinefunction(value)):
                missing.append(f"{type(owner).__qualname__}.{name}")
    if missing:
        raise ServiceError(
            f"faust-streaming {faust.__version__} lacks internals that camstream's "
            f"exactly-once delivery patches: {', '.join(missing)}; pin the version in "
            "pyproject.toml (see streams/exactly_once.py)"
        )


def install(app: faust.App, frames_topic: str, guard: asyncio.Lock) -> Send:
    """Apply the commit guard and fresh transactions; returns the transactional send."""
    check_internals(app, consumer=False)
    guard_commits(app, guard)
    fresh_transactions(app)
    return transactional_send(app, frames_topic)


def transactional_send(app: faust.App, frames_topic: str) -> Send:
    """Send each record in the transaction of its frame's partition."""

    async def send(
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None,
        partition: int | None,
    ) -> Any:
        producer = app.producer
        if partition is None:  # tied to no frame (a drift window closed by time)
            return await producer.send(topic, key, value, None, None, headers)
        group = app.assignor.group_for_topic(frames_topic)
        transaction = f"{app.conf.id}-{group}-{partition}"
        try:
            return await producer.send(
                topic, key, value, partition, None, headers, transactional_id=transaction
            )
        except ProducerSendError:
            # The partition moved away mid-batch: its transaction is gone, its offsets
            # were not committed, and the new owner classifies these frames again.
            REVOKED.inc()
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

    return send


async def partition_mismatch(app: faust.App, settings: Settings) -> ConfigError | None:
    """Each record goes to its frame's partition number: every output topic needs at
    least the frames topic's partitions. What is wrong, or None."""
    client = app.producer._producer  # type: ignore[attr-defined]  # aiokafka's: partitions_for is public
    frames = len(await client.partitions_for(settings.frames_topic))
    for topic in settings.output_topics:
        count = len(await client.partitions_for(topic))
        if count < frames:
            return ConfigError(
                f"CAMSTREAM_DELIVERY=exactly_once needs {topic} to have at least "
                f"as many partitions as {settings.frames_topic} ({frames}), it has {count}: "
                f"add partitions (kafka-topics.sh --alter --topic {topic} --partitions "
                f"{frames}) or use CAMSTREAM_DELIVERY=at_least_once"
            )
    return None


def guard_commits(app: faust.App, guard: asyncio.Lock) -> None:
    """Commit transactions only between batches, never with a batch's records sent
    but its offsets not yet acked (that would publish them twice after a crash)."""
    producer = app.producer
    commit = producer.commit_transactions

    async def guarded(*args: Any, **kwargs: Any) -> Any:
        async with guard:
            return await commit(*args, **kwargs)

    producer.commit_transactions = guarded  # type: ignore[method-assign]


def fresh_transactions(app: faust.App) -> None:
    """Start a new transactional producer for every partition assigned by a rebalance.

    Faust keeps the producer it had, even one that another worker fenced while the
    partition was away (it does not stop producers of revoked partitions); every send
    of that producer then fails. A new producer fences any other holder of the
    partition's transactional id and aborts the transaction it left open, whose
    records belong to frames that will be classified again from the committed offset.
    """
    producer: Any = app.producer

    async def restart(transactional_id: str) -> None:
        stale = producer._transaction_producers.pop(transactional_id, None)
        if stale is not None:
            with contextlib.suppress(Exception):
                await stale.stop()
        await producer.begin_transaction(transactional_id)

    producer.maybe_begin_transaction = restart


def committed_offsets(app: faust.App) -> dict[Any, int]:
    """The consumer's last committed offset per partition (a Faust internal)."""
    consumer: Any = app.consumer
    return dict(consumer._committed_offset)
