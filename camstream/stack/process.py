"""Child processes of the local stack: started in their own process group, logged to a
file, waited on until ready, and stopped with SIGTERM then SIGKILL so none outlives us;
and what their logs and exits say (``last_error_line``, ``describe_exit``), for the
supervisor (camstream.stack.supervisor) and for start-up errors. ``StackLock`` makes a
state folder serve one stack at a time (a ``camstream.locks.HeldLock``).

This module imports only the standard library (and structlog, and camstream's errors and
locks, which import no more): a second `camstream up` checks the lock and refuses before
anything heavy is loaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import structlog

from camstream.errors import ServiceError, StackRunning
from camstream.locks import HeldLock

log = structlog.get_logger(__name__)

__all__ = [
    "LockHolder",
    "ManagedProcess",
    "ServiceError",
    "StackLock",
    "describe_exit",
    "free_port",
    "group_members",
    "last_error_line",
    "log_size",
    "port_open",
    "process_start_time",
    "tail",
]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the launcher dies, so a
    launcher killed with SIGKILL leaves no service behind. Linux sends it when the
    *thread* that started the child ends: start children from threads that live as long
    as the stack (the main thread, the supervisor's watchers)."""
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


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# What an error looks like in our services' logs: JSON lines at error level (our own
# processes), log4j's ERROR/FATAL (Kafka), glog's E/F prefix (Triton), Python's last
# traceback line.
_ERROR_LINE = re.compile(
    r'"level": "(error|critical|exception)"'
    r"|\b(ERROR|FATAL|SEVERE)\b"
    r"|^[EF]\d{4} \d\d:\d\d"
    r"|^\w+(\.\w+)*(Error|Exception|Exit)\b"
)
# Errors that every CPU-only Triton start logs and that never explain an exit.
_HARMLESS = re.compile(r"Cuda|CUDA|NVML|DCGM|GPU", re.IGNORECASE)


def last_error_line(path: Path, since: int = 0, limit: int = 240) -> str | None:
    """The last line that reports an error in the log at ``path``, from byte ``since``
    on (this run's part of the log); None when there is none. JSON lines are shown by
    their event (and error) only, and the line is cut to ``limit`` characters."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(since, size - 256 * 1024)
            handle.seek(start)
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return None
    for line in reversed(text.splitlines()):
        if _ERROR_LINE.search(line) and not _HARMLESS.search(line):
            return _shorten(line.strip(), limit)
    return None


def _shorten(line: str, limit: int) -> str:
    if line.startswith("{"):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            parts = [str(record.get("event", ""))]
            for key in ("error", "exception", "exc_info"):
                if record.get(key):
                    parts.append(str(record[key]).strip().splitlines()[-1])
            line = ": ".join(p for p in parts if p)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe_exit(returncode: int | None) -> str:
    """``killed by SIGKILL``, ``exit code 1``; ``exited`` when the code is unknown."""
    if returncode is None:
        return "exited"
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, /proc/PID/stat field 22): with the
    pid, it names one process, even after the pid is reused. None for a process that is
    gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def group_members(pgid: int, since: int) -> list[int]:
    """The live processes of process group ``pgid`` that started at or after ``since``
    (clock ticks since boot, as ``process_start_time``): what is left of a service whose
    leader started then, even when the leader itself is gone (Triton's python stubs
    outlive a SIGKILLed server), and never a later, unrelated group with the same id."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid and int(fields[19]) >= since:
            members.append(int(entry.name))
    return members


@dataclass
class ManagedProcess:
    """One long-running child process with its own log file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    stop_timeout_s: float = 30.0
    log_offset: int = field(default=0, init=False)  # where this run's part of the log starts
    _reaped: bool = field(default=False, init=False, repr=False)
    _popen: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_offset = log_size(self.log_path)
        self._reaped = False
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

    @property
    def returncode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def _why(self) -> str:
        error = last_error_line(self.log_path, self.log_offset)
        return f"{': ' + error if error else ''} (see {self.log_path})"

    def wait_ready(self, check: Callable[[], bool], timeout_s: float) -> None:
        """Poll ``check`` until it holds; fail early, with the log's last error, if we
        exit."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                raise ServiceError(
                    f"{self.name} exited during start-up ({describe_exit(self.returncode)})"
                    + self._why()
                )
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.2)
        raise ServiceError(f"{self.name} was not ready after {timeout_s:.0f}s" + self._why())

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
        if not self._reaped:
            # Once, reap what is left of the group: children that ignored the TERM, or
            # that outlived a leader that crashed (Triton's python stubs). Linux does
            # not hand out a group id as a pid while a member lives.
            self._reaped = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            log.info("process.stopped", service=self.name, returncode=self._popen.returncode)
        return self._popen.returncode


# One stack per state folder ---------------------------------------------------------

LOCK_FILE = "stack.lock"


@dataclass(frozen=True)
class LockHolder:
    """Who holds a state folder's lock (as it wrote itself into the lock file)."""

    pid: int
    started_at: float
    command: str

    def describe(self) -> str:
        since = time.strftime("%H:%M:%S", time.localtime(self.started_at))
        return f"`{self.command}`, pid {self.pid}, since {since}"


class StackLock:
    """An exclusive ``flock`` on ``<state_dir>/stack.lock``, held for the stack's life
    (a ``camstream.locks.HeldLock``).

    The kernel drops it when the holder dies, however it dies, so a folder left by a
    killed stack is free again at once (and the next stack recovers what it left). The
    holder writes its pid into the file; a second stack reads it to say who runs there.
    The file itself is never removed (a removed lock file would let two holders lock two
    different files)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_FILE
        self._lock = HeldLock(self.path)

    @property
    def held(self) -> bool:
        return self._lock.held

    def acquire(self, command: str = "camstream up", wait_s: float = 0.5) -> Self:
        """Take the lock or raise StackRunning naming the holder and the ways out.
        ``wait_s`` rides over a `camstream status` probing the lock at that instant."""
        self._lock.acquire(
            lambda: {"pid": os.getpid(), "started_at": time.time(), "command": command},
            wait_s,
            lambda: StackRunning(self._refusal()),
        )
        return self

    def release(self) -> None:
        self._lock.release()

    def holder(self, wait_s: float = 0.5) -> LockHolder | None:
        """The process holding the lock, None when it is free. ``wait_s``: how long to
        wait for a holder that has just locked to write its pid."""
        return self._lock.holder(
            lambda r: LockHolder(int(r["pid"]), float(r["started_at"]), str(r["command"])),
            LockHolder(0, time.time(), "an unknown process"),
            wait_s,
        )

    def _refusal(self) -> str:
        holder = self.holder()
        who = holder.describe() if holder else "another process"
        return (
            f"a stack is already running from {self.state_dir} ({who}): see it with "
            f"`camstream status`, stop it (Ctrl-C there, or kill {holder.pid if holder else 'it'})"
            ", or start this one with another CAMSTREAM_STATE_DIR"
        )

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()
