"""`camstream up --prometheus` as an operator runs it: a real Prometheus (Debian's)
scrapes every process of the stack, two workers and two Triton servers included,
follows a worker that the supervisor restarts, is itself restarted on the same port
and data, shows in `camstream status` and its `--watch` table, and SIGTERM leaves none
of it behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from camstream.stack.local import read_state
from camstream.stack.process import port_open
from camstream.stack.prometheus import PrometheusAPI, stack_targets
from tests.support.stack import pid_alive

# A stack of its own (two workers, the sample cameras, Prometheus): ~4 minutes here.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CAMERAS = {"cam-street", "cam-bikes", "cam-conveyor"}
JOBS = {"camstream-stack", "camstream-worker", "camstream-producer", "camstream-view"}
T = TypeVar("T")


def _until(what: str, check: Callable[[], T | None], timeout_s: float, up: Up) -> T:
    """``check()``'s first true answer (its errors count as not yet); fails, with the
    console, after ``timeout_s`` or when `up` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            answer = check()
            if answer:
                return answer
        assert up.process.poll() is None, f"`up` exited\n{up.failure_text()}"
        time.sleep(0.5)
    raise AssertionError(f"not after {timeout_s:.0f}s: {what}\n{up.failure_text()}")


class Up:
    """A running `camstream up --prometheus --workers 2 --triton 2`, and its console
    lines."""

    def __init__(self, state: Path, env: dict[str, str], stderr: Path) -> None:
        self.state, self.env, self.stderr = state, env, stderr
        command = ["up", "--prometheus", "--workers", "2", "--triton", "2", "--quiet"]
        command += ["--duration", "900"]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "camstream", *command],
            stdout=subprocess.PIPE,
            stderr=stderr.open("w"),
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def info(self) -> dict[str, Any]:
        return dict(json.loads((self.state / "stack.json").read_text()))

    def failure_text(self) -> str:
        return "console:\n" + "\n".join(self.lines[-40:]) + f"\nstderr:\n{self.stderr.read_text()}"


def _running(info: dict[str, Any]) -> dict[str, Any] | None:
    return info if info["state"] == "running" else None


def _restarted(info: dict[str, Any], name: str, old_pid: int) -> dict[str, Any] | None:
    """The state file, once ``name`` runs again as another process than ``old_pid``."""
    entry = info["services"][name]
    return info if entry["state"] == "running" and entry["pid"] != old_pid else None


def _cell(table: str, row: str, column: int) -> str:
    """One cell of a table that `status --watch` drew ('' when the row is not there)."""
    for line in table.splitlines():
        cells = [c.strip() for c in re.split("[│|]", line)[1:-1]]  # unicode or ascii
        if cells and cells[0] == row:
            return cells[column]
    return ""


def _targets(prometheus: PrometheusAPI) -> dict[str, dict[str, Any]]:
    """Prometheus' active targets by address."""
    return {t["labels"]["instance"]: t for t in prometheus.active_targets()}


