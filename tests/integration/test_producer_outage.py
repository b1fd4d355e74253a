"""A producer rides out a broker outage: bounded buffering, counted drops, and every
frame it reported delivered is in the topic afterwards (real broker, stopped 20 s)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from camstream.cameras import CameraSpec
from camstream.settings import Settings
from camstream.stack.kafka import KafkaBroker
from producers.producer import ProducerStats, run_producers
from producers.stats import DropReason
from tests.support.live import by_camera, read_frames

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    with KafkaBroker(tmp_path / "data", tmp_path / "logs", cache_dir=Settings().cache_dir) as kafka:
        yield kafka


def test_broker_stopped_20s_every_delivered_frame_is_in_the_topic_and_drops_are_counted(
    broker: KafkaBroker, tmp_path: Path
) -> None:
    # Given a producer with a 1 MiB buffer publishing two 20 fps cameras
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        state_dir=tmp_path,
        producer_buffer_mb=1,
        producer_buffer_s=120,
        producer_status_interval_s=5,
    )
    broker.create_topics([settings.frames_topic], partitions=2)
    cameras = [CameraSpec(id=f"outage-{i}", source="synthetic:640x360", fps=20) for i in range(2)]
    # and, beside it, a producer whose frames may wait 2 s for the broker (a roomy buffer)
    expiring_settings = settings.model_copy(
        update={"producer_buffer_mb": 64, "producer_buffer_s": 2}
    )
    expiring = CameraSpec(id="expiring", source="synthetic:320x240", fps=10)
    stop = threading.Event()
    result: list[ProducerStats] = []
    expiring_result: list[ProducerStats] = []
    runner = threading.Thread(
        target=lambda: result.append(run_producers(settings, cameras, stop, record_seqs=True))
    )
    expiring_runner = threading.Thread(
        target=lambda: expiring_result.append(
            run_producers(expiring_settings, [expiring], stop, record_seqs=True)
        )
    )
    runner.start()
    expiring_runner.start()
    try:
        time.sleep(4)
        # When the broker is stopped for 20 s and started again on the same data
        broker.stop()
        time.sleep(20)
        broker.start()
        time.sleep(8)
    finally:
        stop.set()
        runner.join(timeout=30)
        expiring_runner.join(timeout=30)
    assert not runner.is_alive() and not expiring_runner.is_alive()
    stats = result[0]

    # Then every frame reported delivered is in the topic, in seq order per camera
    frames = by_camera(read_frames(broker.client_config(), settings.frames_topic))
    for camera in cameras:
        counters = stats.cameras[camera.id]
        in_topic = [r.seq for r in frames[camera.id]]
        assert set(counters.delivered_seqs) <= set(in_topic)
        assert in_topic == sorted(in_topic)
        assert len(in_topic) == len(set(in_topic))  # idempotent: no duplicates
        # the drops are counted, not silent: captured = published + dropped
        summary = counters.summary()
        assert summary["dropped"].get(DropReason.BUFFER_FULL, 0) > 50, summary
        assert counters.accounted(), summary
        # frames keep flowing after the broker returns (8 s at 20 fps)
        assert counters.published > 4 * 20 + 8 * 20 * 0.7, summary
    # and the frames that waited longer than producer_buffer_s were dropped as expired
    # (not buffer_full: they fitted), counted, while the rest was delivered
    counters = expiring_result[0].cameras[expiring.id]
    summary = counters.summary()
    assert summary["dropped"].get(DropReason.EXPIRED, 0) > 10 * (20 - 2) * 0.7, summary
    assert DropReason.BUFFER_FULL not in summary["dropped"], summary
    assert counters.accounted(), summary
    assert counters.published > 10 * (4 + 8) * 0.7, summary
    assert set(counters.delivered_seqs) <= {r.seq for r in frames[expiring.id]}
