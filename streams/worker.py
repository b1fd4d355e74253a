"""The work done on micro-batches of frames, between the agent and the topics.

Each micro-batch runs as its own task, up to ``pipeline_depth`` at once, so the decode
of one batch overlaps the inference of the one before it. Batches publish strictly in
the order they were taken (per-camera order holds), and a batch's frames are acked
(``on_published``) only once everything they produced is acknowledged by Kafka.

Per batch: validate (headers, size, declared dimensions: no pixel is decoded before),
skip stale frames, decode in a thread pool (OpenCV releases the GIL), classify through
Triton (``infer_inflight`` concurrent requests, retried with backoff behind a circuit
breaker, so an outage stalls the agent and Kafka keeps the backlog), enrich from the
feature cache, publish predictions, drift records and dead letters.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import structlog
from prometheus_client import Counter, Gauge, Histogram

from camstream.records import DriftRecord, FrameHeaders, Latency, Prediction
from camstream.settings import Settings
from streams.activity import ACTIVITY_PUSH_SOURCE, ActivityTracker
from streams.breaker import BreakerState, CircuitBreaker, CircuitOpen
from streams.drift import (
    DRIFT_PUSH_SOURCE,
    DriftMonitor,
    drift_feature_row,
)
from streams.enrich import FeatureCache, FeaturePusher, OnlineStore
from streams.infer import InferenceError, TritonClassifier
from streams.pipeline import (
    FrameRejected,
    Limits,
    PreparedFrame,
    decide,
    load_labels,
    prepare,
    threshold_for,
    top_k,
    validate,
)
from streams.publish import Outgoing, Publisher, Send

log = structlog.get_logger(__name__)

CONSUMED = Counter("camstream_worker_frames_consumed_total", "Frames read from Kafka")
DECODED = Counter("camstream_worker_frames_decoded_total", "Frames decoded to model input")
STALE = Counter(
    "camstream_worker_frames_stale_total",
    "Frames skipped as older than max_frame_age_s",
    ["camera"],
)
PREDICTED = Counter("camstream_worker_predictions_total", "Predictions published", ["camera"])
DLQ = Counter("camstream_worker_dlq_total", "Frames sent to the DLQ", ["kind"])
DRIFT = Counter("camstream_worker_drift_records_total", "Drift records", ["camera", "drift"])
TRITON_FAILURES = Counter(
    "camstream_worker_triton_failures_total",
    "Failed or refused Triton batch attempts",
    ["reason"],
)
BATCH = Histogram(
    "camstream_worker_batch_size", "Frames per inference batch", buckets=(1, 2, 4, 8, 16, 32, 64)
)
INFLIGHT_BATCHES = Gauge("camstream_worker_inflight_batches", "Micro-batches being processed")
INFLIGHT_REQUESTS = Gauge("camstream_worker_inflight_requests", "Triton requests in flight")
BREAKER = Gauge("camstream_worker_breaker_state", "Triton breaker: 0 closed, 1 half-open, 2 open")
STAGE = Histogram(
    "camstream_worker_stage_seconds",
    "Time per stage: queue per frame (Kafka timestamp to worker), the others per batch",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
E2E = Histogram(
    "camstream_worker_end_to_end_seconds",
    "From capture to publication",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class FrameEvent(Protocol):
    """What the worker needs of a Faust event."""

    headers: Any
    value: Any

    @property
    def message(self) -> Any: ...


OnPublished = Callable[[Sequence[Any]], Awaitable[None]]


@dataclass(frozen=True)
class Topics:
    predictions: str
    drift: str
    dlq: str


@dataclass
class Batch:
    """One micro-batch on its way through: frames to classify, and what goes out."""

    events: Sequence[FrameEvent]
    received: float
    frames: list[tuple[FrameEvent, PreparedFrame]]
    rejected: list[tuple[FrameEvent, FrameRejected]]
    decode_s: float = 0.0
    infer_s: float = 0.0


DECODE_THREADS = 2


def _prepare_all(frames: Sequence[tuple[FrameEvent, FrameHeaders]]) -> list[Any]:
    """Decode frames one after another on a pool thread; a frame's exception is its
    result (as with ``gather(return_exceptions=True)``), so one bad frame spoils nothing."""
    out: list[Any] = []
    for event, headers in frames:
        try:
            out.append(prepare(headers, event.value))
        except BaseException as exc:
            out.append(exc)
    return out


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class BatchProcessor:
    def __init__(
        self,
        settings: Settings,
        send: Send,
        publish_guard: asyncio.Lock | None = None,
        on_failure: Callable[[BaseException], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        # Called once when a micro-batch fails for good (its frames stay uncommitted);
        # the app stops the worker, so that a restart takes them up again.
        self.on_failure = on_failure
        # Held from a batch's first record sent to its frames acked. With exactly-once
        # delivery the transaction commit takes it too, so that no transaction commits
        # a batch's records without the batch's offsets.
        self.publish_guard = publish_guard or asyncio.Lock()
        self.publisher = Publisher(
            send, settings.publish_retry_max_s, retry=settings.delivery != "exactly_once"
        )
        self.topics = Topics(settings.predictions_topic, settings.drift_topic, settings.dlq_topic)
        self.limits = Limits(settings.max_frame_bytes, settings.max_frame_pixels)
        self.labels = load_labels(settings.labels_path)
        self.decode_pool = ThreadPoolExecutor(
            max_workers=DECODE_THREADS, thread_name_prefix="decode"
        )
        self.feast_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feast")
        store = OnlineStore(settings.feast_repo_path)
        self.features = FeatureCache(
            store, settings.feature_cache_ttl_s, settings.feature_timeout_s, self.feast_pool
        )
        self.pusher = FeaturePusher(store, self.feast_pool)
        self.activity = ActivityTracker(settings.activity_window_s)
        self.classifier = TritonClassifier(
            settings.triton_grpc,
            settings.model_name,
            settings.model_version,
            settings.infer_timeout_s,
            reconnect_max_s=settings.triton_retry_max_s,
        )
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.drift = DriftMonitor.from_settings(settings, self.classifier.model_ref, self.worker_id)
        self._slots = asyncio.Semaphore(settings.pipeline_depth)
        self._tail: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._stopping = False
        self._started = False

    async def start(self) -> None:
        """Wait for Triton's model and open Feast (once; later calls return at once)."""
        if not self._started:
            self.drift.model = await self.classifier.connect()
            await self.features.warm_up()
            self._started = True

    async def drain(self, timeout_s: float) -> None:
        """Wait for the batches in flight to publish (or give up after ``timeout_s``)."""
        if self._tail is not None and not self._tail.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._tail), timeout_s)
            except Exception as exc:
                log.warning("worker.drain_incomplete", error=repr(exc))

    async def stop(self) -> None:
        self._stopping = True
        self.publisher.stopping = True
        await self.drain(timeout_s=5.0)
        try:
            await asyncio.wait_for(self.flush_features(), 5.0)
        except Exception as exc:
            log.warning("feast.final_push_failed", error=repr(exc))
        self.drift.checkpoint()
        await self.classifier.close()
        self.decode_pool.shutdown(wait=True)
        self.feast_pool.shutdown(wait=False, cancel_futures=True)

    # The pipeline ---------------------------------------------------------------------

    async def submit(self, events: Sequence[FrameEvent], on_published: OnPublished) -> None:
        """Start one micro-batch; returns once a pipeline slot is free for the next."""
        if self._failure is not None:
            raise RuntimeError("a micro-batch failed to publish") from self._failure
        await self._slots.acquire()
        INFLIGHT_BATCHES.inc()
        self._tail = asyncio.create_task(self._run(events, self._tail, on_published))

    async def process(self, events: Sequence[FrameEvent]) -> None:
        """One micro-batch, start to finish (tests and tools; the agent uses submit)."""

        async def published(_events: Sequence[Any]) -> None:
            return None

        await self.submit(events, published)
        assert self._tail is not None
        await self._tail

    async def _run(
        self,
        events: Sequence[FrameEvent],
        previous: asyncio.Task[None] | None,
        on_published: OnPublished,
    ) -> None:
        try:
            batch = await self._prepare(events)
            probs = await self._classify_batch(batch)
            cameras = {frame.headers.camera_id for _event, frame in batch.frames}
            started = time.perf_counter()
            features = await self.features.get(cameras) if cameras else {}
            enrich_s = time.perf_counter() - started
            STAGE.labels("enrich").observe(enrich_s)
            if previous is not None:
                await asyncio.wait([previous])  # publish in the order batches were taken
            if self._failure is not None:  # nothing is published after a failed batch
                raise RuntimeError("an earlier micro-batch failed") from self._failure
            started = time.perf_counter()
            async with self.publish_guard:
                await self._publish(batch, probs, features, enrich_s)
                STAGE.labels("publish").observe(time.perf_counter() - started)
                await on_published(events)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            first = self._failure is None
            if first:
                self._failure = exc
                log.exception("worker.batch_failed", frames=len(events))
                if self.on_failure is not None and not self._stopping:
                    await self.on_failure(exc)
            raise
        finally:
            INFLIGHT_BATCHES.dec()
            self._slots.release()

    async def _prepare(self, events: Sequence[FrameEvent]) -> Batch:
        received = time.time()
        CONSUMED.inc(len(events))
        max_age_ms = self.settings.max_frame_age_s * 1000.0
        valid: list[tuple[FrameEvent, FrameHeaders]] = []
        batch = Batch(events, received, [], [])
        for event in events:
            produced_s = event.message.timestamp
            if produced_s:
                STAGE.labels("queue").observe(max(0.0, received - float(produced_s)))
            try:
                headers = validate(event.headers or {}, event.value, self.limits)
            except FrameRejected as exc:
                batch.rejected.append((event, exc))
                continue
            if max_age_ms and received * 1000.0 - headers.capture_ts_ms > max_age_ms:
                STALE.labels(headers.camera_id).inc()
                continue
            valid.append((event, headers))
        if not valid:
            return batch
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        # One task per decode thread (frames dealt round-robin), not one per frame: each
        # finished task wakes the event loop and takes the GIL back from the decoders.
        lanes = min(DECODE_THREADS, len(valid))
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(self.decode_pool, _prepare_all, valid[lane::lanes])
                for lane in range(lanes)
            )
        )
        decoded: list[Any] = [None] * len(valid)
        for lane, part in enumerate(parts):
            decoded[lane::lanes] = part
        batch.decode_s = time.perf_counter() - started
        STAGE.labels("decode").observe(batch.decode_s)
        for (event, _headers), result in zip(valid, decoded, strict=True):
            if isinstance(result, FrameRejected):
                batch.rejected.append((event, result))
            elif isinstance(result, Exception):
                batch.rejected.append((event, FrameRejected("decode_error", repr(result))))
            elif isinstance(result, BaseException):
                raise result
            else:
                batch.frames.append((event, result))
        DECODED.inc(len(batch.frames))
        return batch

    async def _classify_batch(self, batch: Batch) -> np.ndarray:
        if not batch.frames:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        images = np.stack([frame.image for _event, frame in batch.frames])
        BATCH.observe(len(images))
        started = time.perf_counter()
        probs = await self._classify(images)
        batch.infer_s = time.perf_counter() - started
        STAGE.labels("infer").observe(batch.infer_s)
        return probs

    async def _classify(self, images: np.ndarray) -> np.ndarray:
        """Classify, waiting out a Triton outage: consumption pauses, nothing is lost.

        The batch goes as ``infer_inflight`` concurrent requests, so every Triton model
        instance has work and the dynamic batcher regroups them as it sees fit. Failed
        attempts back off exponentially (capped); the breaker stops all batches from
        hammering a server that is down, and lets one trial through now and then.
        """
        parts = min(self.settings.infer_inflight, len(images))
        delay = 0.1
        while True:
            try:
                self.breaker.before_call()
            except CircuitOpen:
                TRITON_FAILURES.labels("breaker_open").inc()
                BREAKER.set(int(self.breaker.state))
                await asyncio.sleep(max(self.breaker.retry_in(), 0.05))
                continue
            try:
                INFLIGHT_REQUESTS.inc(parts)
                try:
                    chunks = np.array_split(images, parts) if parts > 1 else [images]
                    results = await asyncio.gather(*(self.classifier.classify(c) for c in chunks))
                finally:
                    INFLIGHT_REQUESTS.dec(parts)
            except InferenceError as exc:
                self.breaker.record_failure()
                BREAKER.set(int(self.breaker.state))
                TRITON_FAILURES.labels("error").inc()
                log.warning("triton.unavailable", error=str(exc)[:300], retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.triton_retry_max_s)
                continue
            if self.breaker.state is not BreakerState.CLOSED:
                log.info("triton.recovered")
            self.breaker.record_success()
            BREAKER.set(0)
            return np.concatenate(results) if len(results) > 1 else results[0]

    async def _publish(
        self,
        batch: Batch,
        probs: np.ndarray,
        features: dict[str, Any],
        enrich_s: float,
    ) -> None:
        out = [self._dead_letter(event, exc) for event, exc in batch.rejected]
        model = self.classifier.model_ref
        for (event, frame), row in zip(batch.frames, probs, strict=True):
            h = frame.headers
            camera_features, status = features[h.camera_id]
            threshold = threshold_for(camera_features, self.settings.default_threshold)
            top = top_k(row, self.labels, self.settings.top_k)
            label, score = decide(top, threshold)
            now_ms = time.time_ns() // 1_000_000
            produced_s = float(event.message.timestamp or batch.received)
            prediction = Prediction(
                dedup_key=f"{h.camera_id}:{h.seq}",
                camera_id=h.camera_id,
                seq=h.seq,
                capture_ts_ms=h.capture_ts_ms,
                model=model,
                label=label,
                score=score,
                threshold=threshold,
                top_k=top,
                features=camera_features,
                enrichment=status,
                latency=Latency(
                    queue_ms=_ms(max(0.0, batch.received - produced_s)),
                    decode_ms=_ms(batch.decode_s),
                    infer_ms=_ms(batch.infer_s),
                    enrich_ms=_ms(enrich_s),
                    end_to_end_ms=float(max(0, now_ms - h.capture_ts_ms)),
                ),
                worker=self.worker_id,
                published_ts_ms=now_ms,
            )
            key = h.camera_id.encode()
            partition = event.message.partition
            out.append(
                Outgoing(self.topics.predictions, key, prediction.to_json_bytes(), None, partition)
            )
            PREDICTED.labels(h.camera_id).inc()
            E2E.observe(prediction.latency.end_to_end_ms / 1000.0)
            self.activity.observe(h.camera_id, h.capture_ts_ms, label, score)
            records = self.drift.observe(
                h.camera_id,
                h.capture_ts_ms,
                top[0].label,
                top[0].score,
                frame.stats,
                received_ms=now_ms,
            )
            out += self._drift_records(records, partition)
        # Nothing is acknowledged before everything it produced is in Kafka.
        await self.publisher.deliver(out)

    def _drift_records(
        self, records: list[DriftRecord], partition: int | None = None
    ) -> list[Outgoing]:
        """Drift records to publish (their Feast rows are queued for the next push);
        ``partition``: that of the frame that closed the window, if a frame did."""
        out = []
        for record in records:
            DRIFT.labels(record.camera_id, str(record.drift).lower()).inc()
            log.info(
                "drift.window", camera=record.camera_id, drift=record.drift, reasons=record.reasons
            )
            key = record.camera_id.encode()
            out.append(Outgoing(self.topics.drift, key, record.to_json_bytes(), None, partition))
            self.pusher.offer(DRIFT_PUSH_SOURCE, drift_feature_row(record))
        return out

    async def tick(self, now_ms: int) -> None:
        """Time-based work, once a second: drift windows due by time."""
        await self.publisher.deliver(self._drift_records(self.drift.tick(now_ms)))

    async def flush_features(self) -> None:
        """Push the changed cameras' activity and drift rows to Feast (off the loop)."""
        for row in self.activity.rows(time.time_ns() // 1_000_000):
            self.pusher.offer(ACTIVITY_PUSH_SOURCE, row)
        await self.pusher.flush()

    def _dead_letter(self, event: FrameEvent, exc: FrameRejected) -> Outgoing:
        DLQ.labels(exc.kind).inc()
        headers = dict(event.headers or {})
        log.warning(
            "frame.rejected",
            camera=headers.get("camera-id", b"?").decode(errors="replace"),
            seq=headers.get("seq", b"?").decode(errors="replace"),
            kind=exc.kind,
            reason=str(exc),
        )
        out = [(k, v) for k, v in headers.items() if k not in ("error-kind", "error-message")]
        out += [("error-kind", exc.kind.encode()), ("error-message", str(exc).encode())]
        value = event.value or b""
        return Outgoing(self.topics.dlq, event.message.key, value, out, event.message.partition)
