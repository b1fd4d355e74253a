"""A real Prometheus (Debian's ``prometheus`` binary) scraping a local stack.

``PrometheusServer`` writes a configuration into its data folder, scrapes the targets
it is given (``Target``: a job and a host:port; ``stack_targets`` makes them from a
``StackInfo``), evaluates the repository's alert rules (docker/prometheus/), and serves
its HTTP API and UI on 127.0.0.1 and a free port. Targets live in a file-discovery
file, so ``set_targets`` changes them while it runs (a worker added, a view started).
``start()`` returns its address once ready (again on the same port and data after
``stop()``: the local stack restarts it so); ``stop()`` (SIGTERM, then SIGKILL) leaves
no process behind. ``PrometheusAPI`` reads the HTTP API of any running one (queries,
targets, alerts), by its address: `camstream status --watch` shows the stack's firing
alerts with it. Job names are docker/prometheus.yml's (``camstream-worker``,
``camstream-producer``, ``triton``), so one set of rules and dashboards serves both.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camstream.errors import ConfigError, ServiceError
from camstream.settings import REPO_ROOT
from camstream.stack.process import ManagedProcess, free_port

if TYPE_CHECKING:
    from camstream.stack.local import StackInfo

RULES_DIR = REPO_ROOT / "docker" / "prometheus"
DEFAULT_RULES = (RULES_DIR / "camstream-alerts.yml",)
DASHBOARDS_DIR = REPO_ROOT / "docker" / "grafana" / "dashboards"
INSTALL_HINT = (
    "install Debian's prometheus package (`apt-get install -y prometheus`; "
    "scripts/system-packages.sh does it as root)"
)


@dataclass(frozen=True)
class Target:
    """One endpoint to scrape: its job and ``host:port`` (path /metrics)."""

    job: str
    address: str


def job_of(service: str) -> str:
    """The job of a stack service's metrics port: worker-2 scrapes as camstream-worker."""
    for prefix in ("worker", "producer"):
        if service == prefix or service.startswith(f"{prefix}-"):
            return f"camstream-{prefix}"
    return f"camstream-{service}"


def stack_targets(info: StackInfo, host: str = "127.0.0.1") -> list[Target]:
    """Every metrics endpoint of a local stack: its processes' ports and Triton's."""
    targets = [
        Target(job_of(name), f"{host}:{port}") for name, port in sorted(info.metrics_ports.items())
    ]
    ports = info.triton_metrics_ports or [info.triton_metrics_port] * bool(info.triton_metrics_port)
    targets += [Target("triton", f"{host}:{port}") for port in ports]
    return targets


def find_binary(name: str = "prometheus") -> Path:
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"`{name}` is not on PATH: {INSTALL_HINT}")
    return Path(found)


