"""The Faust internals exactly-once delivery patches are there in the pinned Faust."""

from __future__ import annotations

import asyncio

import faust
import pytest

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


def test_commits_wait_for_the_publish_guard() -> None:
    async def scenario() -> list[str]:
        app = _app()
        steps: list[str] = []

        async def commit(*_args: object) -> bool:
            steps.append("commit")
            return True

        app.producer.commit_transactions = commit  # type: ignore[method-assign]
        guard = asyncio.Lock()
        exactly_once.guard_commits(app, guard)
        async with guard:
            task = asyncio.create_task(app.producer.commit_transactions({}, "group", None))
            await asyncio.sleep(0.05)
            steps.append("batch acked")
        await task
        return steps

    assert asyncio.run(scenario()) == ["batch acked", "commit"]
