"""`camstream up` keeps itself up: one stack per state folder, every service watched.

One stack (the sample cameras' producers included) runs for the module, as an operator
runs it; the tests act on it from outside, by a second `up` and by SIGKILL, and read
its console and its topics the way a person and a downstream service would.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from camstream.settings import Settings
from camstream.stack.process import group_members, process_start_time

pytestmark = pytest.mark.integration

PREDICTION = re.compile(r"^(?P<camera>\S+)\s+seq=(?P<seq>\d+) .* e2e=(?P<e2e>\d+)ms")


@dataclass
class Up:
    """A running `camstream up`: its process, and its console lines as they came."""

    process: subprocess.Popen[str]
    state: Path
    env: dict[str, str]
    stderr_path: Path
    lines: list[tuple[float, str]] = field(default_factory=list)  # (wall time, line)
    _queue: queue.Queue[str] = field(default_factory=queue.Queue)

    @classmethod
    def start(cls, state: Path, stderr_path: Path) -> Up:
        # Every frame must get a prediction, however late: the staleness policy (frames
        # captured over max_frame_age_s ago are skipped and counted) is off here, so a
        # slow restart on a busy machine cannot pass for a loss, nor hide one.
        env = {**os.environ, "CAMSTREAM_STATE_DIR": str(state), "CAMSTREAM_MAX_FRAME_AGE_S": "0"}
        process = subprocess.Popen(
            [sys.executable, "-m", "camstream", "up", "--duration", "900"],
            stdout=subprocess.PIPE,
            stderr=stderr_path.open("w"),
            text=True,
            env=env,
        )
        up = cls(process, state, env, stderr_path)
        threading.Thread(target=up._read, daemon=True).start()
        return up

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))

    def info(self) -> dict[str, Any]:
        return dict(json.loads((self.state / "stack.json").read_text()))

    def predictions_after(self, wall: float) -> list[tuple[float, str]]:
        """Prediction lines of frames captured after ``wall`` (arrival - e2e)."""
        found = []
        for at, line in list(self.lines):
            match = PREDICTION.match(line)
            if match and at - int(match["e2e"]) / 1000 > wall:
                found.append((at, match["camera"]))
        return found

    def wait_predictions(self, after: float, cameras: set[str], timeout_s: float) -> float:
        """Wait until every camera in ``cameras`` has a prediction of a frame captured
        after ``after``; returns when the first of them came (wall time)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.predictions_after(after)
            if {camera for _, camera in got} >= cameras:
                return got[0][0]
            assert self.process.poll() is None, self.failure_text()
            time.sleep(0.2)
        raise AssertionError(
            f"no predictions of {sorted(cameras)} after {timeout_s:.0f}s\n" + self.failure_text()
        )

    def console_since(self, wall: float) -> list[str]:
        """Console lines since ``wall`` that are not predictions."""
        return [
            line
            for at, line in list(self.lines)
            if at >= wall and not PREDICTION.match(line) and "DRIFT=" not in line
        ]

    def failure_text(self) -> str:
        console = "\n".join(line for _, line in self.lines[-40:])
        return f"console:\n{console}\nstderr:\n{self.stderr_path.read_text()[-3000:]}"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)


def _alive(pid: int, start_time: int | None) -> bool:
    return start_time is not None and process_start_time(pid) == start_time


def _services(info: dict[str, Any]) -> dict[str, tuple[int, int | None]]:
    return {
        name: (int(entry["pid"]), entry.get("start_time"))
        for name, entry in info["services"].items()
        if entry.get("pid")
    }


