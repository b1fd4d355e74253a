"""The stack's health as `camstream status --watch` shows it: ``collect_status`` takes a
snapshot of a state folder (its state file, every metrics port it names, its
Prometheus' alerts), and ``status_table`` draws two snapshots (rates come from their
difference) as rich tables: services, cameras, alerts. The drawing is a pure function,
unit-tested on snapshots made by hand."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from camstream.errors import CamstreamError

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table
    from rich.text import Text

    from camstream.stack.local import StackInfo


# A metrics endpoint's samples: sample name -> [(labels, value)].
Samples = dict[str, list[tuple[dict[str, str], float]]]
Justify = Literal["left", "right"]

_STYLE = {
    "running": "green",
    "ok": "green",
    "up": "green",
    "failed": "bold red",
    "silent": "bold red",
    "firing": "bold red",
    "down": "red",
    "drifting": "yellow",
    "calibrating": "cyan",
}
# Counters that say how much work a service does (its "rate" column).
_WORK = (
    "camstream_worker_frames_consumed_total",
    "camstream_producer_frames_published_total",
    "camstream_view_records_total",
)


def left_note(info: StackInfo) -> str:
    """What `status` says of a state file whose stack is gone."""
    return (
        f"left by a stack that did not stop cleanly (pid {info.launcher_pid}); "
        "the next `camstream up` recovers it"
    )


@dataclass(frozen=True)
class StatusSnapshot:
    """The stack of a state folder at one moment, as `status --watch` shows it: its
    state file, whether a stack holds the folder, each metrics port's samples (by
    service; absent where the port did not answer) and Prometheus' alerts (None
    without a Prometheus, or when it did not answer)."""

    at: float
    state_dir: str
    running: bool
    info: StackInfo | None
    metrics: dict[str, Samples] = field(default_factory=dict)
    alerts: list[dict[str, Any]] | None = None


def parse_metrics(text: str) -> Samples:
    """The samples of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def collect_status(state_dir: Path, timeout_s: float = 1.0) -> StatusSnapshot:
    """Read the state file, scrape every metrics port it names and ask its Prometheus
    (if any) for alerts; whatever does not answer is left out."""
    import urllib.request

    from camstream.stack.local import read_state, stack_holder
    from camstream.stack.prometheus import PrometheusAPI

    running = stack_holder(state_dir) is not None
    info = read_state(state_dir)
    metrics: dict[str, Samples] = {}
    alerts = None
    if running and info is not None:
        for name, port in sorted(info.metrics_ports.items()):
            url = f"http://127.0.0.1:{port}/metrics"
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(url, timeout=timeout_s) as response,
            ):
                metrics[name] = parse_metrics(response.read().decode())
        if info.prometheus_url:
            with contextlib.suppress(OSError, ValueError, CamstreamError):
                alerts = PrometheusAPI(info.prometheus_url, timeout_s).alerts()
    return StatusSnapshot(time.time(), str(state_dir), running, info, metrics, alerts)


def _sum_by(samples: Samples, name: str, label: str = "") -> dict[str, float]:
    """``name``'s values summed by ``label`` (all of them under '' without one)."""
    sums: dict[str, float] = {}
    for labels, value in samples.get(name, []):
        key = labels.get(label, "") if label else ""
        sums[key] = sums.get(key, 0.0) + value
    return sums


def _of_kind(snapshot: StatusSnapshot, kind: str, name: str, label: str) -> dict[str, float]:
    """``_sum_by`` over every service of a kind: ``worker`` is worker, worker-2, ..."""
    sums: dict[str, float] = {}
    for service, samples in snapshot.metrics.items():
        if service == kind or service.startswith(f"{kind}-"):
            for key, value in _sum_by(samples, name, label).items():
                sums[key] = sums.get(key, 0.0) + value
    return sums


def _work(snapshot: StatusSnapshot) -> dict[str, float]:
    """Each service's work counter (frames consumed, published, records read)."""
    return {
        service: sum(_sum_by(samples, name).values())
        for service, samples in snapshot.metrics.items()
        for name in _WORK
        if name in samples
    }


def _published(snapshot: StatusSnapshot) -> dict[str, float]:
    return _of_kind(snapshot, "producer", "camstream_producer_frames_published_total", "camera")


def _predicted(snapshot: StatusSnapshot) -> dict[str, float]:
    return _of_kind(snapshot, "worker", "camstream_worker_predictions_total", "camera")


def _rates(
    now: StatusSnapshot,
    before: StatusSnapshot | None,
    counters: Callable[[StatusSnapshot], dict[str, float]],
) -> dict[str, float]:
    """Per-second increase of each counter between two snapshots; one that went down
    (its process restarted) or is new has no rate yet."""
    if before is None or now.at <= before.at:
        return {}
    then, elapsed = counters(before), now.at - before.at
    return {
        key: (value - then[key]) / elapsed
        for key, value in counters(now).items()
        if key in then and value >= then[key]
    }


def _styled(word: str) -> Text:
    from rich.text import Text

    return Text(word, style=_STYLE.get(word, "yellow" if word not in ("", "-") else ""))


