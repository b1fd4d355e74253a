"""The view's bind policy, and the view as a child process of a stack launcher.

Safe by default: the view binds 127.0.0.1; any other address (0.0.0.0, a LAN address,
a host name) needs a token (``CAMSTREAM_VIEW_TOKEN``, 16 characters or more), or
``check_bind`` refuses with the fix. ``ViewProcess`` runs `camstream view` as a child
process: ``start()`` returns its address once it answers, ``stop()`` (SIGTERM, then
SIGKILL) leaves no process behind. Standard library only, so a launcher imports it
cheaply.
"""

from __future__ import annotations

import ipaddress
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from camstream.errors import ConfigError, ServiceError

if TYPE_CHECKING:
    from camstream.settings import Settings
    from camstream.stack.process import ManagedProcess

TOKEN_VAR = "CAMSTREAM_VIEW_TOKEN"
# Importing feast sets these in the importing process (for its own Gunicorn server); a
# child that inherits them runs prometheus_client in multiprocess mode: one global,
# non-reentrant lock and mmap files in feast's temporary folder. The view serves its
# own metrics, so it never gets them.
PROMETHEUS_MULTIPROCESS_VARS = (
    "PROMETHEUS_MULTIPROC_DIR",
    "PROMETHEUS_MULTIPROCESS_DIR",
    "prometheus_multiproc_dir",
)
MIN_TOKEN_CHARS = 16
DEFAULT_PORT = 8090


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse a bind that would serve other machines without a token, or a weak token."""
    fix = (
        f"set {TOKEN_VAR} (at least {MIN_TOKEN_CHARS} characters, e.g. the output of "
        "`python3 -c 'import secrets; print(secrets.token_urlsafe(24))'`)"
    )
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{TOKEN_VAR} is {len(token)} characters long; {fix}")
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"the view would serve camera frames to anyone who can reach {host}: {fix}, "
            "or bind 127.0.0.1 (the default)"
        )


def page_url(host: str, port: int) -> str:
    """The address a person opens: a wildcard bind is reached on 127.0.0.1."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::", "[::]") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


class ViewProcess:
    """`camstream view` as a child process of a launcher (the local stack)."""

    def __init__(
        self,
        settings: Settings,
        log_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """``settings``: the stack's child settings (Kafka, topics, Feast repo, and the
        ``metrics_port`` the view serves its metrics on). ``port`` 0: a free port."""
        check_bind(host, token)
        self.settings = settings
        self.log_path = log_dir / "view.log"
        self.host = host
        self.port = port
        self.token = token
        self.extra_args = extra_args
        self.url = ""
        self._process: ManagedProcess | None = None

    def start(self, timeout_s: float = 60.0) -> str:
        """Start it and wait until it answers; returns its address."""
        from camstream.stack.process import ManagedProcess, free_port

        self.port = self.port or free_port()
        env = self.settings.child_env()
        for name in (TOKEN_VAR, *PROMETHEUS_MULTIPROCESS_VARS):
            env.pop(name, None)
        if self.token:
            env[TOKEN_VAR] = self.token
        argv = [sys.executable, "-m", "camstream", "view", "--host", self.host]
        argv += ["--port", str(self.port), *self.extra_args]
        self._process = ManagedProcess("view", argv, self.log_path, env=env, stop_timeout_s=15)
        self._process.start()
        self.url = page_url(self.host, self.port)
        try:
            self._process.wait_ready(self.answers, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.url

    def answers(self) -> bool:
        request = urllib.request.Request(self.url + "healthz")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    @property
    def pid(self) -> int:
        if self._process is None:
            raise ServiceError("the view was never started")
        return self._process.pid

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 15 s; returns the exit code."""
        return None if self._process is None else self._process.stop()
