"""The worker's thread-backed stages: decoding frames, and drift bookkeeping.

Both keep blocking work off the event loop. OpenCV releases the GIL while it decodes,
so decoding runs on ``threads`` pool threads, frames dealt round-robin with one task
per thread (one per frame would wake the loop, and take the GIL back from the
decoders, once a frame). The drift monitor runs on one thread of its own: its window
tests, state writes and checkpoints never hold up the loop or a Kafka transaction, and
a single thread keeps each camera's frames in order with no locking.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from camstream.records import DriftRecord, FrameHeaders, ModelRef
from streams.drift import DriftMonitor
from streams.drift_stats import ReferenceProfile
from streams.pipeline import PreparedFrame, prepare

Decoded = PreparedFrame | BaseException


def _prepare_all(frames: Sequence[tuple[FrameHeaders, bytes]]) -> list[Decoded]:
    """Decode frames one after another; a frame's exception is its result (as with
    ``gather(return_exceptions=True)``), so one bad frame spoils nothing."""
    out: list[Decoded] = []
    for headers, value in frames:
        try:
            out.append(prepare(headers, value))
        except BaseException as exc:
            out.append(exc)
    return out


class Decoder:
    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    async def decode(self, frames: Sequence[tuple[FrameHeaders, bytes]]) -> list[Decoded]:
        """Each frame's model input and statistics, or the exception it raised."""
        if not frames:
            return []
        loop = asyncio.get_running_loop()
        lanes = min(self.threads, len(frames))
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(self._pool, _prepare_all, frames[lane::lanes])
                for lane in range(lanes)
            )
        )
        decoded: list[Decoded | None] = [None] * len(frames)
        for lane, part in enumerate(parts):
            decoded[lane::lanes] = part
        return [d for d in decoded if d is not None]

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass(frozen=True, slots=True)
class Observation:
    """One classified frame as the drift monitor sees it."""

    camera_id: str
    capture_ts_ms: int
    label: str
    score: float
    stats: dict[str, float]
    received_ms: int
    partition: int | None
    model: ModelRef | None = None  # the version that classified it (None: the default)
    reference: ReferenceProfile | None = None  # that version's drift reference


class DriftThread:
    """A DriftMonitor driven from its own thread; every call returns the records due."""

    def __init__(self, monitor: DriftMonitor) -> None:
        self.monitor = monitor
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drift")

    def _observe(self, batch: Sequence[Observation]) -> list[tuple[DriftRecord, int | None]]:
        out: list[tuple[DriftRecord, int | None]] = []
        for o in batch:
            records = self.monitor.observe(
                o.camera_id,
                o.capture_ts_ms,
                o.label,
                o.score,
                o.stats,
                received_ms=o.received_ms,
                model=o.model,
                reference=o.reference,
            )
            out += [(record, o.partition) for record in records]
        return out

    async def observe(self, batch: Sequence[Observation]) -> list[tuple[DriftRecord, int | None]]:
        """Records of the windows these frames closed, each with the partition of the
        frame that closed it."""
        if not batch:
            return []
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._observe, batch)

    async def tick(self, now_ms: int) -> list[DriftRecord]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.monitor.tick, now_ms)

    async def checkpoint(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.monitor.checkpoint)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