def _wait_service_restarted(up: Up, name: str, old_pid: int, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            info = up.info()
            entry = info["services"].get(name, {})
            if entry.get("state") == "running" and entry.get("pid") not in (None, old_pid):
                return info
        assert up.process.poll() is None, up.failure_text()
        time.sleep(0.2)
    raise AssertionError(f"{name} was not restarted in {timeout_s:.0f}s\n" + up.failure_text())


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    state = tmp_path_factory.mktemp("supervised") / "state"
    stack = Up.start(state, state.parent / "up.stderr")
    try:
        stack.wait_predictions(time.time(), {"cam-street", "cam-bikes"}, timeout_s=240)
        yield stack
    finally:
        stack.stop()


def test_up_serves_the_live_view_of_its_cameras(up: Up) -> None:
    # Given `camstream up` running with its sample cameras
    up.wait_predictions(time.time() - 1, {"cam-street", "cam-bikes"}, timeout_s=120)
    info = up.info()
    # Then stack.json names the live view, the console printed it, and it answers
    url = info["view_url"]
    assert url.startswith("http://127.0.0.1:"), info
    assert any(f"live view       : {url}" in line for _at, line in up.lines)
    assert info["services"]["view"]["state"] == "running"
    # with a live tile per sample camera: a label and a thumbnail, from the stack's topics
    deadline = time.monotonic() + 60
    tiles: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url + "api/cameras", timeout=5) as response:
            tiles = {t["camera"]: t for t in json.loads(response.read())["tiles"]}
        if all(
            tiles.get(c, {}).get("label") and tiles[c]["thumb"] for c in ("cam-street", "cam-bikes")
        ):
            break
        time.sleep(1)
    assert {"cam-street", "cam-bikes"} <= set(tiles), tiles
    for camera in ("cam-street", "cam-bikes"):
        assert tiles[camera]["label"] and tiles[camera]["thumb"], tiles[camera]
        assert tiles[camera]["status"] == "live", tiles[camera]


def _cli(up: Up, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "camstream", *args],
        env=up.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _tiles(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "api/cameras", timeout=5) as response:
        return {t["camera"]: t for t in json.loads(response.read())["tiles"]}


def _until(what: str, check: Any, timeout_s: float, up: Up) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = check()
        if answer:
            return answer
        assert up.process.poll() is None, up.failure_text()
        time.sleep(0.5)
    raise AssertionError(f"not after {timeout_s:.0f}s: {what}\n{up.failure_text()}")


def test_a_camera_added_to_the_registry_is_produced_and_shown_and_one_removed_stops(
    up: Up,
) -> None:
    # Given `camstream up`, whose producer follows the Feast registry
    info = up.info()
    producer = info["services"]["producer"]["pid"]
    url = info["view_url"]
    # When an operator registers a camera with a source
    added = time.time()
    _cli(up, "cameras", "add", "cam-added", "--source", "synthetic:320x240", "--fps", "4")
    # Then its frames are predicted within seconds, by the same producer process
    up.wait_predictions(added, {"cam-added"}, timeout_s=60)
    first = min(at for at, camera in up.predictions_after(added) if camera == "cam-added")
    print(f"\ncam-added: first prediction {first - added:.1f}s after `cameras add` began")
    assert up.info()["services"]["producer"]["pid"] == producer
    # and the view shows its tile, live
    _until(
        "a live tile for cam-added",
        lambda: _tiles(url).get("cam-added", {}).get("status") == "live",
        30,
        up,
    )
    # When it is removed
    _cli(up, "cameras", "remove", "cam-added")
    removed = time.time()
    # Then its tile goes, and no frame of it captured after a poll is predicted
    _until("cam-added's tile gone", lambda: "cam-added" not in _tiles(url), 30, up)
    up.wait_predictions(removed + 4, {"cam-street", "cam-bikes"}, timeout_s=60)
    late = [at for at, camera in up.predictions_after(removed + 3) if camera == "cam-added"]
    assert late == [], f"{len(late)} predictions of cam-added after it was removed"
    # and the others ran on untouched: the same producer, cam-street never reopened
    assert up.info()["services"]["producer"]["pid"] == producer
    producer_log = (up.state / "logs" / "producer.log").read_text()
    assert "fleet.camera_added" in producer_log and "fleet.camera_removed" in producer_log
    street = [
        line
        for line in producer_log.splitlines()
        if "fleet.camera_" in line and '"camera": "cam-street"' in line
    ]
    assert len(street) == 1 and "fleet.camera_added" in street[0], street


