"""The local stack's folder lock and supervisor, against real child processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from camstream.errors import StackRunning
from camstream.stack.process import StackLock, describe_exit, last_error_line
from camstream.stack.supervisor import RestartPolicy, Supervisor, Watched

FAST = RestartPolicy(first_delay_s=0.05, max_delay_s=0.2, healthy_after_s=60, max_failures=3)


def test_second_lock_on_a_folder_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    # Given a folder locked by another process
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from camstream.stack.process import StackLock; "
            f"StackLock(__import__('pathlib').Path({str(tmp_path)!r})).acquire(); "
            "print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        # When this process asks for it, then it is refused at once, naming the pid
        started = time.monotonic()
        with pytest.raises(StackRunning) as refused:
            StackLock(tmp_path).acquire()
        assert time.monotonic() - started < 2
        assert f"pid {holder.pid}" in str(refused.value)
        assert "camstream status" in str(refused.value)
        assert StackLock(tmp_path).holder() is not None
    finally:
        holder.kill()
        holder.wait()
    # and once the holder is killed, the kernel has released it
    assert StackLock(tmp_path).holder() is None
    with StackLock(tmp_path) as lock:
        assert lock.held


def test_describe_exit_names_the_signal_or_the_code() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(None) == "exited"


def test_last_error_line_reads_only_this_runs_part_of_the_log(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text('{"event": "old", "level": "error"}\n')
    since = log.stat().st_size
    with log.open("a") as f:
        f.write("INFO fine\n")
        f.write('{"event": "worker.failed", "level": "error", "error": "boom"}\n')
        f.write("INFO still fine\n")
    assert last_error_line(log, since) == "worker.failed: boom"
    assert last_error_line(log, log.stat().st_size) is None


def test_last_error_line_skips_tritons_harmless_gpu_errors(tmp_path: Path) -> None:
    log = tmp_path / "triton.log"
    log.write_text(
        'E1202 18:22:46.498988 14196 server.cc:241] "CudaDriverHelper has not been initialized."\n'
        "I1202 18:22:47.000000 14196 server.cc:674] started\n"
    )
    assert last_error_line(log) is None


class _Service:
    """A real child process (sleep) that the supervisor watches."""

    def __init__(self, log_path: Path, fail_starts: int = 0) -> None:
        self.log_path = log_path
        self.fail_starts = fail_starts
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        if self.fail_starts:
            self.fail_starts -= 1
            raise RuntimeError("port busy")
        self.process = subprocess.Popen(["sleep", "60"])

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait()

    def watched(self, name: str) -> Watched:
        return Watched(name, self.running, self.start, self.stop, lambda: self.log_path, needs=())


def _wait(condition: object, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met")


def test_a_killed_service_is_reported_and_started_again(tmp_path: Path) -> None:
    # Given a watched service
    service = _Service(tmp_path / "svc.log")
    service.start()
    events: list[str] = []
    supervisor = Supervisor(
        [service.watched("svc")],
        on_event=events.append,
        on_change=lambda _s: None,
        on_give_up=events.append,
        policy=FAST,
        poll_s=0.02,
    ).start()
    try:
        # When it is killed
        assert service.process is not None
        first = service.process.pid
        service.process.kill()
        # Then it is reported in one line with the signal, and started again
        _wait(lambda: supervisor.status()["svc"]["restarts"] == 1)
        assert service.running() and service.process.pid != first
        assert supervisor.status()["svc"]["state"] == "running"
        assert any("svc exited (killed by SIGKILL" in e for e in events), events
        assert any("svc is back" in e for e in events), events
    finally:
        supervisor.halt()
        supervisor.join(5)
        service.stop()


def test_a_service_that_keeps_failing_gives_up_with_the_reason(tmp_path: Path) -> None:
    # Given a service whose restarts all fail
    service = _Service(tmp_path / "svc.log")
    service.start()
    service.fail_starts = 100
    reasons: list[str] = []
    gave_up = threading.Event()

    def give_up(reason: str) -> None:
        reasons.append(reason)
        gave_up.set()

    supervisor = Supervisor(
        [service.watched("svc")],
        on_event=lambda _e: None,
        on_change=lambda _s: None,
        on_give_up=give_up,
        policy=FAST,
        poll_s=0.02,
    ).start()
    try:
        # When it dies
        assert service.process is not None
        service.process.kill()
        # Then, after a few tries with backoff, the supervisor gives up with the reason
        assert gave_up.wait(10)
        assert "svc keeps failing" in reasons[0] and "port busy" in reasons[0]
        assert supervisor.status()["svc"]["state"] == "failed"
        assert service.starts - 1 == FAST.max_failures
    finally:
        supervisor.halt()
        supervisor.join(5)
        service.stop()


def test_backoff_doubles_up_to_its_limit() -> None:
    policy = RestartPolicy(first_delay_s=0.5, max_delay_s=4)
    assert [policy.delay_s(n) for n in (1, 2, 3, 4, 5, 6)] == [0.5, 1, 2, 4, 4, 4]
