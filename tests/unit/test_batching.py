"""streams.batching against fakes: order, acks, failure latching, stop in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from streams.batching import BatchFailed, BatchPipeline


class Recorder:
    """Fake stages: ``work`` sleeps as told per batch; every step is logged in order."""

    def __init__(self, delays: dict[str, float], fail: set[str] | None = None) -> None:
        self.delays = delays
        self.fail = fail or set()
        self.log: list[tuple[str, str]] = []
        self.delivered: list[str] = []
        self.acked: list[str] = []
        self.failures: list[BaseException] = []

    async def work(self, events: Sequence[str]) -> str:
        name = events[0]
        await asyncio.sleep(self.delays.get(name, 0.0))
        self.log.append(("worked", name))
        if name in self.fail:
            raise ValueError(f"{name} failed")
        return name

    async def emit(self, name: str) -> list[str]:
        self.log.append(("emitted", name))
        return [f"{name}-record"]

    async def deliver(self, records: list[str]) -> None:
        await asyncio.sleep(0.01)
        self.log.append(("delivered", records[0]))
        self.delivered += records

    async def ack(self, events: Sequence[str]) -> None:
        self.log.append(("acked", events[0]))
        self.acked += list(events)

    async def on_failure(self, exc: BaseException) -> None:
        self.failures.append(exc)

    def pipeline(self, depth: int = 3) -> BatchPipeline[str, str, str]:
        return BatchPipeline(
            self.work, self.emit, self.deliver, depth=depth, on_failure=self.on_failure
        )


async def _submit_all(
    pipeline: BatchPipeline[str, str, str], rec: Recorder, names: list[str]
) -> None:
    for name in names:
        await pipeline.submit([name], rec.ack)


def test_batches_publish_in_submission_order_when_work_finishes_out_of_order() -> None:
    async def scenario() -> Recorder:
        # Given a first batch whose work takes longest
        rec = Recorder({"a": 0.15, "b": 0.01, "c": 0.05})
        pipeline = rec.pipeline(depth=3)
        # When three batches run at once
        await _submit_all(pipeline, rec, ["a", "b", "c"])
        await pipeline.drain(5.0)
        return rec

    rec = asyncio.run(scenario())
    # Then work finished out of order, but emits, deliveries and acks kept order
    worked = [name for step, name in rec.log if step == "worked"]
    assert worked == ["b", "c", "a"]
    assert [name for step, name in rec.log if step == "emitted"] == ["a", "b", "c"]
    assert rec.delivered == ["a-record", "b-record", "c-record"]
    assert rec.acked == ["a", "b", "c"]


def test_a_batch_is_acked_only_after_its_records_are_delivered() -> None:
    async def scenario() -> Recorder:
        rec = Recorder({})
        pipeline = rec.pipeline()
        await _submit_all(pipeline, rec, ["a", "b"])
        await pipeline.drain(5.0)
        return rec

    rec = asyncio.run(scenario())
    for name in ("a", "b"):
        assert rec.log.index(("delivered", f"{name}-record")) < rec.log.index(("acked", name))
    # and the next batch emits only after the previous one was acked
    assert rec.log.index(("acked", "a")) < rec.log.index(("emitted", "b"))


def test_nothing_is_published_after_a_failed_batch() -> None:
    async def scenario() -> tuple[Recorder, BaseException | None]:
        # Given the second of four batches failing for good (the later ones work fast)
        rec = Recorder({"a": 0.05, "b": 0.02}, fail={"b"})
        pipeline = rec.pipeline(depth=4)
        await _submit_all(pipeline, rec, ["a", "b", "c"])
        await pipeline.drain(5.0)
        refused = None
        try:
            await pipeline.submit(["d"], rec.ack)
        except BatchFailed as exc:
            refused = exc
        return rec, refused

    rec, refused = asyncio.run(scenario())
    # Then the batch before it published, nothing after it did, none of them were acked
    assert rec.delivered == ["a-record"]
    assert rec.acked == ["a"]
    assert ("worked", "c") in rec.log and ("emitted", "c") not in rec.log
    # and the failure was reported once, and new batches are refused
    assert len(rec.failures) == 1 and str(rec.failures[0]) == "b failed"
    assert isinstance(refused, BatchFailed)


def test_stop_waits_for_batches_in_flight_and_reports_no_failure_while_stopping() -> None:
    async def scenario() -> Recorder:
        rec = Recorder({"a": 0.1, "b": 0.1, "c": 0.1}, fail={"c"})
        pipeline = rec.pipeline(depth=3)
        await _submit_all(pipeline, rec, ["a", "b", "c"])
        # When the worker stops while three batches are in flight
        await pipeline.stop(timeout_s=5.0)
        return rec

    rec = asyncio.run(scenario())
    # Then the batches in flight published before stop returned
    assert rec.delivered == ["a-record", "b-record"]
    assert rec.acked == ["a", "b"]
    # and a batch failing during the stop does not crash the worker
    assert rec.failures == []


def test_submit_waits_for_a_free_slot() -> None:
    async def scenario() -> list[str]:
        rec = Recorder({"a": 0.2, "b": 0.2})
        pipeline = rec.pipeline(depth=2)
        await _submit_all(pipeline, rec, ["a", "b"])
        third = asyncio.create_task(pipeline.submit(["c"], rec.ack))
        await asyncio.sleep(0.05)
        waiting = [] if third.done() else ["waiting"]
        await third
        await pipeline.drain(5.0)
        return waiting + rec.acked

    assert asyncio.run(scenario()) == ["waiting", "a", "b", "c"]


def test_process_runs_one_batch_to_the_end() -> None:
    rec = Recorder({})
    asyncio.run(rec.pipeline().process(["only"]))
    assert rec.delivered == ["only-record"]
    assert rec.acked == []  # process acks nothing


def test_a_failing_deliver_latches_like_failing_work() -> None:
    async def scenario() -> Recorder:
        rec = Recorder({})

        async def refuse(records: list[str]) -> None:
            raise RuntimeError("kafka refused")

        pipeline: BatchPipeline[str, str, str] = BatchPipeline(
            rec.work, rec.emit, refuse, depth=2, on_failure=rec.on_failure
        )
        await pipeline.submit(["a"], rec.ack)
        await pipeline.drain(5.0)
        with pytest.raises(BatchFailed):
            await pipeline.submit(["b"], rec.ack)
        return rec

    rec = asyncio.run(scenario())
    assert rec.acked == [] and len(rec.failures) == 1