def _age(seconds: float) -> str:
    whole = max(int(seconds), 0)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _table(title: str, columns: str, right: str = "") -> Table:
    """A table with ``columns`` (comma-separated); those in ``right`` right-aligned."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", title_style="bold")
    aligned = {c.strip() for c in right.split(",")}
    for name in (c.strip() for c in columns.split(",")):
        justify: Justify = "right" if name in aligned else "left"
        table.add_column(name, justify=justify, no_wrap=name != "last exit")
    return table


def _endpoints(info: StackInfo) -> Table:
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    started = time.strftime("%H:%M:%S", time.localtime(info.started_at))
    grid.add_row(
        "stack", Text.assemble(_styled(info.state), f"  since {started}  {info.state_dir}")
    )
    for name, value in (
        ("kafka", info.kafka_bootstrap),
        ("triton", info.triton_grpc),
        ("view", info.view_url),
        ("prometheus", info.prometheus_url),
    ):
        if value:
            grid.add_row(name, value)
    return grid


def _services(now: StatusSnapshot, before: StatusSnapshot | None, info: StackInfo) -> Table:
    """The supervisor's view of each service, and what its metrics say of its work."""
    from rich.text import Text

    table = _table(
        "services",
        "service, state, pid, restarts, up for, lag, rate /s, last exit",
        right="pid, restarts, up for, lag, rate /s",
    )
    rates = _rates(now, before, _work)
    for name, entry in info.services.items():
        samples = now.metrics.get(name)
        if name in info.metrics_ports and samples is None:
            rate = Text("no metrics", style="red")
        else:
            rate = Text(f"{rates[name]:.1f}" if name in rates else "-")
        lag = _sum_by(samples or {}, "camstream_worker_consumer_lag")
        since = entry.get("since")
        table.add_row(
            name,
            _styled(str(entry.get("state", "?"))),
            str(entry.get("pid", "")),
            str(entry.get("restarts", 0)),
            _age(now.at - float(since)) if since else "",
            f"{lag['']:.0f}" if lag else "",
            rate,
            str(entry.get("last_exit") or ""),
        )
    return table


def camera_state(now: StatusSnapshot, camera: str) -> str:
    """silent, drifting, calibrating or ok, from the workers' gauges; - before any
    prediction of it."""
    for state, gauge in (
        ("silent", "camstream_drift_silent"),
        ("drifting", "camstream_drift_flag"),
        ("calibrating", "camstream_drift_calibrating"),
    ):
        if _of_kind(now, "worker", gauge, "camera").get(camera):
            return state
    return "ok" if camera in _predicted(now) else "-"


def _cameras(now: StatusSnapshot, before: StatusSnapshot | None) -> Table:
    """Each camera from both sides: its producer's (source, published) and the
    workers' (predictions, drift and silence)."""
    table = _table(
        "cameras",
        "camera, source, fps in, fps out, predictions, state",
        right="fps in, fps out, predictions",
    )
    fps_in, fps_out = _rates(now, before, _published), _rates(now, before, _predicted)
    source_up = _of_kind(now, "producer", "camstream_producer_camera_up", "camera")
    predictions = _predicted(now)
    for camera in sorted(set(_published(now)) | set(predictions) | set(source_up)):
        source = "-" if camera not in source_up else ("up" if source_up[camera] else "down")
        table.add_row(
            camera,
            _styled(source),
            f"{fps_in[camera]:.1f}" if camera in fps_in else "-",
            f"{fps_out[camera]:.1f}" if camera in fps_out else "-",
            f"{predictions[camera]:.0f}" if camera in predictions else "-",
            _styled(camera_state(now, camera)),
        )
    return table


def _alerts(alerts: list[dict[str, Any]]) -> Table:
    table = _table("alerts", "alert, state, labels, since")
    for alert in sorted(alerts, key=lambda a: (a["state"], a["labels"].get("alertname", ""))):
        labels = alert["labels"]
        shown = {k: v for k, v in labels.items() if k not in ("alertname", "severity")}
        table.add_row(
            str(labels.get("alertname", "?")),
            _styled(str(alert["state"])),
            " ".join(f"{k}={v}" for k, v in sorted(shown.items())),
            str(alert.get("activeAt", ""))[11:19],  # RFC 3339: the time of day (UTC)
        )
    return table


def status_table(
    now: StatusSnapshot, before: StatusSnapshot | None = None, interval_s: float | None = None
) -> RenderableType:
    """The health of a stack, for a person: its endpoints; its services (state,
    restarts, how long up, consumer lag, work rate); its cameras (source up, fps in and
    out, predictions, drift or silence); Prometheus' alerts. Rates compare ``now`` with
    ``before`` ('-' without it). Pure: the same snapshots always draw the same table."""
    from rich.console import Group
    from rich.text import Text

    clock = time.strftime("%H:%M:%S", time.localtime(now.at))
    every = f", every {interval_s:g}s (Ctrl-C to quit)" if interval_s else ""
    info = now.info
    if not now.running or info is None:
        if now.running:
            said = f"a stack is starting in {now.state_dir}"
        else:
            said = f"no stack runs from {now.state_dir}"
            said += f": {left_note(info)}" if info is not None else ""
        return Group(Text(said, style="yellow"), Text(f"{clock}{every}", style="dim"))
    parts: list[RenderableType] = [_endpoints(info), _services(now, before, info)]
    parts.append(_cameras(now, before))
    if now.alerts:
        parts.append(_alerts(now.alerts))
    elif info.prometheus_url:
        parts.append(
            Text("no alerts", style="green")
            if now.alerts is not None
            else Text("prometheus does not answer", style="red")
        )
    lag = sum(_of_kind(now, "worker", "camstream_worker_consumer_lag", "").values())
    parts.append(Text(f"lag {lag:.0f} frames · {clock}{every}", style="dim"))
    return Group(*parts)
