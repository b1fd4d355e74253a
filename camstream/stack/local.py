"""The local stack: every real service as a local process, for machines without Docker.

Kafka (KRaft), Triton (CPU), the Feast repo (SQLite online store), a Faust worker and,
optionally, producers for the sample cameras, the live view and a Prometheus scraping
every process (its targets follow the metrics ports as services start and restart).
One stack per state folder: the stack holds ``<state_dir>/stack.lock`` for its life
(``StackLock``), and recovers a folder that a killed stack left. Endpoints and each
service's state go to ``<state_dir>/stack.json`` as they come up, so that ``camstream
status`` and other programs can join; with ``supervise``, a ``Supervisor`` starts any
service that exits again, on the same ports and data; everything started is stopped,
in reverse order, by ``stop()``.

The heavy imports (Kafka and Feast clients) happen in ``start()``: reading the state
and checking the lock stay cheap (`camstream status`, a refused `camstream up`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from camstream.errors import ServiceError
from camstream.settings import Settings
from camstream.stack.process import (
    LockHolder,
    ManagedProcess,
    StackLock,
    free_port,
    group_members,
    log_size,
    port_open,
    process_start_time,
)
from camstream.stack.prometheus import PrometheusServer, stack_targets
from camstream.stack.supervisor import RestartPolicy, Supervisor, Watched

if TYPE_CHECKING:
    from camstream.cameras import CameraSpec
    from camstream.stack.kafka import KafkaBroker
    from camstream.stack.triton import TritonServer

log = structlog.get_logger(__name__)

STATE_FILE = "stack.json"
SHM_DIR = Path("/dev/shm")


@dataclass
class StackInfo:
    """What `camstream up` prints and writes: enough for another program to join, and
    each service's state (``services``: state, pid, restarts, last exit, log)."""

    kafka_bootstrap: str = ""
    triton_grpc: str = ""
    triton_http: str = ""
    triton_metrics_port: int = 0
    feast_repo: str = ""
    state_dir: str = ""
    topic_prefix: str = ""
    metrics_ports: dict[str, int] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    startup_s: float = 0.0
    state: str = "starting"  # starting | running | failed
    launcher_pid: int = 0
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    triton_shm_prefix: str = ""
    view_url: str = ""
    # With `up --triton N`: every server's metrics port and shared-memory prefix
    # (triton_grpc then lists every gRPC address; the single fields name the first).
    triton_metrics_ports: list[int] = field(default_factory=list)
    triton_shm_prefixes: list[str] = field(default_factory=list)
    prometheus_url: str = ""

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
    """The state file's stack (running or left by a killed one); None when absent."""
    path = state_dir / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    known = {f.name for f in fields(StackInfo)}
    return StackInfo(**{k: v for k, v in data.items() if k in known})


def stack_holder(state_dir: Path) -> LockHolder | None:
    """The `camstream up` (or other process) that runs a stack from ``state_dir``."""
    return StackLock(state_dir).holder()


def recover_folder(state_dir: Path, wait_s: float = 10.0) -> str | None:
    """Clear what a stack that did not stop cleanly left in ``state_dir`` (call with its
    lock held): stop what is left of its services, their children included (SIGTERM,
    then SIGKILL after ``wait_s``), remove its shared memory and its state file. Data
    (Kafka's log, the Feast repo) is kept. Returns the line that says what was done,
    None when the folder was clean."""
    info = read_state(state_dir)
    if info is None:
        return None
    # Each service's process group (its pid), members started since it did: the
    # service itself and its children, also those that outlived it (Triton's python
    # stubs, which ignore SIGTERM: hence a short wait before SIGKILL; Kafka recovers
    # its log after a SIGKILL too).
    leftovers = {
        name: int(entry["pid"])
        for name, entry in info.services.items()
        if entry.get("pid")
        and entry.get("start_time") is not None
        and group_members(int(entry["pid"]), int(entry["start_time"]))
    }

    def members() -> list[int]:
        return [
            pid
            for name, pgid in leftovers.items()
            for pid in group_members(pgid, int(info.services[name]["start_time"]))
        ]

    for pid in members():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and members():
        time.sleep(0.2)
    for pid in members():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for prefix in {info.triton_shm_prefix, *info.triton_shm_prefixes} - {""}:
        for region in SHM_DIR.glob(f"{prefix}*"):
            region.unlink(missing_ok=True)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    stopped = (
        f"stopped its leftover {', '.join(sorted(leftovers))}" if leftovers else "none of it ran"
    )
    return (
        f"recovered {state_dir}: the stack that ran from it (pid {info.launcher_pid or '?'}) "
        f"did not stop cleanly; {stopped}; its data (Kafka topics, Feast) is kept"
    )


