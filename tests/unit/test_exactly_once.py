"""The Faust internals exactly-once delivery patches are there in the pinned Faust."""

from __future__ import annotations

import asyncio

import faust
import pytest
from faust.types import TP

from camstream.errors import ServiceError
from streams import exactly_once


def _app() -> faust.App:
    # No broker is contacted: building an app and its producer/consumer objects is local.
    return faust.App(
        "internals-check",
        broker="kafka://127.0.0.1:9",
        processing_guarantee="exactly_once",
        web_enabled=False,
        autodiscover=False,
    )


def test_the_pinned_faust_has_every_internal_exactly_once_patches() -> None:
    exactly_once.check_internals(_app())  # raises, naming what is missing


def test_a_faust_without_one_of_them_fails_loudly_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = _app()
    producer_type = type(app.producer)
    # a plain function where a coroutine function was: the patch would no longer fit
    monkeypatch.setattr(producer_type, "maybe_begin_transaction", lambda _self, _tid: None)
    with pytest.raises(ServiceError, match="maybe_begin_transaction"):
        exactly_once.check_internals(app)


def test_a_commit_chooses_its_offsets_only_after_the_batch_holding_the_guard_acked() -> None:
    async def scenario() -> list[str]:
        app = _app()
        guard = asyncio.Lock()
        exactly_once.guard_commits(app, guard)
        consumer = app.consumer  # made from the swapped class
        steps: list[str] = []

        async def commit_tps(_tps: object, start_new_transaction: bool) -> bool:
            # Faust's: choose the committable offsets from the acks, then commit them
            steps.append("offsets chosen")
            return True

        consumer._commit_tps = commit_tps  # type: ignore[method-assign]
        consumer._acked[TP("frames", 0)] = [41]  # a pending ack: force_commit goes on
        async with guard:  # a batch: its records sent, its acks not yet made
            task = asyncio.create_task(consumer.force_commit())
            await asyncio.sleep(0.05)
            steps.append("batch acked")
        assert await task
        return steps

    assert asyncio.run(scenario()) == ["batch acked", "offsets chosen"]
