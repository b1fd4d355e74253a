"""Reading a topic as it flows, the way a person watches it: one line per record.

``follow`` is a plain Kafka consumer (its own group, nothing committed) that hands each
record's line to a callback and sums up what it saw; ``describe`` is the one-line
formatter, a pure function. `camstream tail` and `camstream up` print with them.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from camstream.settings import Settings

Headers = Iterable[tuple[str, bytes | None]] | None


@dataclass
class FollowSummary:
    """What a follow saw: records, cameras, and end-to-end latencies of predictions."""

    records: int = 0
    cameras: set[str] = field(default_factory=set)
    first_s: float = 0.0
    last_s: float = 0.0
    end_to_end_ms: list[float] = field(default_factory=list)

    def add(self, camera: str, end_to_end_ms: float | None, now_s: float) -> None:
        """Count one record seen at ``now_s`` (monotonic seconds)."""
        if not self.records:
            self.first_s = now_s
        self.last_s = now_s
        self.records += 1
        self.cameras.add(camera)
        if end_to_end_ms is not None:
            self.end_to_end_ms.append(end_to_end_ms)

    def line(self) -> str:
        span = self.last_s - self.first_s
        rate = (self.records - 1) / span if span > 0 else 0.0
        text = f"{self.records} records from {len(self.cameras)} cameras, {rate:.1f}/s"
        if len(self.end_to_end_ms) >= 2:
            q = statistics.quantiles(self.end_to_end_ms, n=100, method="inclusive")
            text += f"; end-to-end ms p50={q[49]:.0f} p95={q[94]:.0f} p99={q[98]:.0f}"
        return text


def describe(
    topic: str, key: bytes | None, value: bytes | None, headers: Headers
) -> tuple[str, float | None]:
    """One line for a record, and its end-to-end latency if it is a prediction.

    Predictions and drift records get a summary line; other JSON records are printed
    as they are; anything else (frames, dead letters) as its size and headers.
    """
    camera = (key or b"").decode(errors="replace")
    try:
        record = json.loads(value or b"")
    except ValueError:
        meta = {k: bytes(v or b"").decode(errors="replace") for k, v in headers or []}
        return f"{topic} {camera} {len(value or b'')} bytes {json.dumps(meta)}", None
    if topic.endswith("predictions"):
        lat = record["latency"]
        line = (
            f"{camera:<12} seq={record['seq']} {record['label']:<24} "
            f"score={record['score']:.2f} enrich={record['enrichment']} "
            f"e2e={lat['end_to_end_ms']:.0f}ms infer={lat['infer_ms']:.0f}ms"
        )
        return line, float(lat["end_to_end_ms"])
    if topic.endswith("drift"):
        line = (
            f"{camera:<12} DRIFT={record['drift']} frames={record['frame_count']} "
            f"reasons={record['reasons']}"
        )
        return line, None
    return json.dumps(record), None


def follow(
    settings: Settings,
    topic: str,
    stop: threading.Event,
    deadline: float | None = None,
    *,
    from_beginning: bool = False,
    count: int | None = None,
    on_line: Callable[[str], None] | None = None,
) -> FollowSummary:
    """Read ``topic`` until ``stop``, the monotonic ``deadline`` or ``count`` records;
    each record's line goes to ``on_line``. Nothing is committed."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        settings.kafka_client_config(
            **{
                "group.id": f"camstream-tail-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest" if from_beginning else "latest",
                "enable.auto.commit": False,
            }
        )
    )
    consumer.subscribe([topic])
    summary = FollowSummary()
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            msg: Any = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            line, e2e = describe(msg.topic() or topic, msg.key(), msg.value(), msg.headers())
            summary.add((msg.key() or b"").decode(errors="replace"), e2e, time.monotonic())
            if on_line is not None:
                on_line(line)
            if count is not None and summary.records >= count:
                break
    finally:
        consumer.close()
    return summary
