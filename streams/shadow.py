"""Shadow traffic: a candidate version classifies a sample of a camera's frames beside
the champion, off the champion's path, and camstream.shadow gets the pairs and their
per-window agreement.

A camera's metadata names the candidate (``shadow_model``, ``NAME:VERSION``) and the
share of its frames to send (``shadow_fraction``; a frame is sampled by a hash of its
camera and seq, so a redelivered frame is sampled the same way). Once the champion has
answered for a batch, its sampled frames go to the candidate in a task of their own:
the batch does not wait for it. At most ``inflight`` candidate requests run at once;
frames sampled while the lane is full are skipped and counted, so a slow candidate
costs the champion nothing but the server time it already has. A failed candidate
request is counted, never retried, and never opens the champion's breaker.

Pairs and summaries queue here and leave with the next batch's records or the next
tick (``drain``), so they go through the same delivery (and transactions) as the rest.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import structlog
from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge

from camstream.errors import CamstreamError, FrameRejected
from camstream.records import LabelPair, ShadowPair, ShadowSummary
from streams.publish import Outgoing
from streams.routing import Route, Router

log = structlog.get_logger(__name__)

PAIRS = MetricCounter(
    "camstream_worker_shadow_pairs_total", "Frames classified by a shadow candidate", ["camera"]
)
FAILURES = MetricCounter(
    "camstream_worker_shadow_failures_total", "Shadow frames whose request failed", ["camera"]
)
SKIPPED = MetricCounter(
    "camstream_worker_shadow_skipped_total", "Shadow frames skipped: lane full", ["camera"]
)
AGREEMENT = Gauge(
    "camstream_worker_shadow_agreement", "Agreement of the last shadow window", ["camera"]
)

Classify = Callable[[npt.NDArray[np.uint8], str, str], Awaitable[npt.NDArray[np.float32]]]


def sampled(camera_id: str, seq: int, fraction: float) -> bool:
    """Whether this frame goes to the shadow candidate (stable across redeliveries)."""
    if fraction <= 0:
        return False
    if fraction >= 1:
        return True
    return zlib.crc32(f"{camera_id}:{seq}".encode()) < fraction * 2**32


def candidate_of(features: dict[str, object]) -> tuple[Route, float] | None:
    """The camera's shadow candidate and fraction, from its features; None if none."""
    text = str(features.get("shadow_model") or "")
    fraction = features.get("shadow_fraction")
    if not text or not isinstance(fraction, int | float) or fraction <= 0:
        return None
    try:
        return Route.parse(text), float(fraction)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class ShadowFrame:
    """One sampled frame with the champion's answer for it."""

    camera_id: str
    seq: int
    capture_ts_ms: int
    image: npt.NDArray[np.uint8]
    champion: Route
    champion_label: str
    champion_score: float
    champion_infer_ms: float


@dataclass
class _Window:
    index: int = 0
    pairs: list[ShadowPair] = field(default_factory=list)
    failures: int = 0
    skipped: int = 0

    @property
    def size(self) -> int:
        return len(self.pairs) + self.failures + self.skipped


