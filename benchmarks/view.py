"""`camstream bench view`: the live view under load, on the real stack.

Cameras publish real frames (photos, so labels differ) at a steady rate through the
whole pipeline (Kafka -> worker -> Triton -> predictions); the view reads the topics
and serves ``clients`` event streams at once (server-sent events, as a page reads
them). Each client notes, for every tile whose prediction changed, how late it came:
its arrival minus the prediction's ``published_ts_ms`` (the worker's clock; one
machine). Figures: latency percentiles over every client, events and tile updates
received, cameras seen, the view's resident memory sampled each second (first and
last thirds' medians, and their difference: flat memory is a difference near 0), its
CPU, and the view's own counters of coalesced (dropped) updates.

``run_load`` measures against any running view (the integration test uses the session
stack); ``bench_view`` starts a local stack and a view of its own.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from camstream.records import FrameHeaders
from camstream.settings import Settings

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class EventStream(threading.Thread):
    """One client of ``/api/events``: reads events until ``halt``, keeping counts and
    the prediction-to-page latencies (bounded), not the events."""

    url: str
    token: str | None = None
    halt: threading.Event = field(default_factory=threading.Event)
    on_event: Callable[[str, dict[str, Any]], None] | None = None
    events: int = 0
    tile_updates: int = 0
    snapshots: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    cameras: set[str] = field(default_factory=set)
    error: str | None = None
    _seqs: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(daemon=True)

    def __hash__(self) -> int:
        return id(self)

    def run(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=2)
        headers = {"Accept": "text/event-stream"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            connection.request("GET", "/api/events", headers=headers)
            response = connection.getresponse()
            if response.status != 200:
                self.error = f"HTTP {response.status}: {response.read(300)!r}"
                return
            event, data = "message", ""
            while not self.halt.is_set():
                try:
                    raw = response.readline()
                except TimeoutError:
                    continue
                if not raw:
                    self.error = self.error or "the stream ended"
                    return
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data += line[6:]
                elif not line and data:
                    self._event(event, json.loads(data))
                    event, data = "message", ""
        except Exception as exc:  # a benchmark's client reports, never raises
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            connection.close()

    def _event(self, event: str, payload: dict[str, Any]) -> None:
        now_ms = time.time() * 1000
        self.events += 1
        if event == "snapshot":
            self.snapshots += 1
        for tile in payload.get("tiles", []):
            camera = tile["camera"]
            self.cameras.add(camera)
            self.tile_updates += 1
            seq = tile["seq"]
            changed = camera in self._seqs and seq != self._seqs[camera]
            if changed and tile["status"] == "live" and len(self.latencies_ms) < 200_000:
                self.latencies_ms.append(now_ms - tile["published_ts_ms"])
            self._seqs[camera] = seq
        if self.on_event is not None:
            self.on_event(event, payload)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (nearest rank), rounded; None without values (JSON has no NaN)."""
    ordered = sorted(values)
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def view_counters(metrics_url: str | None) -> dict[str, float]:
    """The view's own counters (coalesced, sent), from its metrics endpoint."""
    if not metrics_url:
        return {}
    import urllib.request

    wanted = (
        "camstream_view_tiles_coalesced_total",
        "camstream_view_tiles_sent_total",
        "camstream_view_sse_events_total",
    )
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            found[name.removeprefix("camstream_view_")] = float(value)
    return found


