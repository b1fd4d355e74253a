"""The local stack: every real service as a local process, for machines without Docker.

Kafka (KRaft), Triton (CPU), the Feast repo (SQLite online store), a Faust worker and,
optionally, producers for the sample cameras. Endpoints go to ``<state_dir>/stack.json``
so that ``camstream status`` and other programs can join; everything started is
stopped, in reverse order, by ``stop()``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from camstream.cameras import CameraSpec, dump_cameras
from camstream.errors import StackRunning
from camstream.featurestore import apply_repo, materialize_all, prepare_repo, upsert_cameras
from camstream.settings import Settings
from camstream.stack.kafka import KafkaBroker
from camstream.stack.process import ManagedProcess, free_port, port_open
from camstream.stack.triton import TritonServer

log = structlog.get_logger(__name__)

STATE_FILE = "stack.json"


@dataclass
class StackInfo:
    """What `camstream up` prints and writes: enough for another program to join."""

    kafka_bootstrap: str
    triton_grpc: str
    triton_http: str
    triton_metrics_port: int
    feast_repo: str
    state_dir: str
    topic_prefix: str
    metrics_ports: dict[str, int] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    startup_s: float = 0.0

    def env(self) -> dict[str, str]:
        """CAMSTREAM_* variables that point a process at this stack."""
        return {
            "CAMSTREAM_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "CAMSTREAM_TRITON_GRPC": self.triton_grpc,
            "CAMSTREAM_FEAST_REPO": self.feast_repo,
            "CAMSTREAM_TOPIC_PREFIX": self.topic_prefix,
            "CAMSTREAM_STATE_DIR": self.state_dir,
        }


def _scrape(port: int) -> str:
    """The text of a metrics endpoint ('' while it does not answer)."""
    if not port_open(port):
        return ""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        return str(response.read().decode())


def read_state(state_dir: Path) -> StackInfo | None:
    path = state_dir / STATE_FILE
    if not path.is_file():
        return None
    return StackInfo(**json.loads(path.read_text()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stack_running(info: StackInfo) -> bool:
    return any(_alive(pid) for pid in info.pids.values())


class LocalStack:
    def __init__(
        self,
        settings: Settings,
        cameras: list[CameraSpec] | None = None,
        worker_env: dict[str, str] | None = None,
        workers: int = 1,
        supervise: bool = False,
    ) -> None:
        """Every child (workers, producers) runs with ``settings`` as given, pointed at
        the stack's services (``child_settings``); ``worker_env`` holds ``CAMSTREAM_*``
        variables that workers get on top (per-worker overrides a test changes between
        restarts). ``supervise``: start a worker again when it exits (`camstream up`
        does; the fault tests kill and restart workers themselves, with
        tests/support/faults.py)."""
        self.settings = settings
        self.cameras = cameras or []
        self.worker_env = worker_env or {}
        self.worker_count = workers
        self.state_dir = settings.state_dir.resolve()
        self.logs_dir = self.state_dir / "logs"
        self.kafka: KafkaBroker | None = None
        self.triton: TritonServer | None = None
        self.workers: list[ManagedProcess] = []
        self.producer: ManagedProcess | None = None
        self.info: StackInfo | None = None
        self._supervise = supervise
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    # Start ----------------------------------------------------------------------------

    def start(self) -> StackInfo:
        previous = read_state(self.state_dir)
        if previous is not None and stack_running(previous):
            raise StackRunning(
                f"a stack is already running from {self.state_dir} "
                f"(pids {sorted(previous.pids.values())}); stop it first (Ctrl-C or SIGTERM "
                "to `camstream up`), or pass another CAMSTREAM_STATE_DIR"
            )
        started = time.monotonic()
        try:
            self._start_services()
        except BaseException:
            self.stop()
            raise
        assert self.info is not None
        self.info.startup_s = round(time.monotonic() - started, 1)
        self._write_state()
        if self._supervise:
            self._supervisor = threading.Thread(
                target=self._restart_exited_workers, name="supervisor", daemon=True
            )
            self._supervisor.start()
        return self.info

    def _start_services(self) -> None:
        s = self.settings
        self.kafka = KafkaBroker(
            self.state_dir / "kafka", self.logs_dir, cache_dir=s.cache_dir
        ).start()
        self.kafka.create_topics(
            list(s.topics),
            partitions=s.topic_partitions,
            replication_factor=s.topic_replication_factor,
        )
        self.triton = TritonServer(
            s.model_repo,
            cache_dir=s.cache_dir,
            log_dir=self.logs_dir,
            ready_models=(s.model_name,),
        ).start()
        feast_repo = prepare_repo(self.state_dir / "feast")
        store = apply_repo(feast_repo)
        if self.cameras:
            upsert_cameras(store, self.cameras)
        materialize_all(store)
        self.info = StackInfo(
            kafka_bootstrap=self.kafka.bootstrap,
            triton_grpc=self.triton.grpc_address,
            triton_http=self.triton.http_address,
            triton_metrics_port=self.triton.metrics_port,
            feast_repo=str(feast_repo),
            state_dir=str(self.state_dir),
            topic_prefix=s.topic_prefix,
            logs={
                "kafka": str(self.kafka.log_path),
                "triton": str(self.triton.log_path),
            },
            pids={"kafka": self.kafka.pid, "triton": self.triton.pid},
        )
        # Producers start once the workers can take frames, so none wait in a backlog.
        for _ in range(self.worker_count):
            self.add_worker()
        if self.cameras:
            cameras_file = self.state_dir / "cameras.yaml"
            dump_cameras(self.cameras, cameras_file)
            self.producer = self._spawn("producer", ["produce", "--cameras", str(cameras_file)])

    def child_settings(self, **update: Any) -> Settings:
        """The stack's own settings pointed at its services: what its children run with."""
        assert self.info is not None
        endpoints: dict[str, Any] = {
            "kafka_bootstrap": self.info.kafka_bootstrap,
            "triton_grpc": self.info.triton_grpc,
            "feast_repo": Path(self.info.feast_repo),
            "state_dir": self.state_dir,
        }
        return self.settings.model_copy(update={**endpoints, **update})

    def _spawn(
        self,
        name: str,
        args: list[str],
        ready_metrics: tuple[str, ...] = (),
        update: dict[str, Any] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> ManagedProcess:
        """Start ``camstream ARGS`` with the stack's settings (``update`` applied, then
        ``extra_env``'s variables) and wait until its metrics show ``ready_metrics``."""
        assert self.info is not None
        port = free_port()
        settings = self.child_settings(metrics_port=port, **(update or {}))
        env = settings.child_env()
        env.update(extra_env or {})
        log_path = self.logs_dir / f"{name}.log"
        process = ManagedProcess(
            name, [sys.executable, "-m", "camstream", *args], log_path, env=env, stop_timeout_s=20
        ).start()

        def ready() -> bool:
            text = _scrape(port)
            return bool(text) and all(metric in text for metric in ready_metrics)

        process.wait_ready(ready, timeout_s=90)
        self.info.metrics_ports[name] = port
        self.info.logs[name] = str(log_path)
        self.info.pids[name] = process.pid
        return process

    # Workers (scale-out, and the supervisor of `camstream up`) -----------------------

    @property
    def worker(self) -> ManagedProcess | None:
        """The first worker (most stacks run one)."""
        return self.workers[0] if self.workers else None

    def _worker_name(self, index: int) -> str:
        return "worker" if index == 0 else f"worker-{index + 1}"

    def _start_worker(self, index: int) -> ManagedProcess:
        name = self._worker_name(index)
        return self._spawn(
            name,
            ["worker"],
            # Joined its group and its model is ready: frames sent now do not queue.
            ready_metrics=("camstream_worker_assigned 1.0", "camstream_worker_ready 1.0"),
            update={"worker_data_dir": self.state_dir / name},
            extra_env=self.worker_env,
        )

    def add_worker(self) -> ManagedProcess:
        """Start one more worker in the group; returns once it has joined."""
        process = self._start_worker(len(self.workers))
        self.workers.append(process)
        if self.info is not None and len(self.workers) > 1:
            self._write_state()
        return process

    def restart_worker(self, index: int = 0) -> ManagedProcess:
        """Start a stopped or killed worker again under the same name."""
        self.workers[index].stop()
        self.workers[index] = self._start_worker(index)
        return self.workers[index]

    def _restart_exited_workers(self, interval_s: float = 1.0, max_delay_s: float = 60.0) -> None:
        """Start again any worker that exited (a crash, or a batch that failed for good).
        One that exits within a minute of its start waits twice as long each time."""
        started = {index: time.monotonic() for index in range(len(self.workers))}
        delay: dict[int, float] = {}
        while not self._stopping.wait(interval_s):
            for index, process in enumerate(list(self.workers)):
                if process.running() or self._stopping.is_set():
                    continue
                returncode = process.stop()
                quick = time.monotonic() - started.get(index, 0.0) < 60
                delay[index] = min(delay.get(index, interval_s) * 2, max_delay_s) if quick else 0
                log.warning(
                    "stack.worker_exited",
                    worker=index,
                    returncode=returncode,
                    restart_in_s=delay[index],
                )
                if self._stopping.wait(delay[index]):
                    return
                started[index] = time.monotonic()
                try:
                    self.restart_worker(index)
                    self._write_state()
                except Exception:
                    log.exception("stack.worker_restart_failed", worker=index)

    def worker_metrics(self, index: int = 0) -> str:
        assert self.info is not None
        return _scrape(self.info.metrics_ports[self._worker_name(index)])

    def _write_state(self) -> None:
        assert self.info is not None
        path = self.state_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.info), indent=2))
        tmp.replace(path)

    # Stop -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop producers first (they flush), then workers (they commit), then servers."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=120)
        for service in (self.producer, *self.workers, self.triton, self.kafka):
            if service is None:
                continue
            try:
                service.stop()
            except Exception:
                log.exception("stack.stop_failed", service=type(service).__name__)
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)
