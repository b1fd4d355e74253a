"""Child processes of the local stack: started in their own process group, logged to a
file, waited on until ready, and stopped with SIGTERM then SIGKILL so none outlives us.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from camstream.errors import ServiceError

log = structlog.get_logger(__name__)

__all__ = ["ManagedProcess", "ServiceError", "free_port", "port_open", "tail"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the launcher dies, so a
    launcher killed with SIGKILL leaves no service behind."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass
class ManagedProcess:
    """One long-running child process with its own log file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    stop_timeout_s: float = 30.0
    _popen: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self._popen = subprocess.Popen(
                list(self.argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(self.env) if self.env is not None else None,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (only prctl; async-signal-safe)
            )
        log.info("process.started", service=self.name, pid=self._popen.pid, log=str(self.log_path))
        return self

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise ServiceError(f"{self.name} was never started")
        return self._popen.pid

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def wait_ready(self, check: Callable[[], bool], timeout_s: float) -> None:
        """Poll ``check`` until it holds; fail early, with the log's tail, if we exit."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                raise ServiceError(
                    f"{self.name} exited during start-up (see {self.log_path}):\n"
                    f"{tail(self.log_path)}"
                )
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.2)
        raise ServiceError(
            f"{self.name} was not ready after {timeout_s:.0f}s (see {self.log_path}):\n"
            f"{tail(self.log_path)}"
        )

    def signal(self, signum: int) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signum)

    def stop(self) -> int | None:
        """SIGTERM the process group, wait, then SIGKILL; returns the exit code."""
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self._popen.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("process.kill", service=self.name, after_s=self.stop_timeout_s)
                self.signal(signal.SIGKILL)
                self._popen.wait(10)
            # Reap what is left of the group (children that ignored the TERM). The group
            # id cannot have been reused: it was ours until a moment ago.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        log.info("process.stopped", service=self.name, returncode=self._popen.returncode)
        return self._popen.returncode