class PrometheusAPI:
    """The HTTP API of a Prometheus at ``url`` (``http://host:port``); each request
    waits at most ``timeout_s``."""

    def __init__(self, url: str = "", timeout_s: float = 10.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def api(self, path: str, **params: str) -> Any:
        """``/api/v1/<path>``'s ``data``; raises ServiceError on an error answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"{self.url}/api/v1/{path}{query}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as r:
                answer = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            answer = json.loads(exc.read() or b"{}")
        if answer.get("status") != "success":
            raise ServiceError(f"prometheus {path} {params}: {answer.get('error', answer)}")
        return answer["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) of ``expr`` now, or at the
        Unix time ``at``."""
        when = {} if at is None else {"time": f"{at:.3f}"}
        data = self.api("query", query=expr, **when)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def active_targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def wait_scraped(self, timeout_s: float = 30.0) -> None:
        """Until every target has been scraped successfully once."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            active = self.active_targets()
            if active and all(t["health"] == "up" for t in active):
                return
            time.sleep(0.5)
        down = [f"{t['labels'].get('job')} {t['scrapeUrl']}: {t['lastError']}" for t in active]
        raise ServiceError(f"prometheus targets not up after {timeout_s:.0f}s: {down}")


class PrometheusServer(PrometheusAPI):
    """One prometheus process: its configuration, targets file and TSDB in
    ``data_dir``, its log in ``log_dir``."""

    def __init__(
        self,
        data_dir: Path,
        log_dir: Path,
        targets: Sequence[Target] = (),
        *,
        rule_files: Sequence[Path] = DEFAULT_RULES,
        scrape_interval_s: float = 5.0,
        evaluation_interval_s: float = 5.0,
        port: int = 0,
        retention: str = "2d",
    ) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.log_path = log_dir / "prometheus.log"
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.scrape_interval_s = scrape_interval_s
        self.evaluation_interval_s = evaluation_interval_s
        self.port = port
        self.retention = retention
        self._targets = list(targets)
        self._targets_lock = threading.Lock()  # the stack's threads all set targets
        self._process: ManagedProcess | None = None

    @property
    def config_path(self) -> Path:
        return self.data_dir / "prometheus.yml"

    @property
    def targets_path(self) -> Path:
        return self.data_dir / "targets.json"

    def write_config(self) -> Path:
        """The configuration file (and the targets file it discovers); returns it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.set_targets(self.targets)
        config = {
            "global": {
                "scrape_interval": _duration(self.scrape_interval_s),
                "scrape_timeout": _duration(min(self.scrape_interval_s, 10.0)),
                "evaluation_interval": _duration(self.evaluation_interval_s),
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {
                    # Each group of the targets file names its job (a label).
                    "job_name": "camstream",
                    "file_sd_configs": [
                        {"files": [str(self.targets_path)], "refresh_interval": "5s"}
                    ],
                },
                {
                    "job_name": "prometheus",
                    "static_configs": [{"targets": [f"127.0.0.1:{self.port or 9090}"]}],
                },
            ],
        }
        # JSON is YAML: no YAML writer needed, and nothing is quoted by hand.
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        return self.config_path

    def set_targets(self, targets: Sequence[Target]) -> None:
        """Replace the scraped targets (a running server picks them up within seconds:
        it watches the file). The file is replaced whole, never seen half-written."""
        groups: dict[str, list[str]] = {}
        for target in targets:
            groups.setdefault(target.job, []).append(target.address)
        body = [{"targets": addresses, "labels": {"job": job}} for job, addresses in groups.items()]
        with self._targets_lock:
            self._targets = list(targets)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.targets_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(body, indent=2) + "\n")
            tmp.replace(self.targets_path)

    @property
    def targets(self) -> list[Target]:
        with self._targets_lock:
            return list(self._targets)

    def check_rules(self) -> str:
        """`promtool check rules` of the rule files; raises ConfigError with its output."""
        import subprocess

        promtool = find_binary("promtool")
        result = subprocess.run(
            [str(promtool), "check", "rules", *map(str, self.rule_files)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise ConfigError(f"promtool check rules failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def start(self, timeout_s: float = 60.0) -> str:
        """Start it and wait until it is ready; returns its address."""
        binary = find_binary()
        missing = [str(p) for p in self.rule_files if not p.is_file()]
        if missing:
            raise ConfigError(f"Prometheus rule files not found: {', '.join(missing)}")
        self.port = self.port or free_port()
        self.write_config()  # with the targets as they are now: a restart keeps them
        argv = [
            str(binary),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]
        self._process = ManagedProcess("prometheus", argv, self.log_path, stop_timeout_s=20)
        self._process.start()
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            self._process.wait_ready(self._ready, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)

    @property
    def pid(self) -> int:
        if self._process is None:
            raise ServiceError("prometheus was never started")
        return self._process.pid

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def stop(self) -> int | None:
        return None if self._process is None else self._process.stop()


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


# The rules and dashboards as data (for tests and `camstream status`) ------------------

_COMPARISON = re.compile(
    r"^(?P<signal>.+?)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<limit>-?[0-9.]+(?:e-?[0-9]+)?)$"
)


def alert_rules(path: Path = DEFAULT_RULES[0]) -> list[dict[str, Any]]:
    """Every alerting rule of a rule file."""
    import yaml

    document = yaml.safe_load(path.read_text())
    return [r for group in document["groups"] for r in group["rules"] if "alert" in r]


def alert_signal(expr: str) -> tuple[str, str, float]:
    """An alert's ``<signal> <comparison> <number>``, split; ValueError otherwise."""
    match = _COMPARISON.match(" ".join(expr.split()))
    if match is None:
        raise ValueError(f"not '<signal> <comparison> <number>': {expr}")
    return match["signal"], match["op"], float(match["limit"])


def dashboard_queries(folder: Path = DASHBOARDS_DIR) -> list[tuple[str, str]]:
    """(dashboard title / panel title, expression) of every query of every dashboard."""
    queries = []
    for path in sorted(folder.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                queries.append((f"{dashboard['title']} / {panel['title']}", target["expr"]))
    return queries
