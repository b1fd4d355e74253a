"""A real single-node Kafka broker (KRaft, broker and controller in one JVM) for the
local stack and the integration tests.

No Kafka tarball or image is reachable from our machines, so the broker is assembled
from Maven Central the way embedded-Kafka harnesses do it: ``kafka-pom.xml`` resolves
``kafka_2.13`` plus a log4j2 binding into one cached lib folder, and the broker runs as
``java -cp 'libs/*' kafka.Kafka server.properties``. The Kafka version lives in that pom
only.

A broker keeps its ports, cluster id and data in its data dir, so it can be stopped and
started again (by the same object or a new one on the same data dir) with its topics
and messages intact.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from camstream.errors import ConfigError, ServiceError
from camstream.stack.process import ManagedProcess, free_port, port_open

log = structlog.get_logger(__name__)

POM_PATH = Path(__file__).resolve().parent / "kafka-pom.xml"
MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"

# Values for server.properties that a single-node development broker needs; the
# constructor's ``extra_config`` may override any of them.
BASE_BROKER_CONFIG: Mapping[str, str] = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "auto.create.topics.enable": "false",
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    # Internal topics: one replica, and few partitions so the first consumer group and
    # the first transaction do not wait for 50 partitions to be created.
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "share.coordinator.state.topic.num.partitions": "1",
    "group.initial.rebalance.delay.ms": "0",
    # The default 128 MiB dedupe buffer can exhaust a 512 MiB heap at start-up.
    "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
    # A broker that restarts after a crash waits until the controller fences its old
    # incarnation, one session timeout (default 9 s). In one JVM the heartbeat never
    # leaves the process: 3 s cut a restart after SIGKILL from 13-15 s to ~6 s here.
    "broker.session.timeout.ms": "3000",
    "broker.heartbeat.interval.ms": "500",
}

# Root at WARN keeps the log small; the one INFO line kept says when the broker is up.
LOG4J2_PROPERTIES = """\
status = warn
shutdownHook = disable
appender.console.type = Console
appender.console.name = STDOUT
appender.console.target = SYSTEM_OUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.console.ref = STDOUT
logger.raftserver.name = kafka.server.KafkaRaftServer
logger.raftserver.level = info
"""

_JAAS_SAFE = re.compile(r'^[^"\\\n\r]+$')


def kafka_version(pom: Path = POM_PATH) -> str:
    """The Kafka version pinned in ``kafka-pom.xml`` (its ``kafka.version`` property)."""
    return _pom_property(pom, "kafka.version")


def _pom_property(pom: Path, name: str) -> str:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(pom).getroot().find(f"m:properties/m:{name}", ns)
    if node is None or not (node.text or "").strip():
        raise ServiceError(f"{pom} has no <{name}> property")
    return (node.text or "").strip()


def _libs_complete(libs: Path, pom: Path) -> bool:
    kafka_jar = libs / f"kafka_2.13-{kafka_version(pom)}.jar"
    log4j_jar = libs / f"log4j-core-{_pom_property(pom, 'log4j.version')}.jar"
    return kafka_jar.is_file() and log4j_jar.is_file()


def ensure_kafka_libs(cache_dir: Path, pom: Path = POM_PATH) -> Path:
    """The folder of broker jars, ``cache_dir/kafka-<version>/libs``, resolved with
    Maven on first use.

    Maven writes into a temporary folder that is renamed into place only when complete,
    so an interrupted run never leaves a half folder that looks usable.
    """
    version = kafka_version(pom)
    libs = cache_dir / f"kafka-{version}" / "libs"
    if _libs_complete(libs, pom):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError(
            "Maven (mvn) is needed once to fetch the Kafka broker jars: "
            "apt-get install maven (it also needs Java 17: openjdk-17-jre-headless)"
        )
    libs.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="libs.tmp-", dir=libs.parent))
    started = time.monotonic()
    log.info("kafka.libs.resolving", version=version, into=str(libs))
    try:
        proc = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                f"{MAVEN_DEPENDENCY_PLUGIN}:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={tmp}",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if proc.returncode != 0 or not _libs_complete(tmp, pom):
            raise ServiceError(
                f"resolving Kafka {version} from Maven Central failed (exit {proc.returncode}); "
                "check that Maven Central is reachable (proxy settings in ~/.m2/settings.xml) "
                f"and re-run:\n{(proc.stdout + proc.stderr)[-3000:]}"
            )
        if libs.exists():  # an incomplete folder from an older layout: replace it
            shutil.rmtree(libs)
        try:
            tmp.rename(libs)
        except OSError:
            # Another process finished first; keep its folder if it is complete.
            if not _libs_complete(libs, pom):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "kafka.libs.resolved",
        version=version,
        jars=len(list(libs.glob("*.jar"))),
        seconds=round(time.monotonic() - started, 1),
    )
    return libs


def _new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (Kafka's
    Uuid.randomUuid, which also avoids ids starting with '-')."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


@dataclass(frozen=True)
class BrokerState:
    """What must stay the same across restarts on one data dir."""

    cluster_id: str
    port: int
    controller_port: int
    sasl_port: int | None

    @classmethod
    def load(cls, path: Path) -> BrokerState | None:
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2) + "\n")
        tmp.replace(path)


class KafkaBroker:
    """One KRaft broker+controller JVM on 127.0.0.1.

    ``data_dir`` holds the configuration, the state file and the log segments;
    ``logs_dir`` receives ``kafka.log`` (the JVM's output, WARN and above). Ports are
    picked free when a data dir is first used and kept there, so a restart (of this
    object or a new one on the same data dir) listens on the same addresses; a kept port
    that another process has taken meanwhile is replaced, one passed in never is.

    ``sasl_users`` (user name -> password) adds a SASL_PLAINTEXT listener with the
    PLAIN mechanism beside the PLAINTEXT one; no authorizer is configured, so an
    authenticated user may do anything.
    """

    def __init__(
        self,
        data_dir: Path,
        logs_dir: Path,
        *,
        cache_dir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        sasl_users: Mapping[str, str] | None = None,
        sasl_port: int | None = None,
        heap: str = "512m",
        extra_config: Mapping[str, str] | None = None,
        start_timeout_s: float = 120.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.logs_dir = logs_dir.resolve()
        self.cache_dir = cache_dir
        self.sasl_users = dict(sasl_users or {})
        for name, password in self.sasl_users.items():
            if not (_JAAS_SAFE.match(name) and _JAAS_SAFE.match(password)):
                raise ConfigError(
                    "SASL user names and passwords may not hold '\"', '\\' or newlines"
                )
        self.heap = heap
        self.extra_config = dict(extra_config or {})
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._pinned_ports = {p for p in (port, controller_port, sasl_port) if p}
        self._state = self._load_or_create_state(port, controller_port, sasl_port)
        self._process: ManagedProcess | None = None

    # Addresses ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._state.port

    @property
    def controller_port(self) -> int:
        return self._state.controller_port

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers of the PLAINTEXT listener."""
        return f"127.0.0.1:{self._state.port}"

    @property
    def sasl_bootstrap(self) -> str:
        """Bootstrap servers of the SASL_PLAINTEXT listener (only with ``sasl_users``)."""
        if self._state.sasl_port is None:
            raise ServiceError("this broker was created without sasl_users")
        return f"127.0.0.1:{self._state.sasl_port}"

    @property
    def cluster_id(self) -> str:
        return self._state.cluster_id

    @property
    def pid(self) -> int:
        if self._process is None:
            raise ServiceError("kafka is not running")
        return self._process.pid

    def client_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka configuration for the PLAINTEXT listener."""
        return {"bootstrap.servers": self.bootstrap, **extra}

    def sasl_client_config(self, user: str, password: str, **extra: Any) -> dict[str, Any]:
        """librdkafka configuration for the SASL_PLAINTEXT listener as ``user``."""
        return {
            "bootstrap.servers": self.sasl_bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": "PLAIN",
            "sasl.username": user,
            "sasl.password": password,
            **extra,
        }

    # Files --------------------------------------------------------------------------

    @property
    def _state_path(self) -> Path:
        return self.data_dir / "broker.json"

    @property
    def _config_dir(self) -> Path:
        return self.data_dir / "config"

    @property
    def _log_dirs(self) -> Path:
        return self.data_dir / "kraft-logs"

    @property
    def log_path(self) -> Path:
        return self.logs_dir / "kafka.log"

    def _load_or_create_state(
        self, port: int | None, controller_port: int | None, sasl_port: int | None
    ) -> BrokerState:
        saved = BrokerState.load(self._state_path)
        if saved is not None:
            port = port or saved.port
            controller_port = controller_port or saved.controller_port
            sasl_port = sasl_port or saved.sasl_port
        state = BrokerState(
            cluster_id=saved.cluster_id if saved else _new_cluster_id(),
            port=port or free_port(),
            controller_port=controller_port or free_port(),
            sasl_port=(sasl_port or free_port()) if self.sasl_users else None,
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        state.save(self._state_path)
        return state

    def _move_off_busy_ports(self, move: bool = True) -> None:
        """Ports kept from an earlier run that another process now holds are replaced
        by free ones (the data survives a port change); ports passed in are kept.
        ``move=False`` (a restart, whose clients will reconnect to the same address):
        a busy port is an error instead."""
        state = self._state

        def keep_or_move(current: int) -> int:
            if current in self._pinned_ports or _can_listen(current):
                return current
            if not move:
                raise ServiceError(
                    f"kafka cannot listen on 127.0.0.1:{current} again: another process "
                    f"took the port (see `ss -ltnp 'sport = :{current}'`)"
                )
            return free_port()

        moved = BrokerState(
            cluster_id=state.cluster_id,
            port=keep_or_move(state.port),
            controller_port=keep_or_move(state.controller_port),
            sasl_port=keep_or_move(state.sasl_port) if state.sasl_port else None,
        )
        if moved != state:
            log.warning("kafka.ports.reassigned", before=state.__dict__, after=moved.__dict__)
            self._state = moved
            moved.save(self._state_path)

    def server_properties(self) -> dict[str, str]:
        """The broker's configuration, as written to ``server.properties``."""
        state = self._state
        listeners = {
            "PLAINTEXT": state.port,
            "CONTROLLER": state.controller_port,
        }
        if state.sasl_port is not None:
            listeners["SASL_PLAINTEXT"] = state.sasl_port
        props = dict(BASE_BROKER_CONFIG)
        props.update(
            {
                "controller.quorum.voters": f"1@127.0.0.1:{state.controller_port}",
                "listeners": ",".join(f"{n}://127.0.0.1:{p}" for n, p in listeners.items()),
                "advertised.listeners": ",".join(
                    f"{n}://127.0.0.1:{p}" for n, p in listeners.items() if n != "CONTROLLER"
                ),
                "listener.security.protocol.map": ",".join(
                    f"{n}:{'PLAINTEXT' if n == 'CONTROLLER' else n}" for n in listeners
                ),
                "log.dirs": str(self._log_dirs),
            }
        )
        if self.sasl_users:
            users = " ".join(f'user_{u}="{p}"' for u, p in self.sasl_users.items())
            props["sasl.enabled.mechanisms"] = "PLAIN"
            props["listener.name.sasl_plaintext.plain.sasl.jaas.config"] = (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
            )
        props.update(self.extra_config)
        return props

    def _write_config(self) -> tuple[Path, Path]:
        self._config_dir.mkdir(parents=True, exist_ok=True)
        server = self._config_dir / "server.properties"
        server.write_text(
            "".join(
                f"{key}={_escape_property(value)}\n"
                for key, value in self.server_properties().items()
            )
        )
        log4j = self._config_dir / "log4j2.properties"
        log4j.write_text(LOG4J2_PROPERTIES)
        return server, log4j

    def _java(self, libs: Path, log4j: Path) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise ServiceError(
                "Java 17+ is needed to run the Kafka broker: apt-get install "
                "openjdk-17-jre-headless"
            )
        return [
            java,
            f"-Xmx{self.heap}",
            "-Xms64m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{libs}/*",
        ]

    def _format_storage(self, java: list[str], server: Path) -> None:
        """Format the log dir once; a formatted dir is kept as it is (restarts)."""
        if (self._log_dirs / "meta.properties").is_file():
            return
        started = time.monotonic()
        proc = subprocess.run(
            [
                *java,
                "kafka.tools.StorageTool",
                "format",
                "--cluster-id",
                self._state.cluster_id,
                "--config",
                str(server),
                "--ignore-formatted",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise ServiceError(
                f"kafka storage format failed (exit {proc.returncode}) for {self._log_dirs}; "
                f"delete that folder if it is stale:\n{(proc.stdout + proc.stderr)[-3000:]}"
            )
        log.info(
            "kafka.storage.formatted",
            log_dirs=str(self._log_dirs),
            seconds=round(time.monotonic() - started, 1),
        )

    # Lifecycle ----------------------------------------------------------------------

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def start(self, *, keep_ports: bool = False) -> Self:
        """Start the broker and wait until it answers a metadata request.
        ``keep_ports``: fail rather than move off a kept port that is now busy."""
        if self.running():
            return self
        started = time.monotonic()
        libs = ensure_kafka_libs(self.cache_dir)
        self._move_off_busy_ports(move=not keep_ports)
        server, log4j = self._write_config()
        java = self._java(libs, log4j)
        self._format_storage(java, server)
        self._process = ManagedProcess(
            name="kafka",
            argv=[*java, "kafka.Kafka", str(server)],
            log_path=self.log_path,
            stop_timeout_s=self.stop_timeout_s,
        ).start()
        try:
            self._process.wait_ready(self._answers_metadata, self.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info(
            "kafka.ready",
            bootstrap=self.bootstrap,
            pid=self._process.pid,
            seconds=round(time.monotonic() - started, 1),
        )
        return self

    def restart(self) -> Self:
        """Stop what is left of the broker and start it again on the same addresses and
        data, so that its clients reconnect by themselves."""
        self.stop()
        return self.start(keep_ports=True)

    def stop(self) -> int | None:
        """SIGTERM the broker (a clean shutdown), SIGKILL after ``stop_timeout_s``;
        returns its exit code."""
        # Forget the process once stopped, so a second stop() never signals a process
        # group id that the system may since have given to someone else.
        process, self._process = self._process, None
        if process is None:
            return None
        return process.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # Admin --------------------------------------------------------------------------

    def admin(self) -> AdminClient:
        return AdminClient(self.client_config())

    def _answers_metadata(self) -> bool:
        if not port_open(self.port):  # cheap; the listener opens once the broker is up
            return False
        # log_level 0: the refused connections while the JVM starts are expected.
        admin = AdminClient(self.client_config(log_level=0))
        metadata = admin.list_topics(timeout=2)
        return len(metadata.brokers) > 0

    def create_topics(
        self,
        names: Iterable[str],
        partitions: int,
        *,
        replication_factor: int = 1,
        config: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        """Create topics with ``replication_factor`` replicas (this broker alone holds
        one); a topic that already exists is left as is.

        Returns once every partition of every topic has a leader.
        """
        create_topics(
            self.client_config(),
            names,
            partitions,
            replication_factor=replication_factor,
            config=config,
            timeout_s=timeout_s,
        )


def create_topics(
    client_config: Mapping[str, Any],
    names: Iterable[str],
    partitions: int,
    *,
    replication_factor: int = 1,
    config: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create topics on the cluster ``client_config`` (librdkafka settings) reaches; a
    topic that already exists is left as is. Returns once every partition of every
    topic has a leader. The local stack and compose's ``topics`` service create the
    pipeline's topics with it before any worker subscribes or producer publishes.
    """
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return
    admin = AdminClient(dict(client_config))
    futures = admin.create_topics(
        [NewTopic(n, partitions, replication_factor, config=dict(config or {})) for n in wanted],
        request_timeout=timeout_s,
    )
    for name, future in futures.items():
        # exception() rather than result(): a raised error's traceback would tie this
        # frame, and so the admin client and its threads, into a reference cycle.
        error = future.exception(timeout=timeout_s)
        if error is None:
            log.info("kafka.topic.created", topic=name, partitions=partitions)
        elif (
            isinstance(error, KafkaException)
            and error.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
        ):
            log.info("kafka.topic.exists", topic=name)
        else:
            raise ServiceError(f"creating topic {name} failed: {error}")
    _wait_for_leaders(admin, wanted, timeout_s)


def _wait_for_leaders(admin: AdminClient, topics: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = admin.list_topics(timeout=timeout_s)
        missing = [
            t
            for t in topics
            if t not in metadata.topics
            or metadata.topics[t].error is not None
            or any(p.leader < 0 for p in metadata.topics[t].partitions.values())
        ]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise ServiceError(f"topics without leaders after {timeout_s:.0f}s: {missing}")
        time.sleep(0.1)


def _can_listen(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:port now (TIME_WAIT does not count,
    as for Kafka, which also sets SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _escape_property(value: str) -> str:
    """Escape a value for a Java .properties file."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")
