"""The work done on one micro-batch of frames, between the agent and the topics.

Validation is inline (cheap, header-only); decoding runs in a thread pool (OpenCV
releases the GIL); inference is one async gRPC call per batch; enrichment reads a
per-camera cache. The batch's records are all acknowledged by Kafka before this
returns, and only then does Faust ack (and later commit) the frames.
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
from prometheus_client import Counter, Histogram

from camstream.records import FrameHeaders, Latency, Prediction
from camstream.settings import Settings
from streams.drift import DriftMonitor, ReferenceProfile, Thresholds
from streams.enrich import FeatureCache
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

log = structlog.get_logger(__name__)

CONSUMED = Counter("camstream_worker_frames_consumed_total", "Frames read from Kafka")
PREDICTED = Counter("camstream_worker_predictions_total", "Predictions published", ["camera"])
DLQ = Counter("camstream_worker_dlq_total", "Frames sent to the DLQ", ["kind"])
DRIFT = Counter("camstream_worker_drift_records_total", "Drift records", ["camera", "drift"])
BATCH = Histogram(
    "camstream_worker_batch_size", "Frames per inference batch", buckets=(1, 2, 4, 8, 16, 32, 64)
)
STAGE = Histogram(
    "camstream_worker_stage_seconds",
    "Time per stage per batch",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
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


Send = Callable[[str, bytes | None, bytes, list[tuple[str, bytes]] | None], Awaitable[Any]]


@dataclass(frozen=True)
class Topics:
    predictions: str
    drift: str
    dlq: str


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class BatchProcessor:
    def __init__(self, settings: Settings, send: Send) -> None:
        self.settings = settings
        self.send = send
        self.topics = Topics(settings.predictions_topic, settings.drift_topic, settings.dlq_topic)
        self.limits = Limits(settings.max_frame_bytes, settings.max_frame_pixels)
        self.labels = load_labels(settings.labels_path)
        self.decode_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")
        self.feast_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feast")
        self.features = FeatureCache(
            settings.feast_repo_path, settings.feature_cache_ttl_s, self.feast_pool
        )
        self.classifier = TritonClassifier(
            settings.triton_grpc,
            settings.model_name,
            settings.model_version,
            settings.infer_timeout_s,
        )
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.drift = DriftMonitor(
            ReferenceProfile.load(settings.reference_profile_path),
            Thresholds(
                psi=settings.drift_psi_threshold,
                js=settings.drift_js_threshold,
                ks_pvalue=settings.drift_ks_pvalue,
                confidence_shift=settings.drift_confidence_shift,
            ),
            settings.drift_window_frames,
            self.classifier.model_ref,
            self.worker_id,
        )
        self._started = False

    async def start(self) -> None:
        """Wait for Triton's model (once; later calls return at once)."""
        if not self._started:
            self.drift.model = await self.classifier.connect()
            self._started = True

    async def stop(self) -> None:
        await self.classifier.close()
        self.decode_pool.shutdown(wait=True)
        self.feast_pool.shutdown(wait=True)

    async def process(self, events: Sequence[FrameEvent]) -> None:
        received = time.time()
        CONSUMED.inc(len(events))
        pending: list[Awaitable[Any]] = []
        valid: list[tuple[FrameEvent, FrameHeaders]] = []
        for event in events:
            try:
                valid.append((event, validate(event.headers or {}, event.value, self.limits)))
            except FrameRejected as exc:
                pending.append(self._dead_letter(event, exc))

        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        decoded = await asyncio.gather(
            *(loop.run_in_executor(self.decode_pool, prepare, h, e.value) for e, h in valid),
            return_exceptions=True,
        )
        decode_s = time.perf_counter() - started
        STAGE.labels("decode").observe(decode_s)
        frames: list[tuple[FrameEvent, PreparedFrame]] = []
        for (event, _headers), result in zip(valid, decoded, strict=True):
            if isinstance(result, FrameRejected):
                pending.append(self._dead_letter(event, result))
            elif isinstance(result, BaseException):
                pending.append(
                    self._dead_letter(event, FrameRejected("decode_error", repr(result)))
                )
            else:
                frames.append((event, result))

        if frames:
            pending += await self._classify_and_publish(frames, received, decode_s)
        # Nothing is acknowledged before everything it produced is in Kafka.
        await asyncio.gather(*pending)

    async def _classify_and_publish(
        self,
        frames: list[tuple[FrameEvent, PreparedFrame]],
        received: float,
        decode_s: float,
    ) -> list[Awaitable[Any]]:
        batch = np.stack([frame.image for _event, frame in frames])
        BATCH.observe(len(frames))
        started = time.perf_counter()
        probs = await self._classify(batch)
        infer_s = time.perf_counter() - started
        STAGE.labels("infer").observe(infer_s)

        started = time.perf_counter()
        cameras = {frame.headers.camera_id for _event, frame in frames}
        features = await self.features.get(cameras)
        enrich_s = time.perf_counter() - started
        STAGE.labels("enrich").observe(enrich_s)

        pending: list[Awaitable[Any]] = []
        model = self.classifier.model_ref
        for (event, frame), row in zip(frames, probs, strict=True):
            h = frame.headers
            camera_features, status = features[h.camera_id]
            threshold = threshold_for(camera_features, self.settings.default_threshold)
            top = top_k(row, self.labels, self.settings.top_k)
            label, score = decide(top, threshold)
            now_ms = time.time_ns() // 1_000_000
            produced_s = float(event.message.timestamp or received)
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
                    queue_ms=_ms(max(0.0, received - produced_s)),
                    decode_ms=_ms(decode_s),
                    infer_ms=_ms(infer_s),
                    enrich_ms=_ms(enrich_s),
                    end_to_end_ms=float(max(0, now_ms - h.capture_ts_ms)),
                ),
                worker=self.worker_id,
                published_ts_ms=now_ms,
            )
            pending.append(
                await self.send(
                    self.topics.predictions, h.camera_id.encode(), prediction.to_json_bytes(), None
                )
            )
            PREDICTED.labels(h.camera_id).inc()
            E2E.observe(prediction.latency.end_to_end_ms / 1000.0)
            pending += await self._observe_drift(frame, top[0].label, top[0].score)
        return pending

    async def _classify(self, batch: np.ndarray) -> np.ndarray:
        """Classify, waiting out a Triton outage: consumption pauses, nothing is lost.

        The batch goes as ``infer_inflight`` concurrent requests, so every Triton model
        instance has work and the dynamic batcher regroups them as it sees fit.
        """
        parts = min(self.settings.infer_inflight, len(batch))
        delay = 0.5
        while True:
            try:
                if parts == 1:
                    return await self.classifier.classify(batch)
                chunks = np.array_split(batch, parts)
                results = await asyncio.gather(*(self.classifier.classify(c) for c in chunks))
                return np.concatenate(results)
            except InferenceError as exc:
                log.warning("triton.unavailable", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _observe_drift(
        self, frame: PreparedFrame, label: str, score: float
    ) -> list[Awaitable[Any]]:
        h = frame.headers
        pending = []
        for record in self.drift.observe(h.camera_id, h.capture_ts_ms, label, score, frame.stats):
            DRIFT.labels(record.camera_id, str(record.drift).lower()).inc()
            log.info(
                "drift.window", camera=record.camera_id, drift=record.drift, reasons=record.reasons
            )
            key = record.camera_id.encode()
            pending.append(await self.send(self.topics.drift, key, record.to_json_bytes(), None))
        return pending

    async def _dead_letter(self, event: FrameEvent, exc: FrameRejected) -> Any:
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
        fut = await self.send(self.topics.dlq, event.message.key, event.value or b"", out)
        return await fut
