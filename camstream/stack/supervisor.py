"""The supervisor that keeps the local stack's services up.

``Supervisor`` watches services (``Watched``): when one exits it says so in one line,
starts it again with backoff (``RestartPolicy``) once what it needs runs, and gives up
on one that keeps failing; restarts are counted in Prometheus metrics.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import structlog
from prometheus_client import Counter, Gauge

from camstream.stack.process import describe_exit, last_error_line, log_size

log = structlog.get_logger(__name__)

__all__ = ["RestartPolicy", "Supervisor", "Watched"]

RESTARTS = Counter(
    "camstream_stack_restarts_total",
    "Services of the local stack started again by its supervisor after they exited",
    ["service"],
)
SERVICE_UP = Gauge(
    "camstream_stack_service_up",
    "1 while a service of the local stack runs, 0 while it is down or restarting",
    ["service"],
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# Supervision ------------------------------------------------------------------------


@dataclass(frozen=True)
class RestartPolicy:
    """Backoff between restarts, and when to give up.

    A run shorter than ``healthy_after_s`` (or a start that fails) counts as a failure
    in a row; the wait before the next start doubles from ``first_delay_s`` up to
    ``max_delay_s``; after ``max_failures`` failures in a row the supervisor gives up
    (and the stack stops with the reason). A run that lasted resets the count."""

    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    healthy_after_s: float = 60.0
    max_failures: int = 5

    def delay_s(self, failures: int) -> float:
        return float(min(self.first_delay_s * 2 ** max(failures - 1, 0), self.max_delay_s))


@dataclass
class Watched:
    """A service the supervisor keeps up: whether it runs, how to stop what is left of
    it (returning its exit code), and how to start it again, on the same ports and data,
    returning once it is ready. ``needs``: services that must run before it restarts."""

    name: str
    running: Callable[[], bool]
    restart: Callable[[], None]
    stop: Callable[[], int | None]
    log_path: Callable[[], Path]
    needs: tuple[str, ...] = ()
    log_from: int = 0  # where the current run's part of its log starts
    state: str = "running"  # running | down | waiting | restarting | failed | stopped
    restarts: int = 0
    last_exit: str | None = None
    since: float = field(default_factory=time.time)

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "since": round(self.since, 3),
            "log": str(self.log_path()),
        }


class Supervisor:
    """Watches services, one thread each: when one exits, says so in one line (service,
    exit code or signal, its last error line, its log), starts it again with backoff
    once what it needs runs, and says when it is back. One that keeps failing makes the
    supervisor give up: ``on_give_up`` gets the reason, the caller stops the stack.

    ``on_event`` gets the lines meant for a person; ``on_change`` is called after each
    state change (the stack rewrites its state file)."""

    def __init__(
        self,
        services: Sequence[Watched],
        *,
        on_event: Callable[[str], None],
        on_change: Callable[[Watched], None],
        on_give_up: Callable[[str], None],
        policy: RestartPolicy | None = None,
        poll_s: float = 0.2,
    ) -> None:
        self.services = {s.name: s for s in services}
        self.policy = policy or RestartPolicy()
        self.poll_s = poll_s
        self._on_event = on_event
        self._on_change = on_change
        self._on_give_up = on_give_up
        self._halt = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> Self:
        for service in list(self.services.values()):
            self._watch_in_thread(service)
        return self

    def add(self, service: Watched) -> None:
        """Watch one more service (a worker added to a running stack)."""
        self.services[service.name] = service
        if self._threads and not self._halt.is_set():
            self._watch_in_thread(service)

    def halt(self) -> None:
        """Stop restarting anything (the stack is stopping); returns at once."""
        self._halt.set()

    def join(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.1))

    def status(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: s.status() for name, s in self.services.items()}

    def _watch_in_thread(self, service: Watched) -> None:
        SERVICE_UP.labels(service.name).set(1 if service.running() else 0)
        RESTARTS.labels(service.name).inc(0)
        # The thread lives until the stack stops: the children it starts get SIGTERM
        # when it ends (PR_SET_PDEATHSIG is per thread).
        thread = threading.Thread(
            target=self._watch, args=(service,), name=f"watch-{service.name}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _set(self, service: Watched, state: str) -> None:
        with self._lock:
            service.state = state
            service.since = time.time()
        SERVICE_UP.labels(service.name).set(1 if state == "running" else 0)
        with contextlib.suppress(Exception):
            self._on_change(service)

    def _event(self, text: str) -> None:
        log.warning("stack.supervisor", message=text)
        with contextlib.suppress(Exception):
            self._on_event(text)

    def _needs_running(self, service: Watched) -> bool:
        return all(
            self.services[n].state == "running" and self.services[n].running()
            for n in service.needs
            if n in self.services
        )

    def _watch(self, service: Watched) -> None:
        failures = 0
        ready_at = time.monotonic()
        while not self._halt.wait(self.poll_s):
            if service.running():
                continue
            down_at = time.monotonic()
            try:
                code = service.stop()
            except Exception as exc:  # what is left could not be stopped: try again later
                log.warning("stack.stop_failed", service=service.name, error=str(exc))
                code = None
            if self._halt.is_set():
                return
            service.last_exit = describe_exit(code)
            failures = failures + 1 if down_at - ready_at < self.policy.healthy_after_s else 1
            # A SIGKILL comes from outside (an operator, the OOM killer): the log's last
            # error, often from minutes before, would only mislead.
            killed = code == -signal.SIGKILL
            error = None if killed else last_error_line(service.log_path(), service.log_from)
            self._set(service, "down")
            why = f"exited ({service.last_exit}{': ' + error if error else ''})"
            restarted = self._restart(service, failures, why, down_at)
            if restarted is None:
                return
            failures, ready_at = restarted

    def _restart(
        self, service: Watched, failures: int, why: str, down_at: float
    ) -> tuple[int, float] | None:
        """Start ``service`` again until it is ready; (failures, ready time), or None
        when the stack stops or the supervisor gives up."""
        log_path = service.log_path()
        while True:
            if failures > self.policy.max_failures:
                reason = (
                    f"{service.name} keeps failing: it exited or failed to start "
                    f"{failures - 1} times in a row (last: {why}); see {log_path}"
                )
                self._set(service, "failed")
                self._event(f"{reason}; stopping the stack")
                with contextlib.suppress(Exception):
                    self._on_give_up(reason)
                return None
            delay = self.policy.delay_s(failures)
            waiting_for = [n for n in service.needs if n in self.services]
            when = f" in {delay:.0f}s" if delay >= 1 else ""
            if waiting_for and not self._needs_running(service):
                when += f" once {' and '.join(waiting_for)} run"
            self._event(f"{service.name} {why}; restarting it{when} (log: {log_path})")
            if self._halt.wait(delay):
                return None
            if not self._needs_running(service):
                self._set(service, "waiting")
                while not self._needs_running(service):
                    if self._halt.wait(self.poll_s):
                        return None
            self._set(service, "restarting")
            service.log_from = log_size(log_path)
            try:
                service.restart()
            except Exception as exc:
                if self._halt.is_set():
                    return None
                failures += 1
                why = f"did not start again ({_first_line(exc)})"
                self._set(service, "down")
                continue
            if self._halt.is_set():
                return None
            with self._lock:
                service.restarts += 1
            RESTARTS.labels(service.name).inc()
            self._set(service, "running")
            ready_at = time.monotonic()
            self._event(
                f"{service.name} is back after {ready_at - down_at:.1f}s "
                f"(restart {service.restarts})"
            )
            return failures, ready_at
