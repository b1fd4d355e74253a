"""The real Triton Inference Server, run as a local process from the pytriton wheel.

``nvidia-pytriton`` (installed in the model environment, ``.venv-model``) ships the
``tritonserver`` binary, the python backend and one backend stub per Python minor
version. We copy that tree once into the cache, put the stub for the model
environment's Python into ``backends/python/``, and launch the server against a model
repository with its own ports and its own shared-memory prefix, so that several
servers (tests, a stack) never clash. The python backend's stub finds the model
environment through the ``python3`` first on PATH: it runs in isolated mode and
ignores PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import structlog

from camstream.errors import ServiceError
from camstream.settings import REPO_ROOT
from camstream.stack.process import ManagedProcess, free_port

log = structlog.get_logger(__name__)

DEFAULT_MODEL_ENV = REPO_ROOT / ".venv-model"
SHM_DIR = Path("/dev/shm")

# Run inside the model environment's interpreter: where it lives, and its base
# interpreter's libpython (the stub must load that one, not the system's).
_PROBE = """
import json, sys, sysconfig
print(json.dumps({
    "minor": f"{sys.version_info.major}.{sys.version_info.minor}",
    "purelib": sysconfig.get_paths()["purelib"],
    "libdir": sysconfig.get_config_var("LIBDIR"),
    "ldlibrary": sysconfig.get_config_var("LDLIBRARY"),
}))
"""


@dataclass(frozen=True)
class ModelEnv:
    """The Python environment that runs the server's python-backend models."""

    root: Path
    python_minor: str
    site_packages: Path
    libpython_dir: Path

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def pytriton_dir(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver"

    @property
    def wheel_libs(self) -> Path:
        return self.site_packages / "nvidia_pytriton.libs"

    @property
    def pytriton_version(self) -> str:
        for info in self.site_packages.glob("nvidia_pytriton-*.dist-info"):
            return info.name.removeprefix("nvidia_pytriton-").removesuffix(".dist-info")
        raise ServiceError(f"nvidia-pytriton is not installed in {self.root}")


def locate_model_env(root: Path = DEFAULT_MODEL_ENV) -> ModelEnv:
    """Describe the model environment at ``root``; fail with what to do if it is unusable."""
    python = root / "bin" / "python"
    if not python.is_file():
        raise ServiceError(
            f"no model environment at {root}: create it with "
            "`uv venv .venv-model && uv pip install -p .venv-model -r requirements/model.txt`"
        )
    try:
        probe = subprocess.run(
            [str(python), "-I", "-c", _PROBE], capture_output=True, text=True, check=True
        )
        facts = json.loads(probe.stdout)
    except (subprocess.CalledProcessError, ValueError) as exc:
        raise ServiceError(f"cannot run the model environment's python {python}: {exc}") from exc
    libdir = Path(facts["libdir"])
    if not (libdir / facts["ldlibrary"]).exists():
        raise ServiceError(
            f"{libdir / facts['ldlibrary']} is missing: the model environment's Python "
            "must be built with --enable-shared for Triton's python backend stub"
        )
    env = ModelEnv(
        root=root,
        python_minor=facts["minor"],
        site_packages=Path(facts["purelib"]),
        libpython_dir=libdir,
    )
    if not (env.pytriton_dir / "bin" / "tritonserver").is_file():
        raise ServiceError(
            f"tritonserver not found under {env.pytriton_dir}: install nvidia-pytriton "
            "into the model environment (requirements/model.txt)"
        )
    return env


def prepare_server_tree(env: ModelEnv, cache_dir: Path) -> Path:
    """A copy of the wheel's server tree with the right backend stub, made once.

    Built in a temporary directory and renamed into place, so a half-copied tree is
    never used and two concurrent callers cannot corrupt each other's.
    """
    tree = cache_dir / f"tritonserver-pytriton{env.pytriton_version}-py{env.python_minor}"
    if (tree / ".complete").is_file():
        return tree
    stub = env.pytriton_dir / "python_backend_stubs" / env.python_minor
    stub = stub / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServiceError(f"nvidia-pytriton has no python backend stub for {env.python_minor}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    if tree.exists():  # left incomplete by an older version or a manual edit
        shutil.rmtree(tree)
    staging = Path(tempfile.mkdtemp(prefix=".tritonserver-", dir=cache_dir))
    try:
        for part in ("bin", "backends", "caches"):
            if (env.pytriton_dir / part).is_dir():
                shutil.copytree(env.pytriton_dir / part, staging / part, symlinks=True)
        shutil.copy2(stub, staging / "backends" / "python" / stub.name)
        (staging / ".complete").write_text(f"{env.pytriton_dir}\n")
        try:
            staging.rename(tree)
        except OSError:  # another process finished first
            if not (tree / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("triton.tree_prepared", tree=str(tree), python=env.python_minor)
    return tree


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1.0) as response:
        return int(response.status) == 200


class TritonServer:
    """One tritonserver process serving ``model_repository`` on free local ports.

    Use as a context manager, or call ``start()`` and ``stop()``. The server runs in
    explicit model-control mode and loads every model of the repository at start (each
    with the versions its ``version_policy`` names); ``ready_models`` are waited for
    once the server is live. A stopped server can be started
    again: it comes back on the same ports (clients reconnect to the same address),
    serving ``model_repository`` as it is then.
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        cache_dir: Path,
        log_dir: Path,
        model_env: ModelEnv | None = None,
        ready_models: Sequence[str] = (),
        ready_timeout_s: float = 120.0,
        stop_timeout_s: float = 30.0,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.model_repository = model_repository.resolve()
        # Variables set for the server and its models' stubs on top of this process's
        # (CAMSTREAM_MODEL_PRECISION, read by the models' model.py); applied at start.
        self.environment = dict(environment or {})
        self.cache_dir = cache_dir
        self.log_dir = log_dir
        self.model_env = model_env
        self.ready_models = tuple(ready_models)
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.shm_prefix = f"camstream_triton_{os.getpid()}_{secrets.token_hex(4)}_"
        self.http_port = 0
        self.grpc_port = 0
        self.metrics_port = 0
        self.startup_s: float | None = None
        self.leaked_shm: list[str] = []
        self._process: ManagedProcess | None = None

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"tritonserver-{self.shm_prefix.rstrip('_')}.log"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise ServiceError("tritonserver was never started")
        return self._process.pid

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    @property
    def returncode(self) -> int | None:
        """The server process's exit status once it exited (negative: the signal)."""
        return None if self._process is None else self._process.returncode

    def start(self) -> TritonServer:
        """Launch the server and wait until it and ``ready_models`` are ready."""
        if self.running():
            raise ServiceError("this TritonServer is already running")
        if not self.model_repository.is_dir():
            raise ServiceError(f"model repository {self.model_repository} does not exist")
        env = self.model_env or locate_model_env()
        tree = prepare_server_tree(env, self.cache_dir)
        if not self.grpc_port:  # a restart keeps its ports
            self.http_port, self.grpc_port, self.metrics_port = _distinct_free_ports(3)
        argv = [
            str(tree / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={tree / 'backends'}",
            f"--cache-directory={tree / 'caches'}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            # Explicit model control: every model loads at start with the versions its
            # on-disk version_policy names, and only load_model/unload_model change what
            # serves (camstream.rollout), so a restart serves exactly the versions in use.
            "--model-control-mode=explicit",
            "--load-model=*",
            "--log-verbose=0",
        ]
        started = time.monotonic()
        self._process = ManagedProcess(
            name="tritonserver",
            argv=argv,
            log_path=self.log_path,
            env={**_server_environment(env), **self.environment},
            cwd=self.log_dir,
            stop_timeout_s=self.stop_timeout_s,
        ).start()
        try:
            self._process.wait_ready(self._ready, self.ready_timeout_s)
        except ServiceError:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        log.info(
            "triton.ready",
            grpc=self.grpc_address,
            http=self.http_address,
            metrics_port=self.metrics_port,
            startup_s=round(self.startup_s, 2),
            models=list(self.ready_models),
        )
        return self

    def stop(self) -> None:
        """SIGTERM the server (then SIGKILL) and remove any shared memory it left."""
        if self._process is None:
            return
        self._process.stop()
        self._process = None
        self.leaked_shm = sorted(p.name for p in SHM_DIR.glob(f"{self.shm_prefix}*"))
        if self.leaked_shm:
            log.warning("triton.shm_leaked", regions=self.leaked_shm)
            for name in self.leaked_shm:
                (SHM_DIR / name).unlink(missing_ok=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _ready(self) -> bool:
        # /v2/health/ready fails while any model loads in explicit mode (server issue
        # #7014): liveness, then each awaited model's own readiness.
        base = f"http://{self.http_address}/v2"
        return _http_ok(f"{base}/health/live") and all(
            _http_ok(f"{base}/models/{name}/ready") for name in self.ready_models
        )


def _distinct_free_ports(count: int) -> tuple[int, ...]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return tuple(ports)


def _server_environment(env: ModelEnv) -> dict[str, str]:
    """The parent's environment with the model environment's interpreter and libraries."""
    child = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV", "LD_PRELOAD"}
    }
    child["PATH"] = os.pathsep.join([str(env.bin_dir), child.get("PATH", "/usr/bin:/bin")])
    child["LD_LIBRARY_PATH"] = os.pathsep.join(
        [str(env.wheel_libs), str(env.libpython_dir)]
        + [p for p in child.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    )
    child["VIRTUAL_ENV"] = str(env.root)
    return child
