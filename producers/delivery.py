"""Kafka delivery of frames: one idempotent producer (acks=all) shared by all cameras.

Delivery reports drive the metrics: a frame counts as published only when the broker
has acknowledged it. Drop policy while the broker is unreachable (stated, counted):

- frames wait in the client's buffer, bounded by ``producer_buffer_mb``;
- a new frame that does not fit is dropped at once (``buffer_full``): the frames
  already waiting keep their order and are delivered first when the broker returns;
- a frame not acknowledged within ``producer_buffer_s`` is dropped (``expired``);
- on shutdown, frames still in flight after ``producer_flush_s`` are dropped
  (``unflushed``).

Nothing acknowledged is dropped: the broker acknowledged it with acks=all.

At start-up the frames topic's ``max.message.bytes`` is read from the broker, so a frame
too large for it is caught before it is sent. Credentials the broker refuses and a
missing topic stop the producer with the fix (ProducerFatalError).
"""

from __future__ import annotations

import threading
import time
from functools import partial
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    ResourceType,
)

from camstream.errors import ConfigError
from camstream.records import FrameHeaders
from camstream.settings import Settings
from producers.stats import INFLIGHT, CameraCounters, DropReason

log = structlog.get_logger(__name__)

# Room left in a message for the key, the frame/1 headers and the record overhead.
RECORD_OVERHEAD_BYTES = 1024
_AUTH_CODES = {
    KafkaError._AUTHENTICATION,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
}
_FIX_CREDENTIALS = (
    "fix security.protocol / sasl.mechanism / sasl.username / sasl.password (or the ssl.* "
    "files) in CAMSTREAM_KAFKA_CONFIG"
)


class ProducerFatalError(ConfigError):
    """The producer cannot go on (credentials refused, topic missing); names the fix.
    A ConfigError: the fix is in the settings (or `camstream up` creates the topic)."""


def producer_config(settings: Settings, message_max_bytes: int) -> dict[str, Any]:
    """librdkafka settings: pass-through properties (security), then our guarantees."""
    return settings.kafka_client_config(
        **{
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": settings.producer_linger_ms,
            "message.max.bytes": message_max_bytes,
            "batch.size": min(1_000_000, message_max_bytes),
            "queue.buffering.max.kbytes": settings.producer_buffer_mb * 1024,
            "queue.buffering.max.messages": 1_000_000,
            "message.timeout.ms": int(settings.producer_buffer_s * 1000),
            "client.id": "camstream-producer",
        }
    )


def topic_message_limit(settings: Settings, timeout_s: float = 10.0) -> int | None:
    """The frames topic's max.message.bytes; None when the broker cannot be reached.

    Raises ProducerFatalError when the broker refuses the credentials or has no topic.
    """
    config = settings.kafka_client_config(**{"socket.timeout.ms": int(timeout_s * 1000)})
    errors: list[KafkaError] = []
    config["error_cb"] = errors.append
    admin = AdminClient(config)
    resource = ConfigResource(ResourceType.TOPIC, settings.frames_topic)
    future = admin.describe_configs([resource], request_timeout=timeout_s)[resource]
    deadline = time.monotonic() + timeout_s + 5
    # Poll for client errors while waiting: refused credentials show up there at once,
    # while the request itself would only time out.
    while not future.done() and time.monotonic() < deadline:
        admin.poll(0.1)
        if any(e.code() in _AUTH_CODES for e in errors):
            break
    error = future.exception(timeout=0.1) if future.done() else TimeoutError("no answer")
    if error is None:
        entries = future.result()
        entry = entries.get("max.message.bytes")
        return int(entry.value) if entry is not None and entry.value else None
    kafka_error = error.args[0] if isinstance(error, KafkaException) and error.args else None
    codes = {e.code() for e in errors}
    if kafka_error is not None:
        codes.add(kafka_error.code())
    if codes & _AUTH_CODES:
        detail = next((e.str() for e in errors if e.code() in _AUTH_CODES), str(error))
        raise ProducerFatalError(
            f"Kafka at {settings.kafka_bootstrap} refused the producer's credentials "
            f"({detail}); {_FIX_CREDENTIALS}"
        )
    if kafka_error is not None and kafka_error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
        raise ProducerFatalError(
            f"topic {settings.frames_topic} does not exist at {settings.kafka_bootstrap}; "
            "create it (`camstream up` does) or fix CAMSTREAM_TOPIC_PREFIX"
        )
    log.warning(
        "kafka.unreachable_at_start",
        bootstrap=settings.kafka_bootstrap,
        error=str(error),
        note="frames are buffered until it answers",
    )
    return None


