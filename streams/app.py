"""The Faust application: frames in, predictions, drift records and dead letters out.

Topic names carry a configurable prefix, so the app is built from Settings by
``build_app`` instead of at import time; the agent itself is the usual short loop
over micro-batches, and the work lives in streams.worker.

Exactly-once delivery (``delivery="exactly_once"``) uses Faust's transaction manager:
one transactional producer per frames partition, whose transaction carries that
partition's consumed offsets. Three fixes make it hold (tests/integration/
test_worker_exactly_once.py): stock Faust would send our records outside any
transaction (it picks the transaction from the output topic's partition, which its
consumer does not know), so each record is sent explicitly in the transaction of the
frame it came from, to the same partition number of its topic; a commit never runs
between a batch's records and its acks (the worker's publish guard); and every
rebalance starts fresh transactional producers (Faust would keep fenced ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import faust
import structlog
from faust.auth import SASLCredentials, SSLCredentials
from faust.exceptions import ProducerSendError
from prometheus_client import Counter, Gauge

from camstream.settings import Settings
from streams.worker import BatchProcessor

log = structlog.get_logger(__name__)

READY = Gauge("camstream_worker_ready", "1 once the worker's model is ready in Triton")
ASSIGNED = Gauge("camstream_worker_assigned", "1 once the worker joined its group")
LAG = Gauge(
    "camstream_worker_consumer_lag",
    "Frames not yet committed per assigned partition (log end - committed offset)",
    ["partition"],
)
REVOKED = Counter(
    "camstream_worker_records_revoked_total",
    "exactly_once: records not sent because their frame's partition moved to another "
    "worker mid-batch (that worker processes the frame again)",
)


def faust_credentials(kafka_config: dict[str, str]) -> Any:
    """Map librdkafka security properties onto Faust (aiokafka) credentials."""
    protocol = kafka_config.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=kafka_config.get("ssl.ca.location"))
        if "ssl.certificate.location" in kafka_config:
            context.load_cert_chain(
                kafka_config["ssl.certificate.location"], kafka_config.get("ssl.key.location")
            )
    if protocol.startswith("SASL"):
        return SASLCredentials(
            username=kafka_config.get("sasl.username"),
            password=kafka_config.get("sasl.password"),
            mechanism=kafka_config.get("sasl.mechanism", "PLAIN"),
            ssl_context=context,
        )
    if protocol == "SSL" and context is not None:
        return SSLCredentials(context)
    raise SystemExit(
        f"camstream: unsupported security.protocol {protocol!r} in CAMSTREAM_KAFKA_CONFIG; "
        "use PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )


def build_app(settings: Settings) -> faust.App:
    brokers = [f"kafka://{server.strip()}" for server in settings.kafka_bootstrap.split(",")]
    settings.worker_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.worker_name,
        broker=brokers,
        broker_credentials=faust_credentials(settings.kafka_config),
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 6),
        datadir=str(settings.worker_dir),
        store="memory://",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        # Bounded memory: Faust pauses a partition once this many frames wait in it.
        stream_buffer_maxsize=settings.buffer_frames,
        producer_acks=-1,
        producer_max_request_size=settings.max_message_bytes * 2,
        web_enabled=False,
        autodiscover=False,
        processing_guarantee=settings.delivery,
        broker_commit_interval=settings.commit_interval_s,
    )
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes}
    raw |= {"key_serializer": "raw", "value_serializer": "raw"}
    frames = app.topic(settings.frames_topic, **raw)
    outputs = {
        name: app.topic(name, **raw)
        for name in (settings.predictions_topic, settings.drift_topic, settings.dlq_topic)
    }

    async def send(
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None,
        _partition: int | None,
    ) -> Any:
        return await outputs[topic].send(key=key, value=value, headers=headers)

    publish_guard = asyncio.Lock()
    if settings.delivery == "exactly_once":
        send = _transactional_send(app, settings.frames_topic)
        _guard_commits(app, publish_guard)
        _fresh_transactions(app)

    crashing: set[asyncio.Task[None]] = set()  # a strong reference until it is done

    async def fail(exc: BaseException) -> None:
        # A batch failed for good: stop the worker (non-zero exit) rather than go on
        # past frames that will never be acked. A restart takes them up again.
        task = asyncio.get_running_loop().create_task(app.crash(exc))
        crashing.add(task)
        task.add_done_callback(crashing.discard)

    processor = BatchProcessor(settings, send, publish_guard, on_failure=fail)

    @app.agent(frames)
    async def classify(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        if settings.delivery == "exactly_once":
            for output in outputs.values():
                await output.maybe_declare()  # with topic_partitions, if missing
            problem = await _partition_mismatch(app, settings)
            if problem:
                await app.crash(SystemExit(problem))
                return
        await processor.start()
        READY.set(1)

        async def acknowledge(events: Sequence[Any]) -> None:
            for event in events:
                await stream.ack(event)

        async for events in stream.take_events(settings.batch_max, settings.batch_within_s):
            # take_events acks a batch when this body ends; the extra reference keeps
            # the offsets uncommitted until the batch's records are in Kafka.
            for event in events:
                event.message.incref()
            await processor.submit(events, acknowledge)
            yield None

    @app.timer(interval=1.0)
    async def _every_second() -> None:
        await processor.tick(time.time_ns() // 1_000_000)
        _update_lag(app, settings.frames_topic)

    @app.timer(interval=settings.feature_push_interval_s)
    async def _push_features() -> None:
        await processor.flush_features()

    @app.on_rebalance_complete.connect
    async def _assigned(app: faust.App, **_: Any) -> None:
        ASSIGNED.set(1)

    @app.on_before_shutdown.connect
    async def _close(app: faust.App, **_: Any) -> None:
        READY.set(0)
        await processor.stop()

    return app


def _transactional_send(app: faust.App, frames_topic: str) -> Any:
    """Send each record in the transaction of its frame's partition (exactly_once)."""

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


