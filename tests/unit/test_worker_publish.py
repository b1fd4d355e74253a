"""streams.publish: records Kafka refuses are sent again until every one is in."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from streams.publish import Outgoing, Publisher, PublishFailed


class FlakyBroker:
    """Acknowledges records, except that it refuses the named values a set number of
    times: some after the send (as a broker error), one before it leaves the client."""

    def __init__(self, refuse: dict[bytes, int], refuse_at_send: dict[bytes, int]) -> None:
        self.refuse = dict(refuse)
        self.refuse_at_send = dict(refuse_at_send)
        self.attempts: Counter[bytes] = Counter()
        self.stored: list[bytes] = []

    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Any, partition: int | None
    ) -> asyncio.Future[None]:
        self.attempts[value] += 1
        if self.refuse_at_send.get(value, 0) > 0:
            self.refuse_at_send[value] -= 1
            raise ValueError("MessageSizeTooLargeError: the record is too large")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.refuse.get(value, 0) > 0:
            self.refuse[value] -= 1
            future.set_exception(RuntimeError("NotEnoughReplicas"))
        else:
            self.stored.append(value)
            future.set_result(None)
        return future


def _records(*values: bytes) -> list[Outgoing]:
    return [Outgoing("camstream.predictions", b"cam", value) for value in values]


def test_refused_records_are_sent_again_until_all_are_in_and_only_they() -> None:
    broker = FlakyBroker(refuse={b"b": 2}, refuse_at_send={b"c": 1})
    publisher = Publisher(broker.send, retry_max_s=0.01, retry_initial_s=0.001)

    asyncio.run(publisher.deliver(_records(b"a", b"b", b"c")))

    assert sorted(broker.stored) == [b"a", b"b", b"c"]
    assert broker.attempts == {b"a": 1, b"b": 3, b"c": 2}


def test_a_stopping_publisher_gives_up_and_names_what_was_not_published() -> None:
    broker = FlakyBroker(refuse={b"b": 1000}, refuse_at_send={})
    publisher = Publisher(broker.send, retry_max_s=0.01, retry_initial_s=0.001)

    async def scenario() -> None:
        delivery = asyncio.create_task(publisher.deliver(_records(b"a", b"b")))
        await asyncio.sleep(0.05)
        assert not delivery.done()  # still trying while the worker runs
        publisher.stopping = True
        with pytest.raises(PublishFailed, match=r"1 record.*NotEnoughReplicas") as failed:
            await delivery
        assert [r.value for r in failed.value.records] == [b"b"]

    asyncio.run(scenario())
    assert broker.stored == [b"a"]
    assert broker.attempts[b"b"] > 3


def test_without_retries_the_first_refusal_is_final() -> None:
    broker = FlakyBroker(refuse={b"b": 1}, refuse_at_send={})
    publisher = Publisher(broker.send, retry_max_s=0.01, retry=False)

    with pytest.raises(PublishFailed, match="NotEnoughReplicas"):
        asyncio.run(publisher.deliver(_records(b"a", b"b")))
    assert broker.attempts == {b"a": 1, b"b": 1}
