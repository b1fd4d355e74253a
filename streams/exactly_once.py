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
  consumer's commit takes the worker's publish guard before it chooses the offsets to
  commit, so the transaction it commits holds records only of frames whose offsets it
  commits; a guard taken later, around the producer's commit alone, let a batch's
  records into a transaction whose offsets were chosen before that batch's acks, and a
  worker killed before the next commit published those frames twice);
- every rebalance starts fresh transactional producers (``fresh_transactions``: Faust
  would keep producers that another worker fenced);
- after a rebalance the consumer starts from *stable* committed offsets
  (``stable_offsets``): a transaction's offsets become readable only once the broker
  has written its commit markers, after the commit returns; aiokafka's OffsetFetch
  (v3) cannot ask to wait for them (KIP-447's require_stable), so a worker given a
  partition a moment after its previous owner committed read the offset from before
  that commit and classified the batch again (duplicates under load). librdkafka asks
  for stable offsets with ``isolation.level=read_committed``, so a seek waits for it.

These patch Faust internals. ``check_internals`` names every one this module (and the
consumer-lag gauge in streams.app) relies on, and fails loudly, naming the missing
ones, when a Faust upgrade removes them: the app calls it at build time and
tests/unit/test_exactly_once.py runs it on the pinned Faust.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Iterable
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
    ("maybe_begin_transaction", True),
    ("begin_transaction", True),
)
CONSUMER_INTERNALS = (("_committed_offset", False),)
CONSUMER_CLASS_INTERNALS = (
    ("seek_to_committed", True),
    ("force_commit", True),  # chooses the offsets (_commit_tps) and commits them
    ("_commit_tps", True),
)
STABLE_OFFSETS_TIMEOUT_S = 30.0


def check_internals(app: faust.App, *, consumer: bool = True) -> None:
    """Raise ServiceError naming every Faust internal this module patches or reads
    that the installed Faust lacks (or whose kind changed).

    ``consumer=False`` leaves the consumer's out: touching ``app.consumer`` creates
    it, which must not happen while the app is being built (its agents and topics are
    not declared yet); the app checks those once its agent runs.
    """
    missing = []
    owners: list[tuple[Any, tuple[tuple[str, bool], ...]]] = [
        (app.producer, PRODUCER_INTERNALS),
        (app.transport.Consumer, CONSUMER_CLASS_INTERNALS),
    ]
    if consumer:
        owners.append((app.consumer, CONSUMER_INTERNALS))
    for owner, names in owners:
        for name, coroutine in names:
            value = getattr(owner, name, None)
            if value is None or (coroutine and not inspect.iscoroutinefunction(value)):
                kind = owner if isinstance(owner, type) else type(owner)
                missing.append(f"{kind.__qualname__}.{name}")
    if missing:
        raise ServiceError(
            f"faust-streaming {faust.__version__} lacks internals that camstream's "
            f"exactly-once delivery patches: {', '.join(missing)}; pin the version in "
            "pyproject.toml (see streams/exactly_once.py)"
        )


def install(app: faust.App, settings: Settings, guard: asyncio.Lock) -> Send:
    """Apply the commit guard, fresh transactions and stable offsets; returns the
    transactional send."""
    check_internals(app, consumer=False)
    guard_commits(app, guard)
    fresh_transactions(app)
    stable_offsets(app, settings)
    return transactional_send(app, settings.frames_topic)


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
    """Commit only between batches: the consumer's commit holds ``guard`` (which a batch
    holds from its first record sent to its last ack) from choosing the offsets to the
    end of the transaction commit. The consumer class is swapped before Faust makes the
    consumer."""
    transport: Any = app.transport
    base: type[Any] = transport.Consumer

    class GuardedCommitConsumer(base):  # type: ignore[misc]
        async def force_commit(self, *args: Any, **kwargs: Any) -> Any:
            async with guard:
                return await super().force_commit(*args, **kwargs)

    transport.Consumer = GuardedCommitConsumer


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


def stable_offsets(app: faust.App, settings: Settings) -> None:
    """Make every seek to committed offsets (Faust's after each rebalance) wait until the
    group's offsets for the assigned partitions are stable: no transaction that commits
    offsets for them is pending. The consumer class is swapped before Faust makes the
    consumer (touching ``app.consumer`` here would make it too early)."""
    transport: Any = app.transport
    base: type[Any] = transport.Consumer
    group = app.conf.id

    class StableOffsetsConsumer(base):  # type: ignore[misc]
        async def seek_to_committed(self) -> Any:
            partitions = [(tp.topic, tp.partition) for tp in self.assignment()]
            if partitions:
                await asyncio.to_thread(wait_for_stable_offsets, settings, group, partitions)
            return await super().seek_to_committed()

    transport.Consumer = StableOffsetsConsumer


def wait_for_stable_offsets(
    settings: Settings,
    group: str,
    partitions: Iterable[tuple[str, int]],
    timeout_s: float = STABLE_OFFSETS_TIMEOUT_S,
) -> dict[tuple[str, int], int]:
    """Block until ``group``'s committed offsets for ``partitions`` are stable (librdkafka
    retries OffsetFetch while the broker answers UNSTABLE_OFFSET_COMMIT); returns them
    (negative: none committed)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    config = {"group.id": group, "isolation.level": "read_committed"}
    consumer = Consumer(settings.kafka_client_config(**config, **{"enable.auto.commit": False}))
    try:
        committed = consumer.committed(
            [TopicPartition(topic, partition) for topic, partition in partitions],
            timeout=timeout_s,
        )
        return {(tp.topic, tp.partition): tp.offset for tp in committed}
    except KafkaException as exc:
        raise ServiceError(
            f"the committed offsets of consumer group {group} did not become stable in "
            f"{timeout_s:.0f} s ({exc}); a transaction that commits them "
            "is still open: the worker restarts and reads them again"
        ) from exc
    finally:
        consumer.close()


def committed_offsets(app: faust.App) -> dict[Any, int]:
    """The consumer's last committed offset per partition (a Faust internal)."""
    consumer: Any = app.consumer
    return dict(consumer._committed_offset)