class FramePublisher:
    """Sends frames for every camera of the process; serves delivery reports."""

    def __init__(self, settings: Settings, topic_limit: int | None) -> None:
        limit = settings.max_message_bytes
        if topic_limit is not None:
            limit = min(limit, topic_limit)
        self.message_max_bytes = limit
        self.frame_limit = limit - RECORD_OVERHEAD_BYTES
        self.topic = settings.frames_topic
        self.bootstrap = settings.kafka_bootstrap
        config = producer_config(settings, limit)
        config["error_cb"] = self._on_error
        self._producer = Producer(config)
        self.fatal: str | None = None
        self.fatal_event = threading.Event()
        self._closing = threading.Event()
        self._last_error_log = 0.0
        self._poller = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)
        self._poller.start()

    # Per frame -----------------------------------------------------------------------

    def send(self, counters: CameraCounters, headers: FrameHeaders, jpeg: bytes) -> bool:
        """Hand one frame to the client; False when it was dropped instead (counted)."""
        try:
            self._producer.produce(
                self.topic,
                value=jpeg,
                key=headers.camera_id.encode(),
                headers=headers.to_kafka(),  # type: ignore[arg-type]
                on_delivery=partial(self._on_delivery, counters, headers.seq, time.monotonic()),
            )
        except BufferError:
            counters.on_dropped(DropReason.BUFFER_FULL)
            self._log_limited("frame.dropped_buffer_full", camera=headers.camera_id)
            return False
        except KafkaException as exc:
            counters.on_dropped(DropReason.FAILED)
            self._log_limited("frame.produce_failed", camera=headers.camera_id, error=str(exc))
            return False
        counters.on_sent()
        return True

    @staticmethod
    def _on_delivery(
        counters: CameraCounters,
        seq: int,
        started: float,
        err: KafkaError | None,
        _msg: Message,
    ) -> None:
        if err is None:
            counters.on_published(seq, time.monotonic() - started)
            return
        code = err.code()
        if code == KafkaError._MSG_TIMED_OUT:
            counters.on_dropped(DropReason.EXPIRED)
        elif code in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT):
            counters.on_dropped(DropReason.UNFLUSHED)
        else:
            counters.on_dropped(DropReason.FAILED)
            log.error("frame.delivery_failed", camera=counters.camera, seq=seq, error=err.str())

    # Client events -------------------------------------------------------------------

    def _on_error(self, err: KafkaError) -> None:
        code = err.code()
        if code in _AUTH_CODES or err.fatal():
            if self.fatal is None:
                fix = _FIX_CREDENTIALS if code in _AUTH_CODES else "see the error and restart"
                self.fatal = f"Kafka at {self.bootstrap} stopped the producer ({err.str()}); {fix}"
                log.error("kafka.fatal", error=err.str())
            self.fatal_event.set()
            return
        self._log_limited("kafka.error", error=err.str())

    def _log_limited(self, event: str, **fields: Any) -> None:
        """Warn at most once every 5 s: a broker outage must not flood the log."""
        now = time.monotonic()
        if now - self._last_error_log >= 5.0:
            self._last_error_log = now
            log.warning(event, **fields)

    def _poll(self) -> None:
        while not self._closing.is_set():
            self._producer.poll(0.05)
            INFLIGHT.set(len(self._producer))

    def in_flight(self) -> int:
        return len(self._producer)

    # Shutdown ------------------------------------------------------------------------

    def close(self, flush_s: float) -> int:
        """Flush for up to ``flush_s``; frames still in flight are purged and counted
        as ``unflushed``. Returns how many were purged."""
        self._closing.set()
        self._poller.join(timeout=2.0)
        deadline = time.monotonic() + flush_s
        remaining = len(self._producer)
        # In short steps, so refused credentials end the wait at once.
        while remaining and time.monotonic() < deadline and not self.fatal_event.is_set():
            remaining = self._producer.flush(min(0.2, max(deadline - time.monotonic(), 0)))
        if remaining:
            self._producer.purge(in_queue=True, in_flight=True, blocking=False)
            self._producer.flush(1.0)  # serves the purged frames' delivery reports
            log.warning("producer.unflushed", frames=remaining, flush_s=flush_s)
        INFLIGHT.set(len(self._producer))
        self._producer.close()  # nothing is left to flush: returns at once
        return remaining
