"""Publishing the worker's records to Kafka, until Kafka has every one.

Records Kafka refuses or does not acknowledge (a broker outage, a topic whose size
limit or ACLs reject them) are sent again with capped exponential backoff, however
long it takes. Meanwhile the batch that made them stays unacknowledged, the pipeline
fills, consumption stops and the backlog waits in Kafka, as in a Triton outage. A
record sent again may be published twice (at-least-once: every record carries its
``dedup_key``). Only a stopping worker gives up, leaving its frames uncommitted for the
next one.

Inside a Kafka transaction (exactly-once delivery) a refused record cannot be sent
again: the producer's sequence is broken and the transaction can only be aborted. So
there the first failure is final (``retry=False``) and the worker stops; its open
transactions are aborted when it (or another worker) takes the partitions again, and
those frames are classified again from the last commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import Counter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from camstream.errors import CamstreamError

log = structlog.get_logger(__name__)

PUBLISH_FAILURES = Counter(
    "camstream_worker_publish_failures_total",
    "Records Kafka refused or did not acknowledge (each is sent again)",
    ["topic", "error"],
)

# (topic, key, value, headers, partition) -> a future that resolves once Kafka
# acknowledged the record. ``partition`` is that of the frame the record comes from
# (None for records tied to no frame); only exactly-once delivery uses it.
Send = Callable[
    [str, bytes | None, bytes, list[tuple[str, bytes]] | None, int | None], Awaitable[Any]
]


@dataclass(frozen=True)
class Outgoing:
    """One record on its way to an output topic."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None  # the source frame's partition


class PublishFailed(CamstreamError, RuntimeError):
    """Kafka refused records; the message names the first error."""

    def __init__(self, failed: list[tuple[Outgoing, BaseException]]) -> None:
        record, exc = failed[0]
        super().__init__(
            f"{len(failed)} record(s) not published, first to {record.topic}: "
            f"{type(exc).__name__}: {exc}"
        )
        self.records = [record for record, _exc in failed]


class Publisher:
    def __init__(
        self, send: Send, retry_max_s: float, retry_initial_s: float = 0.1, retry: bool = True
    ) -> None:
        self.send = send
        self.retry_max_s = retry_max_s
        self.retry_initial_s = retry_initial_s
        self.retry = retry
        self.stopping = False

    async def deliver(self, records: list[Outgoing]) -> None:
        """Publish ``records``; returns once Kafka acknowledged all of them.

        Raises PublishFailed only when the worker is stopping, or at the first failure
        when sending again is off.
        """
        if not self.retry:
            await self._send_round(records)
            return
        remaining = records
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(PublishFailed),
            wait=wait_exponential_jitter(initial=self.retry_initial_s, max=self.retry_max_s),
            stop=lambda _state: self.stopping,
            before_sleep=_log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                try:
                    await self._send_round(remaining)
                except PublishFailed as exc:
                    remaining = exc.records  # the next round sends only these
                    raise

    async def _send_round(self, records: list[Outgoing]) -> None:
        """One attempt at every record; raises PublishFailed with those that failed."""
        sent: list[tuple[Outgoing, Any]] = []
        failed: list[tuple[Outgoing, BaseException]] = []
        for record in records:
            try:
                future = await self.send(
                    record.topic, record.key, record.value, record.headers, record.partition
                )
            except Exception as exc:  # refused before it left the client (e.g. too large)
                failed.append((record, exc))
            else:
                sent.append((record, future))
        outcomes = await asyncio.gather(*(future for _r, future in sent), return_exceptions=True)
        for (record, _future), outcome in zip(sent, outcomes, strict=True):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, BaseException):
                failed.append((record, outcome))
        for record, error in failed:
            PUBLISH_FAILURES.labels(record.topic, type(error).__name__).inc()
        if failed:
            raise PublishFailed(failed)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning(
        "kafka.publish_failed",
        error=str(exc)[:300],
        attempt=state.attempt_number,
        retry_in_s=round(state.upcoming_sleep, 2),
    )
