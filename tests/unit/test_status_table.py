"""`camstream status --watch`'s table, drawn from snapshots made by hand: the services
as the supervisor sees them, the cameras from the producers' and workers' metrics,
rates from two snapshots, Prometheus' alerts. collect_status against a live stack is
tests/integration/test_up_prometheus.py."""

from __future__ import annotations

import re

from rich.console import Console, RenderableType

from camstream.stack.health import StatusSnapshot, camera_state, parse_metrics, status_table
from camstream.stack.local import StackInfo

T0 = 1_800_000_000.0


def _text(renderable: RenderableType, width: int = 140) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def _row(text: str, first: str) -> list[str]:
    """The cells of the table row that starts with ``first`` (empty ones included)."""
    for line in text.splitlines():
        cells = [c.strip() for c in re.split("[│|]", line)[1:-1]]  # unicode or ascii
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{text}")


def _info() -> StackInfo:
    services = {
        "prometheus": {"state": "running", "pid": 90, "restarts": 0, "since": T0 - 10},
        "kafka": {"state": "running", "pid": 100, "restarts": 0, "since": T0 - 3700},
        "triton": {"state": "restarting", "pid": 101, "restarts": 2, "since": T0 - 1,
                   "last_exit": "killed by SIGKILL"},
        "worker": {"state": "running", "pid": 102, "restarts": 0, "since": T0 - 125},
        "worker-2": {"state": "running", "pid": 103, "restarts": 1, "since": T0 - 30},
        "producer": {"state": "running", "pid": 104, "restarts": 0, "since": T0 - 60},
        "view": {"state": "running", "pid": 105, "restarts": 0, "since": T0 - 60},
    }  # fmt: skip
    return StackInfo(
        kafka_bootstrap="127.0.0.1:39092",
        triton_grpc="127.0.0.1:38001",
        state_dir="/srv/camstream",
        metrics_ports={"stack": 9000, "worker": 9001, "worker-2": 9002, "producer": 9003,
                       "view": 9004},
        state="running",
        services=services,
        view_url="http://127.0.0.1:8090/",
        prometheus_url="http://127.0.0.1:9090",
        started_at=T0 - 3700,
    )  # fmt: skip


def _family(kind: str, name: str, values: dict[str, int], label: str = "camera") -> list[str]:
    """A metric's lines in the text exposition: one sample per label value."""
    samples = [f'{name}{{{label}="{key}"}} {value}' for key, value in values.items()]
    return [f"# TYPE {name} {kind}", *samples]


def _worker(consumed: int, predictions: dict[str, int], lag: dict[str, int], **gauges: str) -> str:
    lines = [
        "# TYPE camstream_worker_frames_consumed_total counter",
        f"camstream_worker_frames_consumed_total {consumed}",
        *_family("counter", "camstream_worker_predictions_total", predictions),
        *_family("gauge", "camstream_worker_consumer_lag", lag, label="partition"),
    ]
    for gauge, camera in gauges.items():
        lines += _family("gauge", f"camstream_drift_{gauge}", {camera: 1})
    return "\n".join(lines) + "\n"


def _producer(published: dict[str, int], up: dict[str, int]) -> str:
    lines = [
        *_family("counter", "camstream_producer_frames_published_total", published),
        *_family("gauge", "camstream_producer_camera_up", up),
    ]
    return "\n".join(lines) + "\n"


Alerts = list[dict[str, object]]


def _snapshot(at: float, scale: int, *, alerts: Alerts | None = None) -> StatusSnapshot:
    """The stack ``at``, its counters at ``scale`` times their base values."""
    worker = _worker(10 * scale, {"cam-a": 4 * scale}, {"0": 3, "1": 4}, silent="cam-c")
    worker_2 = _worker(6 * scale, {"cam-b": 6 * scale}, {"2": 5}, flag="cam-b")
    published = {"cam-a": 5 * scale, "cam-b": 6 * scale, "cam-c": 50}
    producer = _producer(published, {"cam-a": 1, "cam-b": 1, "cam-c": 0})
    metrics = {  # and the view's port does not answer
        "worker": parse_metrics(worker),
        "worker-2": parse_metrics(worker_2),
        "producer": parse_metrics(producer),
    }
    return StatusSnapshot(at, "/srv/camstream", True, _info(), metrics, alerts)