class LocalStack:
    def __init__(
        self,
        settings: Settings,
        cameras: list[CameraSpec] | None = None,
        worker_env: dict[str, str] | None = None,
        workers: int = 1,
        supervise: bool = False,
        *,
        lock: StackLock | None = None,
        on_event: Callable[[str], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
        metrics_port: int | None = None,
        restart_policy: RestartPolicy | None = None,
        view: bool = False,
        prometheus: bool = False,
        tritons: int = 1,
    ) -> None:
        """Every child (workers, producers) runs with ``settings`` as given, pointed at
        the stack's services (``child_settings``); ``worker_env`` holds ``CAMSTREAM_*``
        variables that workers get on top (per-worker overrides a test changes between
        restarts).

        ``supervise``: watch every service and start it again when it exits (`camstream
        up` does; the fault tests stop and start services themselves, with
        tests/support/faults.py). ``on_event`` gets the lines for a person (a service
        exited, is back, a folder was recovered); ``on_failure`` the reason when a
        service keeps failing and the stack must stop. ``lock``: the state folder's
        lock, when the caller took it first (`camstream up` does, before anything
        else). ``metrics_port``: serve the stack's own metrics (restarts, services up)
        there (0: a free port). ``view``: start the live view (`camstream view`, on
        127.0.0.1) once the producers run; its address goes into stack.json.
        ``prometheus``: run a real Prometheus (Debian's) first, scraping every metrics
        port of the stack and Triton's as each service comes up (restarted workers and
        added ones included), with the repository's alert rules; its address goes into
        stack.json. ``tritons``: how many Triton servers to run on the same model
        repository (`up --triton N`); the workers spread requests over all of them."""
        if tritons < 1:
            raise ValueError("a stack runs at least one Triton server")
        self.settings = settings
        self.cameras = cameras or []
        self.worker_env = worker_env or {}
        self.worker_count = workers
        self.state_dir = settings.state_dir.resolve()
        self.logs_dir = self.state_dir / "logs"
        self.kafka: KafkaBroker | None = None
        self.tritons: list[TritonServer] = []
        self.triton_count = tritons
        self.workers: list[ManagedProcess] = []
        self.producer: ManagedProcess | None = None
        self.view: ManagedProcess | None = None
        self.prometheus: PrometheusServer | None = None
        self._view = view
        self._prometheus = prometheus
        self._view_port = 0
        self.info: StackInfo | None = None
        self.failure: str | None = None
        self.recovered: str | None = None
        self._lock = lock or StackLock(self.state_dir)
        self._on_event = on_event
        self._on_failure = on_failure
        self._metrics_port = metrics_port
        self._restart_policy = restart_policy
        self._supervise = supervise
        self._supervisor: Supervisor | None = None
        self._state_guard = threading.Lock()
        self._log_from: dict[str, int] = {}

    # Start ----------------------------------------------------------------------------

    def start(self) -> StackInfo:
        """Take the folder's lock (StackRunning if another stack holds it), recover
        what a killed stack left, start every service and, with ``supervise``, watch
        them."""
        self._lock.acquire()
        try:
            self.recovered = recover_folder(self.state_dir)
            if self.recovered:
                self._event(self.recovered)
            self.info = StackInfo(
                state_dir=str(self.state_dir),
                topic_prefix=self.settings.topic_prefix,
                launcher_pid=os.getpid(),
            )
            if self._metrics_port is not None:
                from camstream.observability import serve_metrics

                self.info.metrics_ports["stack"] = serve_metrics(self._metrics_port)
            self._write_state()
            started = time.monotonic()
            if self._prometheus:
                # First: a missing binary fails at once, and it sees every start-up.
                self._start_prometheus()
            self._start_services()
        except BaseException:
            self.stop()
            raise
        assert self.info is not None
        self.info.startup_s = round(time.monotonic() - started, 1)
        self.info.state = "running"
        self._write_state()
        if self._supervise:
            self._supervisor = Supervisor(
                self._watched(),
                on_event=self._event,
                on_change=self._service_changed,
                on_give_up=self._give_up,
                policy=self._restart_policy,
            ).start()
        return self.info

    def _start_services(self) -> None:
        from camstream.featurestore import (
            apply_repo,
            materialize_all,
            prepare_repo,
            upsert_cameras,
        )
        from camstream.stack.kafka import KafkaBroker

        s = self.settings
        assert self.info is not None
        self.kafka = KafkaBroker(self.state_dir / "kafka", self.logs_dir, cache_dir=s.cache_dir)
        self._log_from["kafka"] = log_size(self.kafka.log_path)
        self.kafka.start()
        self.info.kafka_bootstrap = self.kafka.bootstrap
        self._record("kafka", self.kafka.pid, self.kafka.log_path)
        self.kafka.create_topics(
            list(s.topics),
            partitions=s.topic_partitions,
            replication_factor=s.topic_replication_factor,
        )
        for index in range(self.triton_count):
            self._start_triton(index)
        feast_repo = prepare_repo(self.state_dir / "feast")
        store = apply_repo(feast_repo)
        if self.cameras:
            upsert_cameras(store, self.cameras)
        materialize_all(store)
        self.info.feast_repo = str(feast_repo)
        self._write_state()
        # Producers start once the workers can take frames, so none wait in a backlog.
        for _ in range(self.worker_count):
            self.add_worker()
        if self.cameras:
            self.producer = self._start_producer()
        if self._view:
            self.view = self._start_view()

    @property
    def triton(self) -> TritonServer | None:
        """The first Triton server (most stacks run one)."""
        return self.tritons[0] if self.tritons else None

    def triton_name(self, index: int) -> str:
        return "triton" if index == 0 else f"triton-{index + 1}"

    def _start_triton(self, index: int) -> None:
        """Start server ``index`` (each has its own ports and shared memory) and name
        it in stack.json: triton_grpc lists every server started so far."""
        from camstream.stack.triton import TritonServer

        s, info, name = self.settings, self.info, self.triton_name(index)
        assert info is not None
        server = TritonServer(
            s.model_repo, cache_dir=s.cache_dir, log_dir=self.logs_dir, ready_models=(s.model_name,)
        )
        self.tritons.append(server)
        with self._state_guard:
            info.triton_shm_prefixes.append(server.shm_prefix)
            info.triton_shm_prefix = info.triton_shm_prefixes[0]
        self._write_state()  # its shared memory is known before it can leave any
        self._log_from[name] = log_size(server.log_path)
        server.start()
        with self._state_guard:
            info.triton_grpc = ",".join(t.grpc_address for t in self.tritons)
            info.triton_http = self.tritons[0].http_address
            info.triton_metrics_ports.append(server.metrics_port)
            info.triton_metrics_port = info.triton_metrics_ports[0]
        self._record(name, server.pid, server.log_path)

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
        ``extra_env``'s variables) and wait until its metrics show ``ready_metrics``.
        A restart keeps the name's metrics port (scrapers keep their target)."""
        assert self.info is not None
        port = self.info.metrics_ports.get(name) or free_port()
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

        try:
            process.wait_ready(ready, timeout_s=90)
        except BaseException:
            process.stop()
            raise
        self._log_from[name] = process.log_offset
        with self._state_guard:
            self.info.metrics_ports[name] = port
        self._record(name, process.pid, log_path)
        return process

    def _start_producer(self) -> ManagedProcess:
        """The producer follows the Feast registry, where the sample cameras were put:
        `camstream cameras add ID --source ...` starts a camera, `remove` stops it."""
        return self._spawn("producer", ["produce", "--from-registry"])

    def _start_view(self) -> ManagedProcess:
        """The live view on 127.0.0.1, on the same port across restarts."""
        assert self.info is not None
        self._view_port = self._view_port or free_port()
        view = self._spawn("view", ["view", "--port", str(self._view_port)])
        deadline = time.monotonic() + 60
        while not port_open(self._view_port):  # its metrics answer before its page does
            if time.monotonic() > deadline or not view.running():
                view.stop()
                raise ServiceError(
                    f"the view did not open port {self._view_port}: see {view.log_path}"
                )
            time.sleep(0.2)
        self.info.view_url = f"http://127.0.0.1:{self._view_port}/"
        self._write_state()
        return view

    def _start_prometheus(self) -> None:
        assert self.info is not None
        with self._state_guard:
            targets = stack_targets(self.info)
        self.prometheus = PrometheusServer(self.state_dir / "prometheus", self.logs_dir, targets)
        self._log_from["prometheus"] = log_size(self.prometheus.log_path)
        self.info.prometheus_url = self.prometheus.start()
        self._record("prometheus", self.prometheus.pid, self.prometheus.log_path)

    def _restart_prometheus(self) -> None:
        """Again on the same port, TSDB and targets (its config is written afresh)."""
        assert self.prometheus is not None
        self.prometheus.stop()
        self.prometheus.start()
        self._record("prometheus", self.prometheus.pid, self.prometheus.log_path)

    def _sync_targets(self) -> None:
        """Point Prometheus at the stack's metrics ports as they are now."""
        if self.prometheus is None or self.info is None:
            return
        with self._state_guard:
            targets = stack_targets(self.info)
        if targets != self.prometheus.targets:
            self.prometheus.set_targets(targets)

    def _restart_view(self) -> None:
        if self.view is not None:
            self.view.stop()
        self.view = self._start_view()

    def _restart_producer(self) -> None:
        if self.producer is not None:
            self.producer.stop()
        self.producer = self._start_producer()

    # Workers (scale-out) --------------------------------------------------------------

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
        index = len(self.workers)
        process = self._start_worker(index)
        self.workers.append(process)
        if self._supervisor is not None:
            self._supervisor.add(self._watched_worker(index))
        return process

    def restart_worker(self, index: int = 0) -> ManagedProcess:
        """Start a stopped or killed worker again under the same name."""
        self.workers[index].stop()
        self.workers[index] = self._start_worker(index)
        return self.workers[index]

    def worker_metrics(self, index: int = 0) -> str:
        assert self.info is not None
        return _scrape(self.info.metrics_ports[self._worker_name(index)])

    # Supervision ----------------------------------------------------------------------

    def _watched(self) -> list[Watched]:
        kafka = self.kafka
        assert kafka is not None and self.tritons

        def restart_kafka() -> None:
            kafka.restart()
            self._record("kafka", kafka.pid, kafka.log_path)

        watched = [
            Watched(
                "kafka",
                running=kafka.running,
                restart=restart_kafka,
                stop=kafka.stop,
                log_path=lambda: kafka.log_path,
                log_from=self._log_from.get("kafka", 0),
            ),
        ]
        watched += [self._watched_triton(i) for i in range(len(self.tritons))]
        watched += [self._watched_worker(i) for i in range(len(self.workers))]
        if self.producer is not None:
            watched.append(
                Watched(
                    "producer",
                    running=lambda: self.producer is not None and self.producer.running(),
                    restart=self._restart_producer,
                    stop=lambda: self.producer.stop() if self.producer else None,
                    log_path=lambda: self.logs_dir / "producer.log",
                    needs=("kafka",),
                    log_from=self._log_from.get("producer", 0),
                )
            )
        if self.prometheus is not None:
            prometheus = self.prometheus
            watched.append(
                Watched(
                    "prometheus",
                    running=prometheus.running,
                    restart=self._restart_prometheus,
                    stop=prometheus.stop,
                    log_path=lambda: prometheus.log_path,
                    log_from=self._log_from.get("prometheus", 0),
                )
            )
        if self.view is not None:
            watched.append(
                Watched(
                    "view",
                    running=lambda: self.view is not None and self.view.running(),
                    restart=self._restart_view,
                    stop=lambda: self.view.stop() if self.view else None,
                    log_path=lambda: self.logs_dir / "view.log",
                    needs=("kafka",),
                    log_from=self._log_from.get("view", 0),
                )
            )
        return watched

    def _watched_triton(self, index: int) -> Watched:
        name, triton = self.triton_name(index), self.tritons[index]

        def stop() -> int | None:
            code = triton.returncode  # read before stop() forgets the process
            triton.stop()
            return code

        def restart() -> None:
            triton.stop()
            triton.start()  # on the same ports: the workers' pools take it back
            self._record(name, triton.pid, triton.log_path)

        return Watched(
            name,
            running=triton.running,
            restart=restart,
            stop=stop,
            log_path=lambda: triton.log_path,
            log_from=self._log_from.get(name, 0),
        )

    def _watched_worker(self, index: int) -> Watched:
        name = self._worker_name(index)

        def restart() -> None:
            self.restart_worker(index)

        # Late binding on purpose: a restart replaces self.workers[index].
        return Watched(
            name,
            running=lambda: self.workers[index].running(),  # noqa: PLW0108
            restart=restart,
            stop=lambda: self.workers[index].stop(),  # noqa: PLW0108
            log_path=lambda: self.workers[index].log_path,
            # A worker waits for its one Triton; with several it rides out any one's
            # absence itself (its pool sends to the others).
            needs=("kafka", "triton") if len(self.tritons) == 1 else ("kafka",),
            log_from=self._log_from.get(name, 0),
        )

    def _event(self, text: str) -> None:
        if self._on_event is not None:
            self._on_event(text)
        else:
            log.warning("stack.event", message=text)

    def _give_up(self, reason: str) -> None:
        self.failure = reason
        if self.info is not None:
            self.info.state = "failed"
            self._write_state()
        if self._on_failure is not None:
            self._on_failure(reason)
        else:
            log.error("stack.failed", reason=reason)

    def _record(self, name: str, pid: int, log_path: Path) -> None:
        """A service (re)started as ``pid``: into the state file, and its metrics port
        (a new one, or the same) into Prometheus' targets."""
        assert self.info is not None
        with self._state_guard:
            self.info.pids[name] = pid
            self.info.logs[name] = str(log_path)
            entry = self.info.services.setdefault(
                name, {"state": "running", "restarts": 0, "last_exit": None}
            )
            entry.update(pid=pid, start_time=process_start_time(pid), since=round(time.time(), 3))
        self._write_state()
        self._sync_targets()

    def _service_changed(self, service: Watched) -> None:
        assert self.info is not None
        with self._state_guard:
            entry = self.info.services.setdefault(service.name, {})
            entry.update(service.status())
        self._write_state()

    def _write_state(self) -> None:
        assert self.info is not None
        with self._state_guard:
            text = json.dumps(asdict(self.info), indent=2)
            path = self.state_dir / STATE_FILE
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)

    # Stop -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop Prometheus first (it would only record the others going), then
        producers (they flush), then workers (they commit), then servers; then drop the
        state file and the folder's lock."""
        if self._supervisor is not None:
            self._supervisor.halt()
        self._stop_services()
        if self._supervisor is not None:
            self._supervisor.join(timeout_s=120)
            self._stop_services()  # whatever a restart in flight started meanwhile
        if self._lock.held:
            (self.state_dir / STATE_FILE).unlink(missing_ok=True)
            self._lock.release()

    def _stop_services(self) -> None:
        services = (self.prometheus, self.view, self.producer, *self.workers)
        for service in (*services, *self.tritons, self.kafka):
            if service is None:
                continue
            try:
                service.stop()
            except Exception:
                log.exception("stack.stop_failed", service=type(service).__name__)
