"""docker-compose.yml's profiles, resolved by Docker Compose itself.

`docker compose --profile cpu|gpu config` must accept the file (and the overrides for
machines without a registry) and give each profile its own Triton. Needs the Compose v2
binary, no engine: docker/install-engine.sh installs it (`make setup` runs it with
--compose-only).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from camstream.settings import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
LOCAL_OVERRIDE = REPO_ROOT / "docker" / "compose.local.yml"
EGRESS_CA_OVERRIDE = REPO_ROOT / "docker" / "compose.egress-ca.yml"
PLUGIN_DIRS = (
    Path.home() / ".docker" / "cli-plugins",
    Path("/usr/local/lib/docker/cli-plugins"),
    Path("/usr/local/libexec/docker/cli-plugins"),
    Path("/usr/lib/docker/cli-plugins"),
    Path("/usr/libexec/docker/cli-plugins"),
)
# In every profile: the pipeline without its Triton.
SHARED = {
    "kafka",
    "topics",
    "redis",
    "sample-data",
    "feast-apply",
    "worker",
    "producer",
    "view",
    "prometheus",
}


def _is_compose_v2(path: Path) -> bool:
    try:
        out = subprocess.run(
            [str(path), "version", "--short"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return False
    return out.returncode == 0 and out.stdout.strip().lstrip("v").startswith("2.")


def compose_binary() -> Path:
    """Docker Compose v2: CAMSTREAM_COMPOSE_BIN, a docker CLI plugin, or docker-compose
    on PATH (only if it is v2; Debian's docker-compose is 1.29)."""
    candidates = [Path(p) for p in [os.environ.get("CAMSTREAM_COMPOSE_BIN")] if p]
    candidates += [d / "docker-compose" for d in PLUGIN_DIRS]
    on_path = shutil.which("docker-compose")
    candidates += [Path(on_path)] if on_path else []
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK) and _is_compose_v2(candidate):
            return candidate
    pytest.fail("Docker Compose v2 is not installed: run docker/install-engine.sh --compose-only")


def resolve(*profiles: str, overrides: tuple[Path, ...] = (), **env: str) -> dict[str, Any]:
    """`docker compose [-f ...] --profile P config` as JSON, in an environment without
    the caller's COMPOSE_* and CAMSTREAM_* variables (plus ``env``)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "CAMSTREAM_"))}
    argv = [str(compose_binary()), "--project-directory", str(REPO_ROOT)]
    for path in (COMPOSE_FILE, *overrides):
        argv += ["-f", str(path)]
    for profile in profiles:
        argv += ["--profile", profile]
    proc = subprocess.run(
        [*argv, "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"compose rejected {' '.join(argv[3:])}:\n{proc.stderr}"
    config: dict[str, Any] = json.loads(proc.stdout)
    return config


def test_cpu_profile_validates_and_runs_the_wheels_triton_under_the_name_triton() -> None:
    # Given the compose file with the cpu profile
    services = resolve("cpu")["services"]
    # Then compose accepts it, with the shared services and the CPU Triton only
    assert set(services) == SHARED | {"triton-cpu"}
    triton = services["triton-cpu"]
    # ... which the worker and Prometheus reach as `triton`, with no GPU reserved
    assert "triton" in triton["networks"]["default"]["aliases"]
    assert "deploy" not in triton
    assert "--model-config-name=gpu" not in triton["command"]
    assert triton["build"]["dockerfile"] == "docker/triton-cpu.Dockerfile"


def test_gpu_profile_validates_and_runs_nvidias_triton_and_grafana() -> None:
    # Given the compose file with the gpu profile
    services = resolve("gpu")["services"]
    # Then compose accepts it, with NVIDIA's Triton on a GPU and Grafana
    assert set(services) == SHARED | {"triton", "grafana"}
    devices = services["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" for d in devices)
    assert "--model-config-name=gpu" in services["triton"]["command"]


def test_worker_waits_for_whichever_triton_the_profile_runs() -> None:
    for profile in ("cpu", "gpu"):
        # Given the worker of a profile
        depends = resolve(profile)["services"]["worker"]["depends_on"]
        # Then it waits for both Tritons' health, neither required (one is absent) ...
        for triton in ("triton", "triton-cpu"):
            assert depends[triton] == {"condition": "service_healthy", "required": False}
        # ... and for the topics to exist before it subscribes
        assert depends["topics"]["condition"] == "service_completed_successfully"


def test_every_published_port_resolves_to_loopback_in_both_profiles() -> None:
    for profile in ("cpu", "gpu"):
        # Given the resolved ports of every service
        services = resolve(profile)["services"]
        published = [(n, p) for n, s in services.items() for p in s.get("ports") or []]
        # Then each binds 127.0.0.1 only
        assert published
        assert all(p.get("host_ip") == "127.0.0.1" for _, p in published), published


def test_local_overrides_validate_with_the_cpu_profile() -> None:
    # Given the overrides for machines without a registry (and behind a TLS proxy)
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    services = resolve(
        "cpu",
        overrides=(LOCAL_OVERRIDE, EGRESS_CA_OVERRIDE),
        CAMSTREAM_EGRESS_CA_BUNDLE=bundle,
    )["services"]
    # Then kafka, redis and prometheus use the locally built images, never pulled ...
    for name in ("kafka", "redis", "prometheus"):
        assert services[name]["image"] == f"camstream-{name}:local"
        assert services[name]["pull_policy"] == "never"
    # ... and sample-data gets the host's CA bundle read-only, at run time only
    mount = next(
        v for v in services["sample-data"]["volumes"] if v["target"].endswith("egress-ca.pem")
    )
    assert mount["source"] == bundle and mount["read_only"]
    assert services["sample-data"]["environment"]["PIP_CERT"] == mount["target"]