class ShadowLane:
    def __init__(
        self,
        classify: Classify,
        router: Router,
        topic: str,
        worker_id: str,
        *,
        window_pairs: int,
        inflight: int,
    ) -> None:
        self._classify = classify
        self._router = router
        self.topic = topic
        self.worker_id = worker_id
        self.window_pairs = window_pairs
        self.inflight = inflight
        self._running: set[asyncio.Task[None]] = set()
        self._windows: dict[tuple[str, Route], _Window] = {}
        self._ready: list[Outgoing] = []

    def offer(self, candidate: Route, frames: Sequence[ShadowFrame]) -> None:
        """Send ``frames`` to ``candidate`` in the background, or count them skipped."""
        if not frames:
            return
        if len(self._running) >= self.inflight:
            for frame in frames:
                self._window(frame.camera_id, candidate).skipped += 1
                SKIPPED.labels(frame.camera_id).inc()
                self._maybe_close(frame.camera_id, frame.champion, candidate)
            return
        task = asyncio.get_running_loop().create_task(self._run(candidate, list(frames)))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, candidate: Route, frames: list[ShadowFrame]) -> None:
        images = np.stack([f.image for f in frames])
        started = time.perf_counter()
        try:
            probs = await self._classify(images, candidate.model, str(candidate.version))
            self._router.check_classes(candidate, probs.shape[1])
            labels = self._router.labels(candidate)
        except (CamstreamError, FrameRejected) as exc:
            log.warning("shadow.failed", candidate=str(candidate), error=str(exc)[:300])
            for frame in frames:
                self._window(frame.camera_id, candidate).failures += 1
                FAILURES.labels(frame.camera_id).inc()
                self._maybe_close(frame.camera_id, frame.champion, candidate)
            return
        candidate_ms = (time.perf_counter() - started) * 1000.0
        now_ms = time.time_ns() // 1_000_000
        for frame, row in zip(frames, probs, strict=True):
            best = int(np.argmax(row))
            window = self._window(frame.camera_id, candidate)
            pair = ShadowPair(
                camera_id=frame.camera_id,
                seq=frame.seq,
                capture_ts_ms=frame.capture_ts_ms,
                window=window.index,
                champion=frame.champion.ref,
                candidate=candidate.ref,
                champion_label=frame.champion_label,
                champion_score=frame.champion_score,
                candidate_label=labels[best],
                candidate_score=min(1.0, max(0.0, float(row[best]))),
                agree=labels[best] == frame.champion_label,
                champion_infer_ms=round(frame.champion_infer_ms, 3),
                candidate_infer_ms=round(candidate_ms, 3),
                worker=self.worker_id,
                published_ts_ms=now_ms,
            )
            window.pairs.append(pair)
            PAIRS.labels(frame.camera_id).inc()
            self._ready.append(self._outgoing(frame.camera_id, pair.to_json_bytes()))
            self._maybe_close(frame.camera_id, frame.champion, candidate)

    def _window(self, camera_id: str, candidate: Route) -> _Window:
        return self._windows.setdefault((camera_id, candidate), _Window())

    def _maybe_close(self, camera_id: str, champion: Route, candidate: Route) -> None:
        window = self._window(camera_id, candidate)
        if window.size < self.window_pairs:
            return
        summary = summarize(
            camera_id,
            window.index,
            champion,
            candidate,
            window.pairs,
            window.failures,
            window.skipped,
            self.worker_id,
        )
        if summary.agreement_rate is not None:
            AGREEMENT.labels(camera_id).set(summary.agreement_rate)
        self._ready.append(self._outgoing(camera_id, summary.to_json_bytes()))
        self._windows[(camera_id, candidate)] = _Window(index=window.index + 1)

    def _outgoing(self, camera_id: str, value: bytes) -> Outgoing:
        return Outgoing(self.topic, camera_id.encode(), value, None, None)

    def drain(self) -> list[Outgoing]:
        """The pairs and summaries made since the last call, to publish."""
        ready, self._ready = self._ready, []
        return ready

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Let in-flight candidate requests finish (or cancel them after the timeout)."""
        if self._running:
            _done, pending = await asyncio.wait(set(self._running), timeout=timeout_s)
            for task in pending:
                task.cancel()


def summarize(
    camera_id: str,
    window: int,
    champion: Route,
    candidate: Route,
    pairs: Sequence[ShadowPair],
    failures: int,
    skipped: int,
    worker_id: str,
) -> ShadowSummary:
    """One window's figures, every one recomputable from its pairs."""
    confusion = Counter((p.champion_label, p.candidate_label) for p in pairs)
    champion_ms = [p.champion_infer_ms for p in pairs]
    candidate_ms = [p.candidate_infer_ms for p in pairs]
    champion_p50 = statistics.median(champion_ms) if pairs else None
    candidate_p50 = statistics.median(candidate_ms) if pairs else None
    return ShadowSummary(
        camera_id=camera_id,
        window=window,
        champion=champion.ref,
        candidate=candidate.ref,
        window_start_ms=min((p.capture_ts_ms for p in pairs), default=0),
        window_end_ms=max((p.capture_ts_ms for p in pairs), default=0),
        pairs=len(pairs),
        agreement_rate=sum(p.agree for p in pairs) / len(pairs) if pairs else None,
        confusion=[
            LabelPair(champion_label=a, candidate_label=b, count=n)
            for (a, b), n in sorted(confusion.items(), key=lambda item: (-item[1], item[0]))
        ],
        confidence_shift=(
            statistics.fmean(p.candidate_score - p.champion_score for p in pairs) if pairs else None
        ),
        champion_infer_ms_p50=champion_p50,
        candidate_infer_ms_p50=candidate_p50,
        latency_ratio=(
            candidate_p50 / champion_p50 if champion_p50 and candidate_p50 is not None else None
        ),
        failures=failures,
        skipped=skipped,
        worker=worker_id,
        published_ts_ms=time.time_ns() // 1_000_000,
    )
