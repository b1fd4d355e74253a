"""docker-compose.yml and docker/: the Docker stack agrees with camstream's own code.

No Docker engine runs here, so these tests read the compose file as data and hold it to
what camstream defines: the CLI's subcommands, the Settings fields behind every
CAMSTREAM_ variable, the ports and listeners services use to find each other, the files
they mount, Prometheus' targets and the Feast online store. A renamed setting, a
removed subcommand or a moved port fails here instead of in a container.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import typer
import yaml

from camstream.cameras import load_cameras
from camstream.cli import app
from camstream.settings import REPO_ROOT, Settings

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_PREFIX = "CAMSTREAM_"
REQUIRED_SERVICES = {
    "kafka",
    "triton",
    "redis",
    "feast-apply",
    "worker",
    "producer",
    "prometheus",
    "grafana",
}
TRITON_DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


# Reading the compose file ---------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/", "~", "$"))

    def host_path(self) -> Path:
        return (COMPOSE_FILE.parent / self.source).resolve()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict), f"{COMPOSE_FILE} is not a YAML mapping"
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def argv(value: str | list[Any] | None) -> list[str]:
    """A compose command or entrypoint as an argument list (string form is shell-split)."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(part) for part in value]


def full_command(service: dict[str, Any]) -> list[str]:
    return argv(service.get("entrypoint")) + argv(service.get("command"))


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def mounts(service: dict[str, Any]) -> list[Mount]:
    found = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            found.append(
                Mount(
                    str(volume["source"]),
                    str(volume["target"]),
                    bool(volume.get("read_only", False)),
                )
            )
        else:
            parts = str(volume).split(":")
            if len(parts) == 1:  # an anonymous volume
                continue
            found.append(Mount(parts[0], parts[1], len(parts) > 2 and "ro" in parts[2]))
    return found


def container_ports(service: dict[str, Any]) -> set[int]:
    """Ports the service publishes or exposes, on the container side."""
    ports: set[int] = set()
    for port in [*(service.get("ports") or []), *(service.get("expose") or [])]:
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            ports.add(int(str(port).split(":")[-1].split("/")[0]))
    return ports


def flag_value(command: list[str], flag: str) -> str | None:
    """The value of ``--flag=value`` or ``--flag value`` in an argument list."""
    for index, arg in enumerate(command):
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
        if arg == flag and index + 1 < len(command):
            return command[index + 1]
    return None


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def camstream_invocations(services: dict[str, dict[str, Any]]) -> Iterator[tuple[str, list[str]]]:
    """(service, argv after `camstream`) for every service that runs the camstream CLI."""
    for name, service in services.items():
        command = full_command(service)
        for index, arg in enumerate(command):
            if PurePosixPath(arg).name == "camstream":
                yield name, command[index + 1 :]
                break