async def _partition_mismatch(app: faust.App, settings: Settings) -> str | None:
    """exactly_once puts each record in its frame's partition number: every output
    topic needs at least the frames topic's partitions. What is wrong, or None."""
    client = app.producer._producer  # aiokafka's producer: partitions_for is public
    frames = len(await client.partitions_for(settings.frames_topic))
    for topic in (settings.predictions_topic, settings.drift_topic, settings.dlq_topic):
        count = len(await client.partitions_for(topic))
        if count < frames:
            return (
                f"camstream: CAMSTREAM_DELIVERY=exactly_once needs {topic} to have at least "
                f"as many partitions as {settings.frames_topic} ({frames}), it has {count}: "
                f"add partitions (kafka-topics.sh --alter --topic {topic} --partitions "
                f"{frames}) or use CAMSTREAM_DELIVERY=at_least_once"
            )
    return None


def _guard_commits(app: faust.App, guard: asyncio.Lock) -> None:
    """Commit transactions only between batches, never with a batch's records sent
    but its offsets not yet acked (that would publish them twice after a crash)."""
    producer = app.producer
    commit = producer.commit_transactions

    async def guarded(*args: Any, **kwargs: Any) -> Any:
        async with guard:
            return await commit(*args, **kwargs)

    producer.commit_transactions = guarded  # type: ignore[method-assign]


def _fresh_transactions(app: faust.App) -> None:
    """Start a new transactional producer for every partition assigned by a rebalance.

    Faust keeps the producer it had, even one that another worker fenced while the
    partition was away (it does not stop producers of revoked partitions); every send
    of that producer then fails. A new producer fences any other holder of the
    partition's transactional id and aborts the transaction it left open, whose
    records belong to frames that will be classified again from the committed offset.
    """
    producer = app.producer

    async def restart(transactional_id: str) -> None:
        stale = producer._transaction_producers.pop(transactional_id, None)
        if stale is not None:
            with contextlib.suppress(Exception):
                await stale.stop()
        await producer.begin_transaction(transactional_id)

    producer.maybe_begin_transaction = restart  # type: ignore[method-assign]


def _update_lag(app: faust.App, topic: str) -> None:
    """Consumer lag per assigned frames partition: log end offset - committed offset."""
    consumer = app.consumer
    committed = getattr(consumer, "_committed_offset", {})
    for tp in consumer.assignment():
        if tp.topic != topic:
            continue
        with contextlib.suppress(Exception):
            end = consumer.highwater(tp)
            if end is not None:
                LAG.labels(str(tp.partition)).set(max(0, end - (committed.get(tp) or 0)))


def run_worker(settings: Settings) -> None:
    """Run one worker until SIGTERM/SIGINT (Faust flushes, commits and closes)."""
    app = build_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
