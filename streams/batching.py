"""Micro-batches in flight: slots, publication order, acks and failure latching.

Each micro-batch runs as its own task, up to ``depth`` at once, so the work of one batch
(decode, inference, feature reads) overlaps that of the next. Whatever order the work
finishes in, batches *emit* and *deliver* strictly in the order they were submitted, so
per-camera order holds; a batch's events are acknowledged (``on_published``) only once
everything it produced is delivered. The first batch that fails for good latches: no
batch submitted after it delivers anything (those before it still may), ``submit``
refuses new batches, and ``on_failure`` runs once (the app stops the worker so that a
restart takes the frames up again).

The collaborators are arguments, so this module knows nothing of Kafka, Triton or
Feast; tests/unit/test_batching.py drives it with fakes.

- ``work(events) -> result``: the part that may run beside other batches.
- ``emit(result) -> records``: in order, outside the delivery guard (drift statistics
  and other per-camera state that must see frames in order).
- ``deliver(records)``: in order, under ``guard``; with exactly-once delivery the
  consumer's commit takes the same guard from choosing its offsets to the end of the
  transaction commit, so that no commit falls between a batch's records and its acks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import structlog
from prometheus_client import Gauge

log = structlog.get_logger(__name__)

INFLIGHT_BATCHES = Gauge("camstream_worker_inflight_batches", "Micro-batches being processed")

E = TypeVar("E")
R = TypeVar("R")
O = TypeVar("O")  # noqa: E741 - the emitted record type


class BatchFailed(RuntimeError):
    """An earlier micro-batch failed for good; nothing after it is published."""


class BatchPipeline(Generic[E, R, O]):
    def __init__(
        self,
        work: Callable[[Sequence[E]], Awaitable[R]],
        emit: Callable[[R], Awaitable[list[O]]],
        deliver: Callable[[list[O]], Awaitable[None]],
        *,
        depth: int,
        guard: asyncio.Lock | None = None,
        on_failure: Callable[[BaseException], Awaitable[None]] | None = None,
        timed: Callable[[str, float], None] | None = None,
    ) -> None:
        """``timed(stage, seconds)`` hears how long each batch waited for the one before
        it (``order``) and how long its emit took (``emit``)."""
        self._work = work
        self._timed = timed or (lambda _stage, _seconds: None)
        self._emit = emit
        self._deliver = deliver
        self.guard = guard or asyncio.Lock()
        self._on_failure = on_failure
        self._slots = asyncio.Semaphore(depth)
        self._tail: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None
        self.stopping = False

    async def submit(
        self, events: Sequence[E], on_published: Callable[[Sequence[E]], Awaitable[None]]
    ) -> None:
        """Start one micro-batch; returns once a slot is free for the next one."""
        if self.failure is not None:
            raise BatchFailed("a micro-batch failed to publish") from self.failure
        await self._slots.acquire()
        INFLIGHT_BATCHES.inc()
        self._tail = asyncio.create_task(self._run(events, self._tail, on_published))

    async def process(self, events: Sequence[E]) -> None:
        """One micro-batch, start to finish, acking nothing (tests and tools)."""

        async def published(_events: Sequence[E]) -> None:
            return None

        await self.submit(events, published)
        assert self._tail is not None
        await self._tail

    async def drain(self, timeout_s: float) -> None:
        """Wait for the batches in flight to publish (or give up after ``timeout_s``)."""
        if self._tail is not None and not self._tail.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._tail), timeout_s)
            except Exception as exc:
                log.warning("worker.drain_incomplete", error=repr(exc))

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Take no new batches' failures as the worker's; publish what is in flight."""
        self.stopping = True
        await self.drain(timeout_s)

    async def _run(
        self,
        events: Sequence[E],
        previous: asyncio.Task[None] | None,
        on_published: Callable[[Sequence[E]], Awaitable[None]],
    ) -> None:
        try:
            result = await self._work(events)
            started = time.perf_counter()
            if previous is not None:
                await asyncio.wait([previous])  # emit in the order batches were taken
                if previous.cancelled() or previous.exception() is not None:
                    # nothing is published after a failed batch
                    raise BatchFailed("an earlier micro-batch failed") from self.failure
            emitting = time.perf_counter()
            self._timed("order", emitting - started)
            records = await self._emit(result)
            self._timed("emit", time.perf_counter() - emitting)
            async with self.guard:
                await self._deliver(records)
                await on_published(events)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if self.failure is None:
                self.failure = exc
                log.exception("worker.batch_failed", frames=len(events))
                if self._on_failure is not None and not self.stopping:
                    await self._on_failure(exc)
            if previous is not None and not previous.done():
                # The tail finishes last, so waiting for it waits for every batch.
                await asyncio.wait([previous])
            raise
        finally:
            INFLIGHT_BATCHES.dec()
            self._slots.release()
