"""The local stack's Kafka broker against real clients: round trip, clean stop, restart
on the same data dir, and the optional SASL_PLAINTEXT listener."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from camstream.settings import load_settings
from camstream.stack.kafka import KafkaBroker, ensure_kafka_libs, kafka_version
from camstream.stack.process import port_open

pytestmark = pytest.mark.integration

N_MESSAGES = 300


@pytest.fixture(scope="module")
def cache_dir() -> Path:
    return load_settings().cache_dir


@pytest.fixture
def broker(tmp_path: Path, cache_dir: Path) -> Iterator[KafkaBroker]:
    kafka = KafkaBroker(tmp_path / "data", tmp_path / "logs", cache_dir=cache_dir)
    try:
        yield kafka.start()
    finally:
        kafka.stop()


def produce(config: dict[str, Any], topic: str, count: int, start: int = 0) -> None:
    producer = Producer({**config, "enable.idempotence": True, "acks": "all"})
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Message) -> None:
        if err is not None:
            failures.append(str(err))

    for i in range(start, start + count):
        producer.produce(
            topic,
            key=b"camera-1",
            value=f"frame-{i}".encode(),
            headers=[("seq", str(i).encode()), ("camera_id", b"camera-1")],
            on_delivery=on_delivery,
        )
        producer.poll(0)
    assert producer.flush(30) == 0, "messages still queued after 30 s"
    assert failures == []


def consume(
    config: dict[str, Any], topic: str, count: int, timeout_s: float = 30.0
) -> list[Message]:
    consumer = Consumer(
        {
            **config,
            "group.id": f"test-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    received: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(received) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                raise KafkaException(msg.error())
            received.append(msg)
    finally:
        consumer.close()
    return received


def assert_in_order(messages: list[Message], count: int) -> None:
    assert [m.value() for m in messages] == [f"frame-{i}".encode() for i in range(count)]
    assert [dict(m.headers() or []) for m in messages] == [
        {"seq": str(i).encode(), "camera_id": b"camera-1"} for i in range(count)
    ]
    assert len({m.partition() for m in messages}) == 1


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_broker_round_trips_messages_with_headers_in_order(broker: KafkaBroker) -> None:
    # Given a running broker with topics created twice (the second call is a no-op)
    broker.create_topics(["frames", "predictions"], partitions=4)
    broker.create_topics(["frames"], partitions=4)
    topics = broker.admin().list_topics(timeout=10).topics
    assert len(topics["frames"].partitions) == 4

    # When messages with headers are produced idempotently with acks=all
    produce(broker.client_config(), "frames", N_MESSAGES)

    # Then a consumer reads all of them back, in order, with their headers
    assert_in_order(consume(broker.client_config(), "frames", N_MESSAGES), N_MESSAGES)


def test_topics_are_not_created_on_first_use(broker: KafkaBroker) -> None:
    # Given a broker with auto.create.topics.enable=false
    # When a client asks for a topic that was never created
    metadata = broker.admin().list_topics("never-created", timeout=10)

    # Then the topic does not exist
    assert metadata.topics["never-created"].error is not None


def test_stop_ends_the_java_process_and_closes_the_port(tmp_path: Path, cache_dir: Path) -> None:
    # Given a running broker
    kafka = KafkaBroker(tmp_path / "data", tmp_path / "logs", cache_dir=cache_dir)
    kafka.start()
    pid = kafka.pid
    assert port_open(kafka.port)

    # When it is stopped
    started = time.monotonic()
    kafka.stop()

    # Then the JVM is gone, well before the SIGKILL deadline, and no port is open
    assert time.monotonic() - started < kafka.stop_timeout_s
    assert not process_alive(pid)
    assert not port_open(kafka.port)
    assert not port_open(kafka.controller_port)


def test_restart_on_same_data_dir_keeps_ports_topics_and_messages(
    tmp_path: Path, cache_dir: Path
) -> None:
    # Given a broker that stored messages and was then stopped
    data, logs = tmp_path / "data", tmp_path / "logs"
    with KafkaBroker(data, logs, cache_dir=cache_dir) as kafka:
        kafka.create_topics(["frames"], partitions=2)
        produce(kafka.client_config(), "frames", N_MESSAGES)
        bootstrap = kafka.bootstrap

        # When the same object is stopped and started again
        kafka.stop()
        assert not port_open(kafka.port)
        kafka.start()

        # Then it listens on the same address, and more messages append after the old
        assert kafka.bootstrap == bootstrap
        produce(kafka.client_config(), "frames", 10, start=N_MESSAGES)
        assert_in_order(consume(kafka.client_config(), "frames", N_MESSAGES + 10), N_MESSAGES + 10)

    # When a new broker object starts on the same data dir
    with KafkaBroker(data, logs, cache_dir=cache_dir) as again:
        # Then it reuses the ports and still holds every message
        assert again.bootstrap == bootstrap
        assert_in_order(consume(again.client_config(), "frames", N_MESSAGES + 10), N_MESSAGES + 10)


def test_sasl_listener_accepts_known_users_and_rejects_wrong_passwords(
    tmp_path: Path, cache_dir: Path
) -> None:
    # Given a broker with a SASL_PLAINTEXT listener and one PLAIN user
    users = {"camstream": "s3cret-pass"}
    with KafkaBroker(
        tmp_path / "data", tmp_path / "logs", cache_dir=cache_dir, sasl_users=users
    ) as kafka:
        kafka.create_topics(["frames"], partitions=1)

        # When that user produces and consumes through the SASL listener
        config = kafka.sasl_client_config("camstream", "s3cret-pass")
        produce(config, "frames", 20)

        # Then the messages come back
        assert_in_order(consume(config, "frames", 20), 20)

        # And a wrong password cannot even read metadata
        bad = AdminClient(kafka.sasl_client_config("camstream", "wrong", log_level=0))
        with pytest.raises(KafkaException):
            bad.list_topics(timeout=3)


def test_restart_moves_off_a_saved_port_that_another_process_took(
    tmp_path: Path, cache_dir: Path
) -> None:
    # Given a stopped broker whose PLAINTEXT port another process now listens on
    data, logs = tmp_path / "data", tmp_path / "logs"
    with KafkaBroker(data, logs, cache_dir=cache_dir) as kafka:
        kafka.create_topics(["frames"], partitions=1)
        produce(kafka.client_config(), "frames", 10)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", kafka.port))
        squatter.listen()

        # When a broker starts again on the same data dir
        with KafkaBroker(data, logs, cache_dir=cache_dir) as again:
            # Then it listens elsewhere and still holds the messages
            assert again.port != kafka.port
            assert again.controller_port == kafka.controller_port
            assert_in_order(consume(again.client_config(), "frames", 10), 10)


def test_ensure_kafka_libs_replaces_an_incomplete_folder(tmp_path: Path) -> None:
    # Given a lib folder left half-written by some older, interrupted run
    libs = tmp_path / f"kafka-{kafka_version()}" / "libs"
    libs.mkdir(parents=True)
    (libs / "partial.jar").write_bytes(b"")

    # When the libs are ensured
    resolved = ensure_kafka_libs(tmp_path)

    # Then Maven filled a complete folder that replaced the partial one, with no leftovers
    assert resolved == libs
    assert (libs / f"kafka_2.13-{kafka_version()}.jar").is_file()
    assert not (libs / "partial.jar").exists()
    assert [p.name for p in libs.parent.iterdir()] == ["libs"]