def test_table_lists_every_service_with_its_state_restarts_and_lag() -> None:
    # Given a snapshot of a running stack, with nothing to compare it with yet
    text = _text(status_table(_snapshot(T0, 1)))
    # Then every service is a row: state, pid, restarts, how long it has run
    assert _row(text, "kafka") == ["kafka", "running", "100", "0", "1h01m", "", "-", ""]
    assert _row(text, "triton")[1:4] == ["restarting", "101", "2"]
    assert _row(text, "triton")[-1] == "killed by SIGKILL"
    assert _row(text, "worker")[4] == "2m05s"
    # and each worker's consumer lag, summed over its partitions
    assert _row(text, "worker")[5] == "7"
    assert _row(text, "worker-2")[5] == "5"
    # and no rate without an earlier snapshot, and a service whose metrics do not answer
    assert _row(text, "worker")[6] == "-"
    assert _row(text, "view")[6] == "no metrics"
    # and the endpoints, the total lag
    assert "127.0.0.1:39092" in text and "http://127.0.0.1:9090" in text
    assert "lag 12 frames" in text


def test_rates_compare_two_snapshots() -> None:
    # Given two snapshots 2 s apart, every counter doubled
    before, now = _snapshot(T0 - 2, 1), _snapshot(T0, 2)
    # When the table is drawn
    text = _text(status_table(now, before, interval_s=2))
    # Then each service's work rate is its counter's increase per second
    assert _row(text, "worker")[6] == "5.0"  # consumed 10 -> 20 in 2 s
    assert _row(text, "worker-2")[6] == "3.0"
    assert _row(text, "producer")[6] == "5.5"  # published 61 -> 72 (cam-c is stuck)
    # and each camera's fps in (published) and out (predictions, over every worker)
    assert _row(text, "cam-a")[1:] == ["up", "2.5", "2.0", "8", "ok"]  # 5 -> 10 in 2 s
    assert _row(text, "cam-b")[1:] == ["up", "3.0", "3.0", "12", "drifting"]
    # and a camera the workers report silent, its source down, shows so
    assert _row(text, "cam-c")[1:] == ["down", "0.0", "-", "-", "silent"]
    assert "every 2s" in text


def test_a_restarted_process_has_no_rate_until_the_next_snapshot() -> None:
    # Given a worker whose counters went down between two snapshots (it restarted)
    before, now = _snapshot(T0 - 2, 3), _snapshot(T0, 1)
    text = _text(status_table(now, before))
    # Then no negative rate is drawn
    assert _row(text, "worker")[6] == "-"
    assert _row(text, "cam-a")[2:4] == ["-", "-"]


def test_camera_state_prefers_silent_over_drifting_over_calibrating() -> None:
    worker = _worker(1, {"cam-x": 1}, {}, silent="cam-x", flag="cam-x")
    metrics = {"worker": parse_metrics(worker)}
    snapshot = StatusSnapshot(T0, "/s", True, _info(), metrics)
    assert camera_state(snapshot, "cam-x") == "silent"
    assert camera_state(snapshot, "cam-unknown") == "-"


def test_firing_alerts_are_listed_and_a_silent_prometheus_is_said() -> None:
    # Given Prometheus reports a firing and a pending alert
    down = {"alertname": "CameraDown", "camera": "cam-c", "severity": "page"}
    target = {"alertname": "TargetDown", "instance": "127.0.0.1:9004", "job": "camstream-view"}
    alerts: Alerts = [
        {"labels": down, "state": "firing", "activeAt": "2027-01-15T08:00:05.123Z"},
        {"labels": target, "state": "pending", "activeAt": "2027-01-15T08:00:09Z"},
    ]
    text = _text(status_table(_snapshot(T0, 1, alerts=alerts)))
    # Then each is a row, with its labels (not its name or severity again)
    assert _row(text, "CameraDown")[1:] == ["firing", "camera=cam-c", "08:00:05"]
    assert _row(text, "TargetDown")[1] == "pending"
    # and a stack whose Prometheus does not answer says so; one with no alert says that
    assert "prometheus does not answer" in _text(status_table(_snapshot(T0, 1)))
    assert "no alerts" in _text(status_table(_snapshot(T0, 1, alerts=[])))


def test_no_stack_running_is_one_line_naming_the_folder() -> None:
    empty = StatusSnapshot(T0, "/srv/camstream", False, None)
    assert "no stack runs from /srv/camstream" in _text(status_table(empty))
    left = StatusSnapshot(T0, "/srv/camstream", False, StackInfo(launcher_pid=4242))
    assert "did not stop cleanly (pid 4242)" in _text(status_table(left))
    starting = StatusSnapshot(T0, "/srv/camstream", True, None)
    assert "a stack is starting" in _text(status_table(starting))


def test_the_same_snapshots_draw_the_same_table() -> None:
    before, now = _snapshot(T0 - 2, 1), _snapshot(T0, 2)
    assert _text(status_table(now, before)) == _text(status_table(now, before))
