"""`camstream up` as an operator runs it: predictions from every sample camera appear,
`camstream status` reports the endpoints, a worker that dies is started again, and
SIGTERM leaves no process, port, state file or shared memory behind."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from camstream.stack.process import port_open
from tests.support.stack import pid_alive

pytestmark = pytest.mark.integration


def _lines(stream: object, out: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        out.put(line)


def test_up_shows_every_sample_camera_and_sigterm_stops_everything(tmp_path: Path) -> None:
    # Given `camstream up` running with its own state dir
    state = tmp_path / "state"
    env = {**os.environ, "CAMSTREAM_STATE_DIR": str(state)}
    up = subprocess.Popen(
        [sys.executable, "-m", "camstream", "up", "--duration", "600"],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "up.stderr").open("w"),
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(up.stdout, lines), daemon=True).start()
    try:
        # When predictions flow, then every sample camera shows up in its output
        cameras = {"cam-street", "cam-bikes", "cam-conveyor"}
        seen: set[str] = set()
        deadline = time.monotonic() + 240
        while seen != cameras and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert up.poll() is None, (tmp_path / "up.stderr").read_text()[-3000:]
                continue
            if "seq=" in line:
                seen.add(line.split()[0])
        assert seen == cameras

        # and `camstream status` reports the stack's endpoints
        status = subprocess.run(
            [sys.executable, "-m", "camstream", "status"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        info = json.loads(status.stdout)
        assert info["running"] is True
        assert set(info["pids"]) == {"kafka", "triton", "worker", "producer", "view"}
        kafka_port = int(info["kafka_bootstrap"].rsplit(":", 1)[1])
        grpc_port = int(info["triton_grpc"].rsplit(":", 1)[1])
        assert port_open(kafka_port) and port_open(grpc_port)

        # When the worker dies, then `camstream up` starts another one
        first_worker = info["pids"]["worker"]
        os.kill(first_worker, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            time.sleep(1)
            info = json.loads((state / "stack.json").read_text())
            if info["pids"]["worker"] != first_worker and pid_alive(info["pids"]["worker"]):
                break
        assert info["pids"]["worker"] != first_worker, "the dead worker was not replaced"
        assert not pid_alive(first_worker)
    finally:
        # When it gets SIGTERM
        up.send_signal(signal.SIGTERM)
        returncode = up.wait(timeout=90)

    # Then it exits cleanly, and nothing it started is left
    assert returncode == 0, (tmp_path / "up.stderr").read_text()[-3000:]
    for name, pid in info["pids"].items():
        assert not pid_alive(pid), f"{name} (pid {pid}) outlived `camstream up`"
    assert not port_open(kafka_port)
    assert not port_open(grpc_port)
    for port in info["metrics_ports"].values():
        assert not port_open(port)
    assert not (state / "stack.json").exists()
    leftovers = [p.name for p in Path("/dev/shm").glob(f"camstream_triton_{up.pid}_*")]
    assert leftovers == []
