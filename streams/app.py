"""The Faust application: frames in, predictions, drift records and dead letters out.

Topic names carry a configurable prefix, so the app is built from Settings by
``build_app`` instead of at import time; the agent itself is the usual short loop over
micro-batches, the work lives in streams.worker, and exactly-once delivery's fixes to
Faust in streams.exactly_once.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import ssl
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import faust
import structlog
from faust.auth import SASLCredentials, SSLCredentials
from prometheus_client import Gauge, Histogram

from camstream.errors import ConfigError
from camstream.settings import Settings
from streams import exactly_once
from streams.publish import Send
from streams.worker import build_worker

log = structlog.get_logger(__name__)

READY = Gauge("camstream_worker_ready", "1 once the worker's model is ready in Triton")
ASSIGNED = Gauge("camstream_worker_assigned", "1 once the worker joined its group")
GC_PAUSE = Histogram(
    "camstream_worker_gc_pause_seconds",
    "Garbage-collector pauses (the whole process stops), by generation",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
LAG = Gauge(
    "camstream_worker_consumer_lag",
    "Frames not yet committed per assigned partition (log end - committed offset)",
    ["partition"],
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
    raise ConfigError(
        f"unsupported security.protocol {protocol!r} in CAMSTREAM_KAFKA_CONFIG; "
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
        topic_replication_factor=settings.topic_replication_factor,
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
    outputs = {name: app.topic(name, **raw) for name in settings.output_topics}

    async def plain_send(
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None,
        _partition: int | None,
    ) -> Any:
        return await outputs[topic].send(key=key, value=value, headers=headers)

    send: Send = plain_send
    publish_guard = asyncio.Lock()
    if settings.delivery == "exactly_once":
        send = exactly_once.install(app, settings, publish_guard)

    crashing: set[asyncio.Task[None]] = set()  # a strong reference until it is done

    async def fail(exc: BaseException) -> None:
        # A batch failed for good: stop the worker (non-zero exit) rather than go on
        # past frames that will never be acked. A restart takes them up again.
        task = asyncio.get_running_loop().create_task(app.crash(exc))
        crashing.add(task)
        task.add_done_callback(crashing.discard)

    worker = build_worker(settings, send, publish_guard, on_failure=fail)

    @app.agent(frames)
    async def classify(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        if settings.delivery == "exactly_once":
            exactly_once.check_internals(app)  # the consumer exists now
            for output in outputs.values():
                await output.maybe_declare()  # with topic_partitions, if missing
            problem = await exactly_once.partition_mismatch(app, settings)
            if problem is not None:
                await app.crash(problem)
                return
        await worker.start()
        _freeze_startup_heap()
        READY.set(1)

        async def acknowledge(events: Sequence[Any]) -> None:
            for event in events:
                await stream.ack(event)

        batches = stream.take_events  # type: ignore[attr-defined]  # faust's stubs lag
        async for events in batches(settings.batch_max, settings.batch_within_s):
            # take_events acks a batch when this body ends; the extra reference keeps
            # the offsets uncommitted until the batch's records are in Kafka.
            for event in events:
                event.message.incref()
            await worker.submit(events, acknowledge)
            yield None

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def _every_second() -> None:
        await worker.tick(time.time_ns() // 1_000_000)
        record_gc_pauses()

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def _lag_every_second() -> None:  # apart: a slow broker answer delays no tick
        await _update_lag(app, settings.frames_topic)

    @app.timer(interval=settings.feature_push_interval_s)  # type: ignore[untyped-decorator]
    async def _push_features() -> None:
        await worker.flush_features()

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def _assigned(app: faust.App, **_: Any) -> None:
        ASSIGNED.set(1)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def _close(app: faust.App, **_: Any) -> None:
        READY.set(0)
        await worker.stop()

    return app


def _freeze_startup_heap() -> None:
    """Move everything allocated at start (Faust, Feast, pandas, gRPC: ~230k objects)
    out of the collector's sight. A full collection over them took 120-165 ms here,
    a stall of every batch in flight; afterwards it walks only what the stream made."""
    gc.collect()
    gc.freeze()
    started = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        # No prometheus_client call here: a collection can start while this thread holds
        # a metric's (non-reentrant) lock, and observing then deadlocks the worker. The
        # pauses wait in a list that ``record_gc_pauses`` drains from the timer.
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            _GC_PAUSES.append((info["generation"], time.perf_counter() - started[0]))

    gc.callbacks.append(timed)


_GC_PAUSES: collections.deque[tuple[int, float]] = collections.deque(maxlen=10_000)


def record_gc_pauses() -> None:
    """Observe the collector pauses measured since the last call (outside any gc run)."""
    while _GC_PAUSES:
        generation, seconds = _GC_PAUSES.popleft()
        GC_PAUSE.labels(str(generation)).observe(seconds)


async def _update_lag(app: faust.App, topic: str) -> None:
    """Consumer lag per assigned frames partition: log end offset - committed offset.

    The end offsets come from the broker (a ListOffsets request), not the consumer's
    last fetch: a partition paused because the worker's buffer is full (Triton down)
    is not fetched, and its lag must still grow. A broker that does not answer within
    two seconds leaves the gauges as they were."""
    consumer = app.consumer
    partitions = [tp for tp in consumer.assignment() if tp.topic == topic]
    if not partitions:
        return
    try:
        ends = await asyncio.wait_for(consumer.highwaters(*partitions), timeout=2.0)
    except Exception as exc:  # the broker away or the group rebalancing: next second
        log.debug("worker.lag_unknown", error=repr(exc))
        return
    committed = exactly_once.committed_offsets(app)
    for tp in partitions:
        end = ends.get(tp)
        if end is not None:
            LAG.labels(str(tp.partition)).set(max(0, end - (committed.get(tp) or 0)))


def run_worker(settings: Settings) -> None:
    """Run one worker until SIGTERM/SIGINT (Faust flushes, commits and closes)."""
    app = build_app(settings)
    # override_logging=False: keep camstream.observability's set-up (JSON lines in files).
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    if not sys.stdout.isatty():
        worker.spinner = None  # its cursor codes would land in the JSON log file
    worker.execute_from_commandline()
