"""Reading an output topic to its end, as a downstream consumer would.

A test that asserts something is *not* in a topic must first prove it read the whole
topic: ``read_to_end`` returns only once every partition reported its end (for a
read_committed reader, the last stable offset), and raises otherwise.
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition


def read_to_end(
    bootstrap: str,
    topic: str,
    keys: set[str] | None = None,
    isolation: str = "read_committed",
    timeout_s: float = 30.0,
) -> list[Message]:
    """Every record of ``topic`` (keyed by one of ``keys``) up to each partition's end
    as of the call, in log order per partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-end-{uuid.uuid4().hex[:8]}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    out: list[Message] = []
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        pending = set(partitions)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition() or 0)
                continue
            if keys is None or (msg.key() or b"").decode(errors="replace") in keys:
                out.append(msg)
        if pending:
            raise TimeoutError(f"{topic}: partitions not read to their end: {sorted(pending)}")
    finally:
        consumer.close()
    return out