def run_load(
    url: str,
    *,
    clients: int,
    duration_s: float,
    view_pid: int,
    token: str | None = None,
    metrics_url: str | None = None,
    warmup_s: float = 3.0,
) -> dict[str, Any]:
    """``clients`` event streams on the view at ``url`` for ``duration_s``: latency from
    prediction to page, events, the view's memory and CPU."""
    streams = [EventStream(url, token) for _ in range(clients)]
    for stream in streams:
        stream.start()
    time.sleep(warmup_s)
    for stream in streams:  # the warm-up's latencies include the history replay
        stream.latencies_ms.clear()
    before = view_counters(metrics_url)
    samples: list[int] = []
    cpu0, wall0 = cpu_s(view_pid), time.monotonic()
    while time.monotonic() - wall0 < duration_s:
        samples.append(rss_bytes(view_pid))
        time.sleep(1.0)
    cpu = cpu_s(view_pid) - cpu0
    wall = time.monotonic() - wall0
    after = view_counters(metrics_url)
    for stream in streams:
        stream.halt.set()
    for stream in streams:
        stream.join(5)
    latencies = [v for s in streams for v in s.latencies_ms]
    third = max(1, len(samples) // 3)
    first, last = statistics.median(samples[:third]), statistics.median(samples[-third:])
    mib = 1024 * 1024
    return {
        "clients": clients,
        "duration_s": round(wall, 1),
        "clients_ok": sum(1 for s in streams if s.error is None and s.snapshots >= 1),
        "errors": sorted({s.error for s in streams if s.error}),
        "cameras_seen_min": min((len(s.cameras) for s in streams), default=0),
        "events": sum(s.events for s in streams),
        "tile_updates": sum(s.tile_updates for s in streams),
        "latency_samples": len(latencies),
        "latency_ms": {
            "p50": _quantile(latencies, 0.5),
            "p95": _quantile(latencies, 0.95),
            "p99": _quantile(latencies, 0.99),
            "max": _quantile(latencies, 1.0),
        },
        "rss_mib": {
            "first_third": round(first / mib, 1),
            "last_third": round(last / mib, 1),
            "growth": round((last - first) / mib, 1),
            "max": round(max(samples) / mib, 1),
        },
        "view_cpu_share": round(cpu / wall, 3),
        "view_counters": {k: after[k] - before.get(k, 0.0) for k in after},
    }


class FramePublisher(threading.Thread):
    """``cameras`` cameras publishing, in turn, the given JPEGs at ``fps`` each."""

    def __init__(
        self, bootstrap: str, topic: str, cameras: Sequence[str], jpegs: Sequence[bytes], fps: float
    ) -> None:
        super().__init__(daemon=True)
        self.cameras = list(cameras)
        self.jpegs = list(jpegs)
        self.fps = fps
        self.topic = topic
        self.halt = threading.Event()
        self.paused: set[str] = set()
        self.sent = 0
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})

    def run(self) -> None:
        from camstream.imaging import jpeg_dimensions

        sizes = [jpeg_dimensions(j) for j in self.jpegs]
        seq = 0
        start = time.monotonic()
        while not self.halt.is_set():
            seq += 1
            for index, camera in enumerate(self.cameras):
                if camera in self.paused:
                    continue
                which = (seq // 3 + index) % len(self.jpegs)  # a new photo every 3 frames
                meta = FrameHeaders(camera, seq, int(time.time() * 1000), *sizes[which])
                headers: list[tuple[str, str | bytes | None]] = list(meta.to_kafka())
                self.producer.produce(
                    self.topic, value=self.jpegs[which], key=camera.encode(), headers=headers
                )
                self.sent += 1
            self.producer.poll(0)
            self.halt.wait(max(0.0, start + seq / self.fps - time.monotonic()))
        self.producer.flush(15)

    def stop(self) -> None:
        self.halt.set()
        self.join(30)


def sample_jpegs(cache_dir: Path, width: int = 640) -> list[bytes]:
    """The sample photos (camstream setup's), as JPEGs ``width`` wide."""
    import cv2
    import numpy as np

    from camstream.imaging import encode_jpeg, fit_within
    from camstream.stack.assets import ensure_assets

    assets = ensure_assets(cache_dir)
    jpegs = []
    for path in sorted(assets.photos.values()):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"sample photo {path} cannot be read: run `camstream setup`")
        jpegs.append(encode_jpeg(fit_within(np.asarray(image, np.uint8), width, width), 85))
    return jpegs


def bench_view(
    settings: Settings,
    *,
    cameras: int = 32,
    clients: int = 20,
    duration_s: float = 60.0,
    fps: float = 1.0,
) -> dict[str, Any]:
    """A local stack, ``cameras`` cameras at ``fps``, a view and ``clients`` streams."""
    from camstream.stack.local import LocalStack
    from camstream.stack.process import free_port
    from camstream.stack.setup import prepare
    from camstream.view.launch import ViewProcess

    with tempfile.TemporaryDirectory(prefix="camstream-bench-view-") as tmp:
        state = Path(tmp)
        stack_settings = settings.model_copy(update={"state_dir": state})
        prepare(stack_settings)
        stack = LocalStack(stack_settings)
        view: ViewProcess | None = None
        publisher: FramePublisher | None = None
        try:
            info = stack.start()
            metrics_port = free_port()
            view = ViewProcess(
                stack.child_settings(metrics_port=metrics_port),
                state / "logs",
                extra_args=("--history-s", "0"),
            )
            url = view.start()
            names = [f"bench-{i:02d}" for i in range(cameras)]
            publisher = FramePublisher(
                info.kafka_bootstrap,
                stack_settings.frames_topic,
                names,
                sample_jpegs(settings.cache_dir),
                fps,
            )
            publisher.start()
            time.sleep(5)  # every camera's first predictions
            figures = run_load(
                url,
                clients=clients,
                duration_s=duration_s,
                view_pid=view.pid,
                metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            )
            figures.update(cameras=cameras, fps_per_camera=fps, frames_published=publisher.sent)
            return figures
        finally:
            if publisher is not None:
                publisher.stop()
            if view is not None:
                view.stop()
            stack.stop()


def table(figures: dict[str, Any]) -> str:
    lat, rss = figures["latency_ms"], figures["rss_mib"]
    return "\n".join(
        [
            f"view under load: {figures.get('cameras', '?')} cameras x "
            f"{figures.get('fps_per_camera', '?')} fps, {figures['clients']} event streams, "
            f"{figures['duration_s']} s",
            f"prediction -> page latency ms: p50 {lat['p50']}  p95 {lat['p95']}  "
            f"p99 {lat['p99']}  max {lat['max']}  ({figures['latency_samples']} updates)",
            f"events {figures['events']}, tile updates {figures['tile_updates']}, "
            f"streams ok {figures['clients_ok']}/{figures['clients']}, "
            f"cameras seen (fewest on a stream) {figures['cameras_seen_min']}",
            f"view memory MiB: first third {rss['first_third']}, last third "
            f"{rss['last_third']} (growth {rss['growth']}), max {rss['max']}; "
            f"view CPU {figures['view_cpu_share']:.0%} of a core",
            f"view counters: {figures['view_counters']}",
        ]
    )
