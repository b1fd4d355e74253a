"""A real Prometheus (Debian's) scraping the session stack: every expression of the
Grafana dashboard and of the alert rules returns data, and CameraDown fires when a
camera's producer stops."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest

from camstream.stack.process import ManagedProcess, free_port
from camstream.stack.prometheus import (
    PrometheusServer,
    Target,
    alert_rules,
    alert_signal,
    dashboard_queries,
    stack_targets,
)
from camstream.view.launch import ViewProcess
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


def test_every_expression_returns_data_and_camera_down_fires(stack: Stack, tmp_path: Path) -> None:
    # Given the stack, a producer with one camera, the view, and one frame for the DLQ
    assert stack.local is not None
    camera = f"prom-{uuid.uuid4().hex[:6]}"
    producer_port, view_port = free_port(), free_port()
    produce = ["produce", "--camera-id", camera, "--source", "synthetic:320x240", "--fps", "5"]
    producer = ManagedProcess(
        "producer",
        [sys.executable, "-m", "camstream", *produce],
        tmp_path / "producer.log",
        env=stack.local.child_settings(metrics_port=producer_port).child_env(),
        stop_timeout_s=20,
    ).start()
    view = ViewProcess(
        stack.local.child_settings(metrics_port=view_port),
        tmp_path,
        extra_args=("--history-s", "0"),
    )
    kafka = stack.producer()
    stack.publish(kafka, camera, 10_000, b"not a jpeg", 320, 240)
    kafka.flush(10)
    targets = [
        *stack_targets(stack.info),
        Target("camstream-producer", f"127.0.0.1:{producer_port}"),
        Target("camstream-view", f"127.0.0.1:{view_port}"),
    ]
    prometheus = PrometheusServer(
        tmp_path / "prometheus", tmp_path, targets, scrape_interval_s=1, evaluation_interval_s=1
    )
    try:
        view.start()
        started = time.monotonic()
        prometheus.start()
        assert "SUCCESS" in prometheus.check_rules()
        prometheus.wait_scraped(timeout_s=30)

        # When every expression is queried (an alert: its signal, without the comparison)
        expressions = {f"{where}: {expr}": expr for where, expr in dashboard_queries()}
        for rule in alert_rules():
            signal, _op, _limit = alert_signal(rule["expr"])
            expressions[f"alert {rule['alert']}: {signal}"] = signal
        empty = dict(expressions)
        deadline = time.monotonic() + 60
        while empty and time.monotonic() < deadline:
            empty = {k: e for k, e in empty.items() if not prometheus.query(e)}
            time.sleep(1)
        # Then each returns data, this camera's among the per-camera ones
        assert not empty, "no data from:\n" + "\n".join(empty)
        data_s = time.monotonic() - started
        frames_in = prometheus.query(
            "sum by (camera) (rate(camstream_producer_frames_published_total[1m]))"
        )
        assert camera in {series["metric"].get("camera") for series in frames_in}
        dlq = prometheus.query("sum by (kind) (rate(camstream_worker_dlq_total[5m]))")
        assert "not_jpeg" in {series["metric"]["kind"] for series in dlq}

        # When the camera's producer stops
        producer.stop()
        stopped = time.monotonic()
        firing: list[dict[str, object]] = []
        while time.monotonic() - stopped < 60 and not firing:
            firing = [
                a
                for a in prometheus.alerts()
                if a["labels"].get("alertname") == "CameraDown"
                and a["labels"].get("camera") == camera
                and a["state"] == "firing"
            ]
            time.sleep(1)
        # Then CameraDown fires for it (the worker's silence, 10 s, held for 10 s)
        assert firing, f"CameraDown never fired for {camera}: {prometheus.alerts()}"
        print(
            f"prometheus: {len(expressions)} expressions returned data {data_s:.1f}s after "
            f"start; CameraDown fired {time.monotonic() - stopped:.1f}s after the producer "
            "stopped"
        )
    finally:
        prometheus.stop()
        view.stop()
        producer.stop()
