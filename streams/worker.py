"""The stages of one micro-batch, composed: frames in, predictions, drift and DLQ out.

Per batch (streams.batching runs several at once and publishes them in order):

- work, beside other batches: validate (headers, size, declared dimensions: no pixel
  is decoded before), skip stale frames, then the camera features are read from Feast
  while the frames decode (streams.stages); each camera's features route its frames to
  a model version (streams.routing), and Triton classifies each group, pinned to its
  version (streams.infer: concurrent requests, retried behind a circuit breaker);
- emit, in order: predictions and dead letters (streams.records_out, pure), camera
  activity, and the drift monitor on its own thread;
- deliver, in order: every record to Kafka (streams.publish), then the frames' acks.

``build_worker`` wires the collaborators from Settings; ``FrameWorker`` takes them as
arguments.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import structlog
from prometheus_client import Counter, Histogram

from camstream.errors import ConfigError, DlqKind, FrameRejected
from camstream.featurestore import ROUTING_COLUMNS
from camstream.records import DriftRecord, Enrichment, FrameHeaders, ModelRef
from camstream.settings import Settings
from streams.activity import ACTIVITY_PUSH_SOURCE, ActivityTracker
from streams.batching import BatchPipeline
from streams.breaker import CircuitBreaker
from streams.drift import DRIFT_PUSH_SOURCE, DriftMonitor, drift_feature_row
from streams.enrich import FeatureCache, FeaturePusher, OnlineStore
from streams.infer import ResilientClassifier, RouteGone, TritonPool
from streams.pipeline import Limits, PreparedFrame, validate
from streams.publish import Outgoing, Publisher, Send
from streams.records_out import BatchTiming, build_prediction, dead_letter
from streams.routing import Route, Router
from streams.shadow import ShadowFrame, ShadowLane, candidate_of, sampled
from streams.stages import Decoder, DriftThread, Observation

log = structlog.get_logger(__name__)

CONSUMED = Counter("camstream_worker_frames_consumed_total", "Frames read from Kafka")
DECODED = Counter("camstream_worker_frames_decoded_total", "Frames decoded to model input")
STALE = Counter(
    "camstream_worker_frames_stale_total",
    "Frames skipped as older than max_frame_age_s",
    ["camera"],
)
PREDICTED = Counter("camstream_worker_predictions_total", "Predictions published", ["camera"])
ROUTED = Counter(
    "camstream_worker_routed_frames_total",
    "Frames classified, by the model version that answered",
    ["model", "version"],
)
DLQ = Counter("camstream_worker_dlq_total", "Frames sent to the DLQ", ["kind"])
DRIFT = Counter("camstream_worker_drift_records_total", "Drift records", ["camera", "drift"])
BATCH = Histogram(
    "camstream_worker_batch_size", "Frames per inference batch", buckets=(1, 2, 4, 8, 16, 32, 64)
)
STAGE = Histogram(
    "camstream_worker_stage_seconds",
    "Time per stage: queue per frame (Kafka timestamp to worker), the others per batch "
    "(decode, infer, enrich; order: a finished batch waiting for the one before it; "
    "emit: records and drift; publish: until Kafka has them)",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
E2E = Histogram(
    "camstream_worker_end_to_end_seconds",
    "From capture to publication",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

FeatureRows = dict[str, tuple[dict[str, Any], Enrichment]]


class FrameEvent(Protocol):
    """What the worker needs of a Faust event."""

    headers: Any
    value: Any

    @property
    def message(self) -> Any: ...


@dataclass(frozen=True)
class Topics:
    predictions: str
    drift: str
    dlq: str


@dataclass(frozen=True)
class WorkerConfig:
    topics: Topics
    limits: Limits
    top_k: int
    default_threshold: float
    max_frame_age_s: float
    worker_id: str


@dataclass
class Batch:
    """One micro-batch on its way through: frames classified, and frames rejected."""

    events: Sequence[FrameEvent]
    timing: BatchTiming
    frames: list[tuple[FrameEvent, PreparedFrame]] = field(default_factory=list)
    rejected: list[tuple[FrameEvent, FrameRejected]] = field(default_factory=list)
    # Per classified frame (in ``frames``' order): the version that answered, its row.
    routes: list[Route] = field(default_factory=list)
    probs: list[npt.NDArray[np.float32]] = field(default_factory=list)
    features: FeatureRows = field(default_factory=dict)


class FrameWorker:
    def __init__(
        self,
        config: WorkerConfig,
        *,
        triton: TritonPool,
        classifier: ResilientClassifier,
        router: Router,
        decoder: Decoder,
        features: FeatureCache,
        pusher: FeaturePusher,
        activity: ActivityTracker,
        drift: DriftThread,
        publisher: Publisher,
        depth: int,
        shadow: ShadowLane | None = None,
        publish_guard: asyncio.Lock | None = None,
        on_failure: Any = None,
        closing: Sequence[ThreadPoolExecutor] = (),
    ) -> None:
        self.config = config
        self.triton = triton
        self.classifier = classifier
        self.router = router
        self.decoder = decoder
        self.features = features
        self.pusher = pusher
        self.activity = activity
        self.drift = drift
        self.publisher = publisher
        self.shadow = shadow
        self.batches: BatchPipeline[FrameEvent, Batch, Outgoing] = BatchPipeline(
            self._work,
            self._emit,
            self._deliver,
            depth=depth,
            guard=publish_guard,
            on_failure=on_failure,
            timed=lambda stage, seconds: STAGE.labels(stage).observe(seconds),
        )
        self._closing = closing
        self._started = False

    @property
    def model(self) -> ModelRef:
        """The default model version (cameras that name none)."""
        return self.triton.model_ref

    async def start(self) -> None:
        """Wait for Triton's default model and open Feast (once; later calls return)."""
        if not self._started:
            self.drift.monitor.model = await self.triton.connect()
            await self.features.warm_up()
            self._started = True

    async def submit(self, events: Sequence[FrameEvent], on_published: Any) -> None:
        await self.batches.submit(events, on_published)

    async def process(self, events: Sequence[FrameEvent]) -> None:
        await self.batches.process(events)

    async def stop(self) -> None:
        self.publisher.stopping = True
        await self.batches.stop(timeout_s=5.0)
        if self.shadow is not None:
            await self.shadow.stop()
        try:
            await asyncio.wait_for(self.flush_features(), 5.0)
        except Exception as exc:
            log.warning("feast.final_push_failed", error=repr(exc))
        await self.drift.checkpoint()
        await self.triton.close()
        self.decoder.close()
        self.drift.close()
        for pool in self._closing:
            pool.shutdown(wait=False, cancel_futures=True)

    # Work: beside other batches ---------------------------------------------------------

    async def _work(self, events: Sequence[FrameEvent]) -> Batch:
        batch = Batch(events, BatchTiming(received_s=time.time()))
        valid = self._admit(batch)
        if not valid:
            return batch
        # The Feast read does not depend on decoding: it runs meanwhile. Its features
        # route the frames, so inference waits for both (a cached read is instant).
        (batch.features, enrich_s), decode_s = await asyncio.gather(
            self._read_features({headers.camera_id for _event, headers in valid}),
            self._decode(batch, valid),
        )
        infer_s = await self._classify(batch)
        batch.timing = BatchTiming(batch.timing.received_s, decode_s, infer_s, enrich_s)
        return batch

    async def _decode(self, batch: Batch, valid: list[tuple[FrameEvent, FrameHeaders]]) -> float:
        """Decode the frames into ``batch.frames`` (rejects go to ``batch.rejected``);
        returns the seconds it took."""
        started = time.perf_counter()
        decoded = await self.decoder.decode([(h, event.value) for event, h in valid])
        decode_s = time.perf_counter() - started
        STAGE.labels("decode").observe(decode_s)
        for (event, _headers), result in zip(valid, decoded, strict=True):
            if isinstance(result, FrameRejected):
                batch.rejected.append((event, result))
            elif isinstance(result, Exception):
                batch.rejected.append((event, FrameRejected(DlqKind.DECODE_ERROR, repr(result))))
            elif isinstance(result, BaseException):
                raise result
            else:
                batch.frames.append((event, result))
        DECODED.inc(len(batch.frames))
        return decode_s

    async def _classify(self, batch: Batch) -> float:
        """Route each decoded frame by its camera's features and classify every group
        at its pinned version, the groups at once; returns the seconds it took.
        Frames whose route cannot be served go to ``batch.rejected``."""
        routes: dict[str, Route | FrameRejected] = {}  # per camera: its features route it
        for camera_id, (features, _status) in batch.features.items():
            try:
                route = self.router.resolve(features)
                self.router.labels(route)
                routes[camera_id] = route
            except FrameRejected as exc:
                routes[camera_id] = exc
        groups: dict[Route, list[int]] = {}
        for index, (event, frame) in enumerate(batch.frames):
            routed = routes[frame.headers.camera_id]
            if isinstance(routed, FrameRejected):
                batch.rejected.append((event, routed))
            else:
                groups.setdefault(routed, []).append(index)
        if not groups:
            batch.frames = []
            return 0.0
        started = time.perf_counter()
        results = await asyncio.gather(
            *(self._classify_group(route, batch, rows) for route, rows in groups.items())
        )
        infer_s = time.perf_counter() - started
        STAGE.labels("infer").observe(infer_s)
        answered: dict[int, tuple[Route, npt.NDArray[np.float32]]] = {}
        group_s: dict[Route, float] = {}
        for (route, rows), result in zip(groups.items(), results, strict=True):
            if isinstance(result, FrameRejected):
                batch.rejected += [(batch.frames[i][0], result) for i in rows]
                continue
            probs, group_s[route] = result
            ROUTED.labels(route.model, str(route.version)).inc(len(rows))
            answered.update((i, (route, row)) for i, row in zip(rows, probs, strict=True))
        kept = sorted(answered)
        batch.frames = [batch.frames[i] for i in kept]
        batch.routes = [answered[i][0] for i in kept]
        batch.probs = [answered[i][1] for i in kept]
        if self.shadow is not None:
            self._offer_shadow(batch, group_s)
        return infer_s

    def _offer_shadow(self, batch: Batch, group_s: dict[Route, float]) -> None:
        """Send the sampled frames of cameras with a shadow candidate to it, in the
        background (the batch goes on at once)."""
        assert self.shadow is not None
        wanted: dict[Route, list[ShadowFrame]] = {}
        for (_event, frame), route, row in zip(
            batch.frames, batch.routes, batch.probs, strict=True
        ):
            h = frame.headers
            shadow = candidate_of(batch.features[h.camera_id][0])
            if shadow is None or shadow[0] == route or not sampled(h.camera_id, h.seq, shadow[1]):
                continue
            best = int(np.argmax(row))
            wanted.setdefault(shadow[0], []).append(
                ShadowFrame(
                    h.camera_id,
                    h.seq,
                    h.capture_ts_ms,
                    frame.image,
                    route,
                    self.router.labels(route)[best],
                    min(1.0, max(0.0, float(row[best]))),
                    group_s[route] * 1000.0,
                )
            )
        for candidate, frames in wanted.items():
            self.shadow.offer(candidate, frames)

    async def _classify_group(
        self, route: Route, batch: Batch, rows: list[int]
    ) -> tuple[npt.NDArray[np.float32], float] | FrameRejected:
        """The group's probabilities and the seconds its requests took, or why not."""
        images = np.stack([batch.frames[i][1].image for i in rows])
        started = time.perf_counter()
        BATCH.observe(len(images))
        version = str(route.version)

        async def served() -> bool | None:
            return await self.triton.is_ready(route.model, version)

        try:
            probs = await self.classifier.classify(images, route.model, version, served)
            self.router.check_classes(route, probs.shape[1])
        except RouteGone as exc:
            return FrameRejected(
                DlqKind.NO_MODEL,
                f"model {route} is not loaded in Triton ({exc}): promote it "
                f"(`camstream promote {route}`) or route the camera elsewhere",
            )
        except FrameRejected as exc:
            return exc
        return probs, time.perf_counter() - started

    def _admit(self, batch: Batch) -> list[tuple[FrameEvent, FrameHeaders]]:
        """The batch's frames that go on to decoding: the rest are rejected or stale."""
        received = batch.timing.received_s
        CONSUMED.inc(len(batch.events))
        max_age_ms = self.config.max_frame_age_s * 1000.0
        valid: list[tuple[FrameEvent, FrameHeaders]] = []
        for event in batch.events:
            produced_s = event.message.timestamp
            if produced_s:
                STAGE.labels("queue").observe(max(0.0, received - float(produced_s)))
            try:
                headers = validate(event.headers or {}, event.value, self.config.limits)
            except FrameRejected as exc:
                batch.rejected.append((event, exc))
                continue
            if max_age_ms and received * 1000.0 - headers.capture_ts_ms > max_age_ms:
                STALE.labels(headers.camera_id).inc()
                continue
            valid.append((event, headers))
        return valid

    async def _read_features(self, cameras: set[str]) -> tuple[FeatureRows, float]:
        """The cameras' features (read while the batch decodes and classifies), and how
        long the read took."""
        started = time.perf_counter()
        rows = await self.features.get(cameras)
        enrich_s = time.perf_counter() - started
        STAGE.labels("enrich").observe(enrich_s)
        return rows, enrich_s

    # Emit and deliver: in order -----------------------------------------------------------

    async def _emit(self, batch: Batch) -> list[Outgoing]:
        c = self.config
        out = [self._dead_letter(event, exc) for event, exc in batch.rejected]
        if self.shadow is not None:
            out += self.shadow.drain()
        if not batch.frames:
            return out
        now_ms = time.time_ns() // 1_000_000
        observations = []
        # The features a prediction carries: the camera's, less its routing (``model``).
        published = {
            cid: {k: v for k, v in features.items() if k not in ROUTING_COLUMNS}
            for cid, (features, _status) in batch.features.items()
        }
        for (event, frame), route, row in zip(batch.frames, batch.routes, batch.probs, strict=True):
            h = frame.headers
            _features, status = batch.features[h.camera_id]
            timestamp = event.message.timestamp
            prediction = build_prediction(
                h,
                row,
                self.router.labels(route),
                model=route.ref,
                features=published[h.camera_id],
                enrichment=status,
                default_threshold=c.default_threshold,
                k=c.top_k,
                timing=batch.timing,
                produced_s=float(timestamp) if timestamp else None,
                worker=c.worker_id,
                now_ms=now_ms,
            )
            partition = event.message.partition
            key = h.camera_id.encode()
            value = prediction.to_json_bytes()
            out.append(Outgoing(c.topics.predictions, key, value, None, partition))
            PREDICTED.labels(h.camera_id).inc()
            E2E.observe(prediction.latency.end_to_end_ms / 1000.0)
            self.activity.observe(h.camera_id, h.capture_ts_ms, prediction.label, prediction.score)
            top = prediction.top_k[0]
            observations.append(
                Observation(
                    h.camera_id,
                    h.capture_ts_ms,
                    top.label,
                    top.score,
                    frame.stats,
                    now_ms,
                    partition,
                    route.ref,
                    self.router.reference(route),
                )
            )
        for record, partition in await self.drift.observe(observations):
            out.append(self._drift_record(record, partition))
        return out

    async def _deliver(self, records: list[Outgoing]) -> None:
        """Nothing is acknowledged before everything it produced is in Kafka."""
        started = time.perf_counter()
        await self.publisher.deliver(records)
        STAGE.labels("publish").observe(time.perf_counter() - started)

    def _drift_record(self, record: DriftRecord, partition: int | None = None) -> Outgoing:
        """A drift record to publish (its Feast row is queued for the next push);
        ``partition``: that of the frame that closed the window, if a frame did."""
        DRIFT.labels(record.camera_id, str(record.drift).lower()).inc()
        log.info(
            "drift.window", camera=record.camera_id, drift=record.drift, reasons=record.reasons
        )
        self.pusher.offer(DRIFT_PUSH_SOURCE, drift_feature_row(record))
        key = record.camera_id.encode()
        return Outgoing(self.config.topics.drift, key, record.to_json_bytes(), None, partition)

    def _dead_letter(self, event: FrameEvent, exc: FrameRejected) -> Outgoing:
        DLQ.labels(str(exc.kind)).inc()
        headers = dict(event.headers or {})
        log.warning(
            "frame.rejected",
            camera=headers.get("camera-id", b"?").decode(errors="replace"),
            seq=headers.get("seq", b"?").decode(errors="replace"),
            kind=str(exc.kind),
            reason=str(exc),
        )
        message = event.message
        return dead_letter(
            self.config.topics.dlq, message.key, event.value, headers, message.partition, exc
        )

    # Time-based work ----------------------------------------------------------------------

    async def tick(self, now_ms: int) -> None:
        """Once a second: drift windows due by time, silent cameras, checkpoints."""
        records = await self.drift.tick(now_ms)
        out = [self._drift_record(record) for record in records]
        if self.shadow is not None:
            out += self.shadow.drain()
        await self.publisher.deliver(out)

    async def flush_features(self) -> None:
        """Push the changed cameras' activity and drift rows to Feast (off the loop)."""
        for row in self.activity.rows(time.time_ns() // 1_000_000):
            self.pusher.offer(ACTIVITY_PUSH_SOURCE, row)
        await self.pusher.flush()


def build_worker(
    settings: Settings,
    send: Send,
    publish_guard: asyncio.Lock | None = None,
    on_failure: Any = None,
) -> FrameWorker:
    """The worker the app runs: every collaborator from settings."""
    # One client per listed server, each request to the least busy healthy one.
    triton = TritonPool.connect_to(
        settings.triton_grpc_addresses,
        settings.model_name,
        settings.model_version,
        settings.infer_timeout_s,
        reconnect_max_s=settings.triton_retry_max_s,
    )
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    router = Router(
        settings.model_repo,
        settings.model_name,
        settings.model_version,
        reference_override=settings.drift_reference,
    )
    try:  # a repository that cannot serve the default model stops the worker here
        router.labels(router.default_route())
    except FrameRejected as exc:
        raise ConfigError(f"{exc}; or set CAMSTREAM_MODEL_NAME / CAMSTREAM_MODEL_REPO") from exc
    feast_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feast")
    store = OnlineStore(settings.feast_repo_path)
    config = WorkerConfig(
        topics=Topics(settings.predictions_topic, settings.drift_topic, settings.dlq_topic),
        limits=Limits(settings.max_frame_bytes, settings.max_frame_pixels),
        top_k=settings.top_k,
        default_threshold=settings.default_threshold,
        max_frame_age_s=settings.max_frame_age_s,
        worker_id=worker_id,
    )
    return FrameWorker(
        config,
        triton=triton,
        classifier=ResilientClassifier(
            triton,
            CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s),
            settings.infer_inflight,
            settings.triton_retry_max_s,
        ),
        router=router,
        decoder=Decoder(settings.decode_threads),
        features=FeatureCache(
            store, settings.feature_cache_ttl_s, settings.feature_timeout_s, feast_pool
        ),
        pusher=FeaturePusher(store, feast_pool),
        activity=ActivityTracker(settings.activity_window_s),
        drift=DriftThread(DriftMonitor.from_settings(settings, triton.model_ref, worker_id)),
        publisher=Publisher(
            send, settings.publish_retry_max_s, retry=settings.delivery != "exactly_once"
        ),
        depth=settings.pipeline_depth,
        shadow=ShadowLane(
            triton.classify,
            router,
            settings.shadow_topic,
            worker_id,
            window_pairs=settings.shadow_window_pairs,
            inflight=settings.shadow_inflight,
        ),
        publish_guard=publish_guard,
        on_failure=on_failure,
        closing=(feast_pool,),
    )