def test_up_with_prometheus_scrapes_every_process_follows_restarts_and_stops_clean(
    tmp_path: Path,
) -> None:
    # Given `camstream up --prometheus` with two workers, the sample cameras and the view
    state = tmp_path / "state"
    env = {**os.environ, "CAMSTREAM_STATE_DIR": str(state), "COLUMNS": "160"}
    started = time.monotonic()
    up = Up(state, env, tmp_path / "up.stderr")
    try:
        info = _until("the stack runs", lambda: _running(up.info()), 300, up)
        print(f"\n`up --prometheus --workers 2` running after {time.monotonic() - started:.0f}s")
        url = info["prometheus_url"]
        # Then `up` printed Prometheus' address, and stack.json names it
        assert url.startswith("http://127.0.0.1:"), info
        # (stack.json says running a moment before `up` prints its endpoints)
        line = f"  prometheus      : {url}"
        _until("`up` prints Prometheus' address", lambda: line in up.lines, 30, up)
        prometheus = PrometheusAPI(url)

        # and Prometheus scrapes every metrics port of the stack and Triton's, all up,
        # though it started before any of them (its targets followed the stack)
        stack = read_state(state)
        assert stack is not None
        wanted = {t.address: t.job for t in stack_targets(stack)}
        assert set(wanted.values()) == {*JOBS, "triton"}
        assert list(wanted.values()).count("camstream-worker") == 2
        # two Triton servers, each scraped, each listed for the workers
        assert list(wanted.values()).count("triton") == 2
        assert len(info["triton_grpc"].split(",")) == 2 == len(info["triton_shm_prefixes"])
        for port in info["triton_metrics_ports"]:
            assert f"  triton metrics  : http://127.0.0.1:{port}/metrics" in up.lines

        def all_up() -> dict[str, dict[str, Any]] | None:
            active = _targets(prometheus)
            ours = {a: t for a, t in active.items() if t["labels"]["job"] != "prometheus"}
            if set(ours) == set(wanted) and all(t["health"] == "up" for t in ours.values()):
                return active
            return None

        active = _until("every target of the stack is up", all_up, 90, up)
        assert {a: t["labels"]["job"] for a, t in active.items() if a in wanted} == wanted
        since = {name: entry["since"] for name, entry in info["services"].items()}
        first = ("triton", "triton-2", "worker", "worker-2")
        assert since["prometheus"] < min(since[name] for name in first)

        # and the workers' own metrics reach it: both ready, predicting every camera
        def both_ready() -> list[dict[str, Any]] | None:
            ready = prometheus.query("camstream_worker_ready == 1")
            return ready if len(ready) == 2 else None

        ready = _until("both workers report their model ready", both_ready, 60, up)
        assert {s["metric"]["job"] for s in ready} == {"camstream-worker"}

        def predicted() -> bool:
            by_camera = prometheus.query("sum by (camera) (camstream_worker_predictions_total)")
            return {s["metric"]["camera"] for s in by_camera} >= CAMERAS

        _until("predictions of every sample camera", predicted, 120, up)

        # and the workers send requests to both Triton servers, which serve them
        def both_serve() -> list[dict[str, Any]] | None:
            served = prometheus.query('sum by (instance) (nv_inference_count{job="triton"}) > 0')
            return served if len(served) == 2 else None

        _until("both Triton servers serve requests", both_serve, 60, up)

        # And `camstream status` names it, running
        status = subprocess.run(
            [sys.executable, "-m", "camstream", "status"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        report = json.loads(status.stdout)
        assert report["prometheus_url"] == url
        assert report["services"]["prometheus"]["state"] == "running"

        # and `status --watch` draws the table, refreshing, until SIGTERM (exit 0)
        watch = subprocess.Popen(
            [sys.executable, "-m", "camstream", "status", "--watch", "--interval", "1"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(8)
        watch.send_signal(signal.SIGTERM)
        table, errors = watch.communicate(timeout=30)
        assert watch.returncode == 0, errors
        tables = re.split(r"^services *$", table, flags=re.MULTILINE)[1:]
        assert len(tables) >= 3, table  # refreshed
        for word in ("prometheus", "worker-2", "triton-2", "producer", "view", *CAMERAS):
            assert word in tables[-1], tables[-1]
        assert f"prometheus  {url}" in table  # the endpoints, above each services table
        # with every service's metrics read, and rates from one table to the next
        complete = [t for t in tables if "no metrics" not in t and "does not answer" not in t]
        assert complete, tables[-1]
        assert any(_cell(t, "cam-street", 3) not in ("", "-") for t in complete[1:]), complete

        # When worker-2 is killed, the supervisor restarts it on the same port
        worker_2 = info["services"]["worker-2"]["pid"]
        address = f"127.0.0.1:{info['metrics_ports']['worker-2']}"
        assert wanted[address] == "camstream-worker"
        os.kill(worker_2, signal.SIGKILL)
        _until("worker-2 restarted", lambda: _restarted(up.info(), "worker-2", worker_2), 120, up)
        # Then Prometheus scrapes the new process there (WorkerRestarted's signal)
        restarted = _until(
            "Prometheus sees worker-2's new process",
            lambda: prometheus.query(
                f'changes(process_start_time_seconds{{instance="{address}"}}[15m]) > 0'
            ),
            60,
            up,
        )
        assert restarted[0]["metric"]["job"] == "camstream-worker"
        _until("worker-2's target is up again", all_up, 60, up)

        # When Prometheus itself is killed
        before_kill = time.time() - 2
        old_pid = up.info()["services"]["prometheus"]["pid"]
        os.kill(old_pid, signal.SIGKILL)
        after = _until(
            "Prometheus restarted", lambda: _restarted(up.info(), "prometheus", old_pid), 60, up
        )
        # Then it is back on the same address, with the data it had and every target
        assert after["prometheus_url"] == url
        assert after["services"]["prometheus"]["restarts"] == 1
        kept = _until(
            "the samples from before the kill",
            lambda: prometheus.query('up{job="camstream-worker"}', at=before_kill),
            30,
            up,
        )
        assert len(kept) == 2, kept
        _until("every target up after its restart", all_up, 60, up)
        said = "\n".join(up.lines)
        assert "prometheus exited (killed by SIGKILL" in said and "prometheus is back" in said
        info = up.info()
    finally:
        # When `up` gets SIGTERM
        if up.process.poll() is None:
            up.process.send_signal(signal.SIGTERM)
        returncode = up.process.wait(timeout=120)

    # Then it exits cleanly, and no process or port it started is left, Prometheus' too
    assert returncode == 0, up.failure_text()
    for name, pid in info["pids"].items():
        assert not pid_alive(pid), f"{name} (pid {pid}) outlived `camstream up`"
    prometheus_port = int(url.rsplit(":", 1)[1])
    assert not port_open(prometheus_port)
    for port in info["metrics_ports"].values():
        assert not port_open(port)
    assert not (state / "stack.json").exists()
    for prefix in info["triton_shm_prefixes"]:
        assert not list(Path("/dev/shm").glob(f"{prefix}*")), prefix
    print(f"whole test {time.monotonic() - started:.0f}s")