def test_second_up_in_the_same_folder_refuses_with_the_pid_and_the_first_keeps_predicting(
    up: Up,
) -> None:
    # Given a stack predicting from its folder
    before = up.info()
    started = time.time()
    # When a second `up` starts in the same folder
    second = subprocess.run(
        [sys.executable, "-m", "camstream", "up", "--duration", "30"],
        check=False,
        env=up.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.time() - started
    # Then it refuses at once, in one line naming the running stack's pid and the fix
    assert second.returncode == 1, second.stdout + second.stderr
    message = second.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert f"pid {up.process.pid}" in message
    assert "camstream status" in message and "CAMSTREAM_STATE_DIR" in message
    assert "Traceback" not in second.stdout + second.stderr
    # and touches nothing of the running stack
    after = up.info()
    assert after["kafka_bootstrap"] == before["kafka_bootstrap"]
    assert _services(after) == _services(before)
    assert all(_alive(pid, start) for pid, start in _services(after).values())
    # and the first keeps predicting, with no gap longer than a second (or than the
    # longest gap of the same stack in the 10 s before: 2 shared cores stall too)
    time.sleep(2)
    during = _gaps(up, started - 1, time.time())
    before_gap = max(_gaps(up, started - 11, started - 1), default=0.0)
    print(
        f"\nsecond `up` refused in {took:.1f}s; longest gap between predictions meanwhile: "
        f"{max(during, default=0):.2f}s (in the 10 s before: {before_gap:.2f}s)"
    )
    assert len(during) > 10
    assert max(during) < max(1.0, before_gap + 0.5)


def _gaps(up: Up, start: float, end: float) -> list[float]:
    times = [at for at, line in list(up.lines) if start <= at <= end and PREDICTION.match(line)]
    return [b - a for a, b in itertools.pairwise(times)]


def _kafka_consumer(bootstrap: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )


def _read_up_to_now(bootstrap: str, topic: str, timeout_s: float = 60) -> list[Any]:
    """Every committed record of ``topic``, up to its end as of now."""
    consumer = _kafka_consumer(bootstrap)
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = [TopicPartition(topic, p) for p in metadata.topics[topic].partitions]
        ends = {
            tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions
        }
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        records: list[Any] = []
        pending = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            records.append(msg)
            if msg.offset() >= ends[msg.partition()] - 1:
                pending.discard(msg.partition())
        assert not pending, f"{topic}: could not read partitions {pending} to their end"
        return records
    finally:
        consumer.close()


def _key_seq(records: list[Any], json_value: bool) -> list[tuple[str, int]]:
    found = []
    for msg in records:
        camera = (msg.key() or b"").decode()
        if json_value:
            seq = int(json.loads(msg.value())["seq"])
        else:
            seq = int(dict(msg.headers() or [])["seq"].decode())
        found.append((camera, seq))
    return found


def test_each_killed_service_is_reported_restarted_and_no_frame_is_lost(up: Up) -> None:
    cameras = {"cam-street", "cam-bikes"}
    recovery: dict[str, float] = {}
    kills: list[tuple[float, str]] = []
    console: dict[str, list[str]] = {}
    for name in ("kafka", "triton", "worker", "producer"):
        # Given predictions flowing
        up.wait_predictions(time.time() - 1, cameras, timeout_s=60)
        pid = up.info()["services"][name]["pid"]
        # When the service is killed with SIGKILL
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        kills.append((killed_at, name))
        # Then the stack starts it again, and predictions resume by themselves
        info = _wait_service_restarted(up, name, pid, timeout_s=120)
        resumed_at = up.wait_predictions(killed_at, cameras, timeout_s=120)
        recovery[name] = resumed_at - killed_at
        assert info["services"][name]["restarts"] >= 1
        time.sleep(1)
        console[name] = up.console_since(killed_at)
        # and the console says so in a few lines: the exit (with the signal and the
        # log), then that it is back
        said = "\n".join(console[name])
        assert f"{name} exited (killed by SIGKILL" in said, up.failure_text()
        assert f"{name} is back" in said, up.failure_text()
        assert len(console[name]) <= 6, said

    print("\nkill -9 -> predictions of frames captured after the kill, per service:")
    for name, seconds in recovery.items():
        print(f"  {name:<9} {seconds:5.1f}s  console lines: {len(console[name])}")
        for line in console[name]:
            print(f"      | {line}")

    # And `camstream status` shows each service's state and restart count
    status = subprocess.run(
        [sys.executable, "-m", "camstream", "status"],
        env=up.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    services = json.loads(status.stdout)["services"]
    for name in ("kafka", "triton", "worker", "producer"):
        assert services[name]["state"] == "running"
        assert services[name]["restarts"] == 1
    # and the stack's metrics count the restarts
    info = up.info()
    from urllib.request import urlopen

    port = info["metrics_ports"]["stack"]
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    for name in ("kafka", "triton", "worker", "producer"):
        assert f'camstream_stack_restarts_total{{service="{name}"}} 1.0' in metrics

    # And every frame that reached Kafka has exactly one prediction (or a counted
    # duplicate): none lost
    settings = Settings(topic_prefix=info["topic_prefix"])
    frames = _key_seq(_read_up_to_now(info["kafka_bootstrap"], settings.frames_topic), False)
    wanted = Counter(frames)
    # (the worker may still work through a backlog on a busy machine: wait while the
    # number of frames without a prediction keeps falling)
    lost: list[tuple[str, int]] = list(wanted)
    records: list[Any] = []
    predicted: Counter[tuple[str, int]] = Counter()
    last_progress = time.monotonic()
    deadline = time.monotonic() + 300
    while lost and time.monotonic() < deadline and time.monotonic() - last_progress < 30:
        records = _read_up_to_now(info["kafka_bootstrap"], settings.predictions_topic)
        predicted = Counter(_key_seq(records, True))
        still = [f for f in wanted if f not in predicted]
        if len(still) < len(lost):
            last_progress = time.monotonic()
        lost = still
        if lost:
            time.sleep(2)
    duplicates = sum(n - 1 for f, n in predicted.items() if f in wanted and n > 1)
    # Each duplicate, counted against the first kill after its frame was captured
    # (at least once: a worker killed before it commits reads those frames again)
    captured = {
        (m.key().decode(), json.loads(m.value())["seq"]): json.loads(m.value())["capture_ts_ms"]
        for m in records
    }
    after_kill: Counter[str] = Counter()
    for frame, n in predicted.items():
        if n > 1:
            later = [k for at, k in kills if at * 1000 >= captured[frame]]
            after_kill[later[0] if later else "none"] += n - 1
    print(f"duplicates by the kill that caused them: {dict(after_kill)}")
    print(
        f"frames delivered: {len(wanted)}, predicted: {len(wanted) - len(lost)}, "
        f"lost: {len(lost)}, duplicates: {duplicates}, "
        f"frames written twice by a producer: {sum(n - 1 for n in wanted.values())}"
    )
    # Each lost frame, placed by its capture time (the frames topic's header) against
    # the kills, to show which outage lost it
    frame_ts = {
        (m.key().decode(), int(dict(m.headers() or [])["seq"].decode())): int(
            dict(m.headers() or [])["capture-ts-ms"].decode()
        )
        for m in _read_up_to_now(info["kafka_bootstrap"], settings.frames_topic)
    }
    lost_by_kill: Counter[str] = Counter()
    for frame in lost:
        later = [k for at, k in kills if at * 1000 >= frame_ts.get(frame, 0)]
        lost_by_kill[f"before the {later[0]} kill" if later else "after the last kill"] += 1
    spans = sorted(frame_ts[f] / 1000 - kills[0][0] for f in lost if f in frame_ts)
    print(f"lost by the kill that followed their capture: {dict(lost_by_kill)}")
    if spans:
        print(f"lost frames captured {spans[0]:+.1f}s .. {spans[-1]:+.1f}s from the Kafka kill")
    assert len(wanted) > 100
    assert lost == [], f"lag: {_worker_lag(info)}; lost: {dict(lost_by_kill)}"

    # And the console's stderr holds no client library's noise
    noise = [line for line in up.stderr_path.read_text().splitlines() if line.strip()]
    assert len(noise) <= 2, "\n".join(noise[:20])


def _worker_lag(info: dict[str, Any]) -> str:
    from urllib.request import urlopen

    with urlopen(f"http://127.0.0.1:{info['metrics_ports']['worker']}/metrics", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return "; ".join(line for line in lines if line.startswith("camstream_worker_consumer_lag"))


def test_a_sigkilled_stack_leaves_a_folder_the_next_up_starts_from(up: Up) -> None:
    # Given the stack killed with SIGKILL, the launcher and every service at once
    # (only the services: their children, Triton's python stubs, are left behind)
    info = up.info()
    services = _services(info)
    children = {
        pid: process_start_time(pid)
        for leader, start in services.values()
        if start is not None
        for pid in group_members(leader, start)
    }
    assert len(children) > len(services)
    up.process.kill()
    for pid, _start in services.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    up.process.wait(30)
    assert (up.state / "stack.json").exists()
    # When `up` starts again in the same folder
    started = time.time()
    again = Up.start(up.state, up.state.parent / "up-again.stderr")
    try:
        # Then it says it recovered the folder, and predictions flow
        again.wait_predictions(started, {"cam-street", "cam-bikes"}, timeout_s=240)
        said = "\n".join(again.console_since(started))
        assert "recovered" in said and f"pid {up.process.pid}" in said, said
        assert all(not _alive(pid, start) for pid, start in services.values())
        assert [p for p, start in children.items() if _alive(p, start)] == []
        assert list(Path("/dev/shm").glob(f"{info['triton_shm_prefix']}*")) == []
    finally:
        returncode = again.stop()
    # and it stops cleanly
    assert returncode == 0, again.failure_text()
    assert not (up.state / "stack.json").exists()