def inline_python(services: dict[str, dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """(service, source) for every `python -c SOURCE` in a service's command."""
    for name, service in services.items():
        command = full_command(service)
        for index, arg in enumerate(command[:-1]):
            if PurePosixPath(arg).name.startswith("python") and command[index + 1] == "-c":
                yield name, command[index + 2]


def service_with_image(services: dict[str, dict[str, Any]], image: str) -> str:
    matches = [n for n, s in services.items() if str(s.get("image", "")).startswith(image)]
    assert len(matches) == 1, f"expected one service running {image}, found {matches}"
    return matches[0]


def base_image(dockerfile: str) -> str | None:
    """The image of a Dockerfile's first FROM, with a ``${ARG}`` in it resolved through
    that ARG's default (the Dockerfiles take their base image as a build arg)."""
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", dockerfile, re.MULTILINE))
    found = re.search(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    if found is None:
        return None
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m[1], m[0]), found[1])


def prometheus_config(services: dict[str, dict[str, Any]]) -> dict[str, Any]:
    config_path = flag_value(full_command(services["prometheus"]), "--config.file")
    assert config_path, "prometheus should be started with --config.file"
    mount = next(m for m in mounts(services["prometheus"]) if m.target == config_path)
    return dict(yaml.safe_load(mount.host_path().read_text()))


def scrape_targets(config: dict[str, Any]) -> set[tuple[str, int]]:
    targets: set[tuple[str, int]] = set()
    for job in config.get("scrape_configs") or []:
        for static in job.get("static_configs") or []:
            targets |= {host_port(t) for t in static.get("targets") or []}
        for dns in job.get("dns_sd_configs") or []:
            targets |= {(name, int(dns["port"])) for name in dns.get("names") or []}
    return targets


def cli_command(path: list[str]) -> Any | None:
    """The command that ``camstream <path...>`` resolves to in camstream.cli's typer app
    (a group's ``commands`` are walked: typer ships its own click, so no isinstance)."""
    command: Any = typer.main.get_command(app)
    for word in path:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            return command
        command = subcommands.get(word)
        if command is None:
            return None
    return command


# The services ---------------------------------------------------------------------------


def test_stack_declares_every_service_the_design_names(services: dict[str, Any]) -> None:
    # Given the compose file
    # When its services are listed
    missing = REQUIRED_SERVICES - set(services)
    # Then Kafka, Triton, Redis, Feast, worker, producer, Prometheus and Grafana are there
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


def test_images_are_pinned_to_a_version(services: dict[str, dict[str, Any]]) -> None:
    # Given every service that pulls an image (built images are tagged locally)
    pulled = {n: str(s["image"]) for n, s in services.items() if "image" in s and "build" not in s}
    # When their tags are read
    unpinned = {
        name: image
        for name, image in pulled.items()
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
    }
    # Then none floats on :latest or no tag
    assert pulled
    assert not unpinned, f"pin these images to a version: {unpinned}"


# The CLI and the settings ---------------------------------------------------------------


def test_every_camstream_command_is_a_real_subcommand_with_real_options(
    services: dict[str, dict[str, Any]],
) -> None:
    # Given every `camstream ...` the stack runs
    invocations = list(camstream_invocations(services))
    assert {name for name, _ in invocations} >= {"worker", "producer"}
    for service, args in invocations:
        words = [a for a in args if not a.startswith("-")]
        # When the CLI resolves it
        command = cli_command(words[:1])
        # Then it names a subcommand of camstream.cli's app ...
        assert command is not None and words, f"{service}: `camstream {' '.join(args)}`"
        if hasattr(command, "commands"):  # a group such as `drift`: one word more
            command = cli_command(words[:2])
            assert command is not None, f"{service}: `camstream {' '.join(args)}`"
        # ... and every option it passes is one that subcommand takes
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        passed = {a.split("=", 1)[0] for a in args if a.startswith("-")}
        assert passed <= known, f"{service}: unknown options {sorted(passed - known)}"


def test_inline_scripts_compile_and_import_only_what_camstream_defines(
    services: dict[str, dict[str, Any]],
) -> None:
    # Given the one-shot services' `python -c` scripts (feast-apply, sample data)
    scripts = list(inline_python(services))
    assert any(name == "feast-apply" for name, _ in scripts)
    for service, source in scripts:
        # When each is parsed
        tree = ast.parse(source, filename=f"<{service}>")
        # Then every `from camstream... import name` resolves in today's code
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("camstream"):
                module = importlib.import_module(str(node.module))
                for alias in node.names:
                    assert hasattr(module, alias.name), (
                        f"{service}: {node.module} has no {alias.name}"
                    )


def test_camstream_variables_name_real_settings_and_parse(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given every service's CAMSTREAM_ variables
    fields = set(Settings.model_fields)
    used = {
        name: {k: v for k, v in environment(s).items() if k.startswith(ENV_PREFIX)}
        for name, s in services.items()
    }
    assert used["worker"], "the worker should be configured through CAMSTREAM_ variables"
    for service, env in used.items():
        # When each variable is mapped to its Settings field
        unknown = {
            var for var in env if var.removeprefix(ENV_PREFIX).split("__")[0].lower() not in fields
        }
        # Then each one is a field (a renamed setting fails here) ...
        assert not unknown, f"{service}: {sorted(unknown)} are not camstream settings"
        # ... and together they make valid Settings
        for var in list(os.environ):
            if var.startswith(ENV_PREFIX):
                monkeypatch.delenv(var)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        Settings()


def test_worker_and_producer_serve_metrics_on_a_fixed_port(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("worker", "producer"):
        # Given the service's settings
        port = int(environment(services[name]).get(f"{ENV_PREFIX}METRICS_PORT", "0"))
        # When its metrics port is read
        # Then it is fixed (0 would pick a random port Prometheus cannot find)
        assert port > 0, f"{name}: set CAMSTREAM_METRICS_PORT to a fixed port"
        # And its healthcheck, if any, probes that port
        probe = " ".join(argv((services[name].get("healthcheck") or {}).get("test")))
        if probe:
            assert f":{port}/" in probe, f"{name}: healthcheck does not probe port {port}"


# Ports and addresses --------------------------------------------------------------------


def test_worker_reaches_triton_on_the_grpc_port_triton_serves(
    services: dict[str, dict[str, Any]],
) -> None:
    # Given the worker's Triton address
    host, port = host_port(environment(services["worker"])[f"{ENV_PREFIX}TRITON_GRPC"])
    # When Triton's own command and ports are read
    triton = services["triton"]
    grpc_port = int(flag_value(full_command(triton), "--grpc-port") or TRITON_DEFAULT_PORTS["grpc"])
    # Then the worker dials the triton service on the port it serves gRPC on
    assert host == "triton"
    assert port == grpc_port
    assert grpc_port in container_ports(triton)
    assert full_command(triton)[0].endswith("tritonserver")


def test_kafka_clients_bootstrap_from_an_advertised_internal_listener(
    services: dict[str, dict[str, Any]],
) -> None:
    # Given the broker's listeners
    kafka_env = environment(services["kafka"])
    advertised = {
        name: host_port(address.removeprefix("//"))
        for name, address in (
            entry.split(":", 1) for entry in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
        )
    }
    bound = {
        name: host_port(address.removeprefix("//"))[1]
        for name, address in (
            entry.split(":", 1) for entry in kafka_env["KAFKA_LISTENERS"].split(",")
        )
    }
    clients = {
        name: environment(s)[f"{ENV_PREFIX}KAFKA_BOOTSTRAP"]
        for name, s in services.items()
        if f"{ENV_PREFIX}KAFKA_BOOTSTRAP" in environment(s)
    }
    assert {"worker", "producer"} <= set(clients)
    for client, bootstrap in clients.items():
        for server in bootstrap.split(","):
            # When a client's bootstrap server is looked up among them
            address = host_port(server.strip())
            listener = next((n for n, a in advertised.items() if a == address), None)
            # Then the broker advertises it, listens on its port, and it is reachable
            # by service name from inside the compose network
            assert listener is not None, f"{client}: {server} is not an advertised listener"
            assert bound[listener] == address[1]
            assert address[0] == "kafka", f"{client}: use the kafka service's name"
    # And the host listener is published for clients outside Docker
    host_listeners = [a for a in advertised.values() if a[0] in {"localhost", "127.0.0.1"}]
    assert any(port in container_ports(services["kafka"]) for _, port in host_listeners)


def test_auto_created_topics_get_camstreams_partition_count(
    services: dict[str, dict[str, Any]],
) -> None:
    # Given the broker's default partition count (the producer may create the frames
    # topic before the worker does)
    partitions = environment(services["kafka"]).get("KAFKA_NUM_PARTITIONS")
    # When it is compared with the worker's topic_partitions
    expected = int(
        environment(services["worker"]).get(
            f"{ENV_PREFIX}TOPIC_PARTITIONS", Settings.model_fields["topic_partitions"].default
        )
    )
    # Then both create topics alike
    assert partitions is not None and int(partitions) == expected


# Mounts ---------------------------------------------------------------------------------


def test_triton_mounts_triton_repo_read_only_at_its_model_repository(
    services: dict[str, dict[str, Any]],
) -> None:
    # Given Triton's --model-repository
    triton = services["triton"]
    model_repository = flag_value(full_command(triton), "--model-repository")
    assert model_repository
    # When the mount at that path is found
    mount = next((m for m in mounts(triton) if m.target == model_repository), None)
    # Then it is the repo's triton_repo, read-only
    assert mount is not None, f"nothing is mounted at {model_repository}"
    assert mount.host_path() == (REPO_ROOT / "triton_repo").resolve()
    assert mount.read_only


def test_worker_reads_labels_and_drift_reference_from_the_same_triton_repo(
    services: dict[str, dict[str, Any]],
) -> None:
    # Given the worker's CAMSTREAM_MODEL_REPO (labels.txt, reference_profile.json)
    worker = services["worker"]
    model_repo = environment(worker)[f"{ENV_PREFIX}MODEL_REPO"]
    # When the mount at that path is found
    mount = next((m for m in mounts(worker) if m.target == model_repo), None)
    # Then it is the same triton_repo Triton serves
    assert mount is not None
    assert mount.host_path() == (REPO_ROOT / "triton_repo").resolve()


def test_mounted_host_paths_and_build_inputs_exist_in_the_repo(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        # Given every bind mount and build of a service
        for mount in mounts(service):
            if mount.is_bind:
                # Then each mounted host path exists in the repository
                assert mount.host_path().exists(), f"{name}: {mount.source} does not exist"
                assert mount.host_path().is_relative_to(REPO_ROOT.resolve())
        build = service.get("build")
        if build:
            context = COMPOSE_FILE.parent / (build if isinstance(build, str) else build["context"])
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
            assert context.is_dir(), f"{name}: build context {context} does not exist"
            assert (context / str(dockerfile)).is_file(), f"{name}: {dockerfile} not found"


def test_named_volumes_are_declared_and_keep_kafka_and_redis_data(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    # Given the top-level volumes
    declared = set(compose.get("volumes") or {})
    # When every named volume a service mounts is collected
    used = {m.source for s in services.values() for m in mounts(s) if not m.is_bind}
    # Then each is declared
    assert used <= declared, f"declare volumes {sorted(used - declared)}"
    # And Kafka's log dirs and Redis' /data live on named volumes
    kafka_dirs = environment(services["kafka"])["KAFKA_LOG_DIRS"]
    assert any(m.target == kafka_dirs and not m.is_bind for m in mounts(services["kafka"]))
    redis = service_with_image(services, "redis:")
    assert any(m.target == "/data" and not m.is_bind for m in mounts(services[redis]))


def test_producer_cameras_file_is_valid_and_its_videos_are_mounted(
    services: dict[str, dict[str, Any]],
) -> None:
    # Given the producer's --cameras path and the file mounted there
    producer = services["producer"]
    cameras_path = flag_value(full_command(producer), "--cameras")
    assert cameras_path
    mount = next((m for m in mounts(producer) if m.target == cameras_path), None)
    assert mount is not None, f"the producer mounts nothing at {cameras_path}"
    # When camstream loads that file
    cameras = load_cameras(mount.host_path())
    # Then every camera's source lies inside a volume the producer mounts
    targets = [PurePosixPath(m.target) for m in mounts(producer)]
    for camera in cameras:
        source = PurePosixPath(camera.source)
        assert any(source.is_relative_to(t) for t in targets), (
            f"camera {camera.id}: {camera.source} is in no volume the producer mounts"
        )


def test_feast_apply_and_worker_share_the_feast_repo(services: dict[str, dict[str, Any]]) -> None:
    # Given feast-apply and the worker
    repos = {
        name: environment(services[name])[f"{ENV_PREFIX}FEAST_REPO"]
        for name in ("feast-apply", "worker")
    }
    # When their feast repo paths and the volumes there are compared
    volumes = {
        name: next((m.source for m in mounts(services[name]) if m.target == repo), None)
        for name, repo in repos.items()
    }
    # Then both use one named volume at the same path
    assert len(set(repos.values())) == 1, repos
    assert volumes["worker"] is not None and volumes["worker"] == volumes["feast-apply"]
    # And the worker starts only after the repo is applied
    depends = services["worker"]["depends_on"]
    assert depends["feast-apply"]["condition"] == "service_completed_successfully"


# Triton on the GPU ----------------------------------------------------------------------


def test_triton_reserves_an_nvidia_gpu_and_enough_shared_memory(
    services: dict[str, dict[str, Any]],
) -> None:
    # Given the triton service
    triton = services["triton"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    # When its reservations and shm are read
    shm = str(triton["shm_size"]).lower()
    number, unit = re.fullmatch(r"(\d+)\s*([kmg]?)b?", shm).groups()  # type: ignore[union-attr]
    shm_bytes = int(number) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit]
    # Then it asks for an NVIDIA GPU and at least 256 MiB of shared memory
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert shm_bytes >= 256 * 2**20


def test_triton_image_adds_onnxruntime_gpu_with_numpy_below_2() -> None:
    # Given docker/triton.Dockerfile
    text = (REPO_ROOT / "docker" / "triton.Dockerfile").read_text()
    # When its base (by default) and installs are read
    base = base_image(text)
    # Then it builds on a pinned tritonserver and installs onnxruntime-gpu and numpy 1.x
    assert base and re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3", base)
    assert re.search(r"onnxruntime-gpu==[\d.]+", text)
    assert re.search(r"numpy(==1\.|<2)", text)


def test_app_image_builds_the_locked_environment_with_pinned_uv() -> None:
    # Given docker/app.Dockerfile
    text = (REPO_ROOT / "docker" / "app.Dockerfile").read_text()
    # Then it builds on Python 3.11 slim by default, installs a pinned uv and syncs the
    # frozen lock without dev tools
    assert (base_image(text) or "").startswith("python:3.11-slim")
    assert re.search(r"uv==\d+\.\d+\.\d+", text)
    assert "uv sync --frozen --no-dev" in text


# Prometheus and Feast -------------------------------------------------------------------


def test_prometheus_scrapes_worker_producer_and_triton_metrics_ports(
    services: dict[str, dict[str, Any]],
) -> None:
    # Given Prometheus' mounted configuration
    targets = scrape_targets(prometheus_config(services))
    # When the services' metrics ports are read
    expected = {
        (name, int(environment(services[name])[f"{ENV_PREFIX}METRICS_PORT"]))
        for name in ("worker", "producer")
    }
    triton_metrics = int(
        flag_value(full_command(services["triton"]), "--metrics-port")
        or TRITON_DEFAULT_PORTS["metrics"]
    )
    expected.add(("triton", triton_metrics))
    # Then every one of them is scraped
    assert expected <= targets, f"not scraped: {sorted(expected - targets)}"


def test_docker_feature_store_keeps_the_project_and_points_redis_at_the_redis_service(
    services: dict[str, dict[str, Any]],
) -> None:
    # Given the feature_store.yaml that feast-apply mounts
    mount = next(
        m for m in mounts(services["feast-apply"]) if m.target.endswith("feature_store.yaml")
    )
    docker_store = yaml.safe_load(mount.host_path().read_text())
    local_store = yaml.safe_load((REPO_ROOT / "features" / "feature_store.yaml").read_text())
    # When its online store is read
    online = docker_store["online_store"]
    host, port = host_port(online["connection_string"].split(",")[0])
    redis = service_with_image(services, "redis:")
    # Then it is Redis, at the redis service's name and port, for the same project
    assert online["type"] == "redis"
    assert host == redis
    assert port == 6379
    assert docker_store["project"] == local_store["project"]
    # And the file lives outside features/ (feast apply and the local stack copy it)
    assert not mount.host_path().is_relative_to((REPO_ROOT / "features").resolve())
    # And feast-apply waits for Redis
    assert services["feast-apply"]["depends_on"][redis]["condition"] == "service_healthy"


def test_services_wait_only_on_dependencies_that_can_report_it(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            continue
        for dependency, spec in depends.items():
            # Given a dependency with a condition
            condition = (spec or {}).get("condition")
            # Then a healthy-wait targets a service with a healthcheck, and a
            # completion-wait targets a one-shot service that is never restarted
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[dependency].get("restart", "no") == "no"


def test_every_published_port_binds_loopback_unless_overridden(
    services: dict[str, dict[str, Any]],
) -> None:
    # Given the compose file resolved with no override (CAMSTREAM_PUBLISH_ADDRESS unset)
    published = []
    for name, service in services.items():
        for port in service.get("ports") or []:
            spec = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port}"
            resolved = re.sub(r"\$\{CAMSTREAM_PUBLISH_ADDRESS:-([^}]*)\}", r"\1", spec)
            published.append((name, resolved))
    # Then every port is published, and only on 127.0.0.1: Kafka (PLAINTEXT, no auth),
    # Redis (no password), Triton, Prometheus, Grafana and the view stay off the network
    assert {name for name, _ in published} >= {"kafka", "triton", "redis", "grafana", "view"}
    exposed = [(name, spec) for name, spec in published if not spec.startswith("127.0.0.1:")]
    assert not exposed, f"ports bound beyond loopback by default: {exposed}"


def test_grafana_refuses_to_start_on_the_default_admin_password(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    script = grafana["entrypoint"][-1].replace("$$", "$")
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    for password, refused in (("", True), ("admin", True), ("s3cret-enough", False)):
        # When the entrypoint runs with that password (exec of the real server replaced)
        result = subprocess.run(
            ["/bin/sh", "-c", script.replace("exec /run.sh", "exit 0")],
            env={"GF_SECURITY_ADMIN_PASSWORD": password, "PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
            check=False,
        )
        # Then it stops with the fix named, or goes on to the server
        assert (result.returncode != 0) == refused, (password, result.stderr)
        assert ("set GRAFANA_ADMIN_PASSWORD" in result.stderr) == refused
