"""docker-compose's cpu profile as a test stack, through testcontainers' DockerCompose:
the images docker/build-local.sh builds (no registry here), the engine of
docker/engine.sh unless one already answers, and everything torn down afterwards
(containers, networks, volumes; the engine stopped if this started it).

The compose files follow docker/compose-local.sh: the repository's docker-compose.yml,
docker/compose.local.yml (locally built Kafka, Redis, Prometheus), the suite's own
settings for the worker (tests/support/compose.test.yml) and, where egress goes through
a TLS-intercepting proxy, the host's CA bundle mounted into sample-data
(docker/compose.egress-ca.yml).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest.mock import patch

from testcontainers.compose import DockerCompose

from camstream.settings import REPO_ROOT

# What the compose file publishes on the host's loopback (docker-compose.yml).
PUBLISHED = {"kafka": 9092, "triton http": 8000, "triton grpc": 8001, "triton metrics": 8002,
             "redis": 6379, "view": 8090, "prometheus": 9090}  # fmt: skip
EGRESS_CA_DIR = Path("/usr/local/share/ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PROJECT = "camstream-test"


@dataclass
class ComposeStack:
    """The running compose stack: host addresses and the handle to act on it."""

    compose: DockerCompose
    kafka_bootstrap: str = "127.0.0.1:9092"
    triton_grpc: str = "127.0.0.1:8001"
    startup_s: float = 0.0

    def run(self, *args: str, timeout_s: float = 120) -> str:
        """``docker compose ARGS`` on this stack; its stdout (AssertionError on failure)."""
        result = subprocess.run(
            [*self.compose.compose_command_property, *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        assert result.returncode == 0, f"docker compose {' '.join(args)}: {result.stderr[-2000:]}"
        return result.stdout

    def containers(self, service: str) -> list[dict[str, str]]:
        """The service's containers as `docker compose ps --format json` lists them."""
        text = self.run("ps", "--all", "--format", "json", service)
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [r for r in rows if r.get("Service") == service]

    def docker(self, *args: str, timeout_s: float = 60) -> str:
        result = subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout_s, check=False
        )
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr[-2000:]}"
        return result.stdout

    def wait_healthy(self, service: str, count: int, timeout_s: float = 180) -> list[str]:
        """Until ``count`` containers of ``service`` run healthy; their ids."""
        deadline = time.monotonic() + timeout_s
        rows: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            rows = self.containers(service)
            healthy = [r["ID"] for r in rows if r.get("Health") == "healthy"]
            if len(healthy) >= count:
                return healthy
            time.sleep(1)
        raise AssertionError(f"{service}: not {count} healthy in {timeout_s:.0f}s: {rows}")

    def logs(self, service: str) -> str:
        return self.run("logs", "--no-color", "--tail", "60", service)


def _engine(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO_ROOT / "docker" / "engine.sh"), script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _ensure_engine() -> bool:
    """An engine that answers (DOCKER_HOST, the system's, or docker/engine.sh's, started
    here); True when this started it."""
    if shutil.which("docker") is None:
        raise AssertionError("no docker CLI: run docker/install-engine.sh")
    if os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").is_socket():
        return False
    env = _engine("env").stdout.strip()
    os.environ["DOCKER_HOST"] = env.removeprefix("export DOCKER_HOST=")
    running = _engine("status").returncode == 0
    if not running:
        started = _engine("start")
        assert started.returncode == 0, (
            "the Docker engine did not start (install it with docker/install-engine.sh, "
            f"as root):\n{started.stderr[-2000:]}"
        )
    return not running


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def compose_files() -> list[str]:
    files = ["docker-compose.yml", "docker/compose.local.yml", "tests/support/compose.test.yml"]
    if not os.environ.get("CAMSTREAM_EGRESS_CA_BUNDLE") and any(EGRESS_CA_DIR.glob("*.crt")):
        os.environ["CAMSTREAM_EGRESS_CA_BUNDLE"] = str(HOST_CA_BUNDLE)
    if os.environ.get("CAMSTREAM_EGRESS_CA_BUNDLE"):
        files.append("docker/compose.egress-ca.yml")
    return files


@contextmanager
def compose_stack() -> Iterator[ComposeStack]:
    """Build (or reuse) the cpu profile's images, bring the stack up healthy, and take
    every container, network and volume of it down afterwards. The variables it sets
    for docker and compose (DOCKER_HOST, the project, the view's token) are this
    process's only while it runs: later tests start their own stacks without them."""
    with patch.dict(os.environ), _compose_stack() as running:
        yield running


@contextmanager
def _compose_stack() -> Iterator[ComposeStack]:
    busy = [f"{name} ({port})" for name, port in PUBLISHED.items() if not _port_free(port)]
    assert not busy, f"the compose stack publishes ports already in use: {', '.join(busy)}"
    started_engine = _ensure_engine()
    os.environ["COMPOSE_PROJECT_NAME"] = PROJECT
    try:
        build = subprocess.run(
            ["bash", str(REPO_ROOT / "docker" / "build-local.sh"), "build"],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        assert build.returncode == 0, f"docker/build-local.sh build:\n{build.stderr[-3000:]}"
        compose = DockerCompose(
            REPO_ROOT, compose_file_name=compose_files(), profiles=["cpu"], wait=True
        )
        # The view binds every address in its container: it needs a token.
        os.environ.setdefault("CAMSTREAM_VIEW_TOKEN", secrets.token_hex(16))
        began = time.monotonic()
        running = ComposeStack(compose)
        try:
            try:
                compose.start()
            except subprocess.CalledProcessError as exc:
                raise AssertionError(
                    f"`docker compose up --wait` failed:\n{exc.stderr or ''}\n"
                    + running.run("ps", "--all")
                    + running.run("logs", "--no-color", "--tail", "30")
                ) from exc
            running.startup_s = round(time.monotonic() - began, 1)
            yield running
        finally:
            compose.stop(down=True)  # `down -v`: containers, networks and volumes
        # Then nothing of the project is left on the engine
        label = f"label=com.docker.compose.project={PROJECT}"
        left = {k: running.docker(k, "ls", "-q", "--filter", label) for k in ("network", "volume")}
        left["container"] = running.docker("ps", "-aq", "--filter", label)
        assert not any(v.strip() for v in left.values()), f"left after `down -v`: {left}"
    finally:
        if started_engine:
            _engine("stop")
