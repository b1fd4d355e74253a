"""The dashboards and alert rules operators look at beside the view (docker/grafana,
docker/prometheus), and camstream.stack.prometheus's configuration. That every
expression returns data from a real Prometheus is tests/integration/test_prometheus.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from camstream.settings import REPO_ROOT
from camstream.stack.local import StackInfo
from camstream.stack.prometheus import (
    DASHBOARDS_DIR,
    DEFAULT_RULES,
    PrometheusServer,
    Target,
    alert_rules,
    alert_signal,
    dashboard_queries,
    find_binary,
    job_of,
    stack_targets,
)

GRAFANA = REPO_ROOT / "docker" / "grafana"
# Triton 2.51's metrics the rules and dashboards use (test_prometheus.py sees them live).
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
}
PROCESS_METRICS = {"process_start_time_seconds", "up"}  # prometheus_client's, Prometheus'
METRIC = re.compile(r"\b((?:camstream|nv|process)_[a-z0-9_]+|up)\b(?!\s*\()")
SUFFIXES = ("_bucket", "_sum", "_count", "_total")


def exported_metrics() -> set[str]:
    """Every metric camstream's code declares (a string literal in its sources), by its
    name without a counter's or histogram's suffix."""
    names: set[str] = set()
    for room in ("camstream", "streams", "producers"):
        for path in (REPO_ROOT / room).rglob("*.py"):
            names |= set(re.findall(r'"(camstream_[a-z0-9_]+)"', path.read_text()))
    return {base_name(name) for name in names}


def base_name(metric: str) -> str:
    for suffix in SUFFIXES:
        if metric.endswith(suffix):
            return metric.removesuffix(suffix)
    return metric


def all_expressions() -> list[tuple[str, str]]:
    rules = [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    return rules + dashboard_queries()


def test_every_alert_is_a_signal_compared_with_a_number_and_says_what_to_do() -> None:
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert {
        "CameraDown",
        "ConsumerLagGrowing",
        "DlqRate",
        "DriftFlagged",
        "TritonNotReady",
        "WorkerRestarted",
    } <= names
    for rule in rules:
        signal, _op, _limit = alert_signal(rule["expr"])
        assert signal
        assert rule["labels"]["severity"] in ("page", "warn")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


@pytest.mark.parametrize(("where", "expr"), all_expressions())
def test_every_metric_an_expression_names_is_exported(where: str, expr: str) -> None:
    exported = exported_metrics()
    named = {m for m in METRIC.findall(expr) if m not in ("by", "le")}
    assert named, where
    for metric in named:
        if metric.startswith("nv_"):
            assert metric in TRITON_METRICS, f"{where}: {metric}"
        elif metric in PROCESS_METRICS:
            continue
        else:
            assert base_name(metric) in exported, f"{where}: {metric} is exported by nothing"


def test_dashboard_is_provisioned_against_the_provisioned_datasource() -> None:
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/camstream.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((DASHBOARDS_DIR / "camstream.json").read_text())
    assert dashboard["uid"] == "camstream-overview"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for subject in ("frames in", "predictions out", "dropped", "latency", "batch size",
                    "in flight", "queue time", "compute time", "lag", "dlq", "drift",
                    "model version"):  # fmt: skip
        assert subject in titles, subject
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid
        assert all(t["datasource"]["uid"] == uid for t in panel["targets"])


def test_promtool_accepts_the_rules() -> None:
    promtool = find_binary("promtool")
    result = subprocess.run(
        [str(promtool), "check", "rules", *map(str, DEFAULT_RULES)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_stack_targets_name_docker_composes_jobs() -> None:
    ports = {"worker": 9100, "worker-2": 9102, "producer": 9101, "view": 9103}
    info = StackInfo(metrics_ports=ports, triton_metrics_port=8002)
    assert stack_targets(info) == [
        Target("camstream-producer", "127.0.0.1:9101"),
        Target("camstream-view", "127.0.0.1:9103"),
        Target("camstream-worker", "127.0.0.1:9100"),
        Target("camstream-worker", "127.0.0.1:9102"),
        Target("triton", "127.0.0.1:8002"),
    ]
    assert job_of("stack") == "camstream-stack"
    compose = yaml.safe_load((REPO_ROOT / "docker" / "prometheus.yml").read_text())
    compose_jobs = {c["job_name"] for c in compose["scrape_configs"]}
    assert {"camstream-worker", "camstream-producer", "triton"} <= compose_jobs


def test_stack_targets_list_every_triton_server_of_a_stack() -> None:
    info = StackInfo(triton_metrics_port=8002, triton_metrics_ports=[8002, 8012])
    assert stack_targets(info) == [
        Target("triton", "127.0.0.1:8002"),
        Target("triton", "127.0.0.1:8012"),
    ]
    assert stack_targets(StackInfo()) == []


def test_configuration_discovers_targets_from_a_file_it_rewrites(tmp_path: Path) -> None:
    server = PrometheusServer(tmp_path / "prom", tmp_path / "logs", [Target("triton", "h:1")],
                              scrape_interval_s=1, port=9999)  # fmt: skip
    config = yaml.safe_load(server.write_config().read_text())
    assert config["global"]["scrape_interval"] == "1000ms"
    assert config["rule_files"] == [str(p.resolve()) for p in DEFAULT_RULES]
    (files,) = config["scrape_configs"][0]["file_sd_configs"]
    assert files["files"] == [str(server.targets_path)]
    server.set_targets([Target("camstream-worker", "h:2"), Target("camstream-worker", "h:3")])
    assert json.loads(server.targets_path.read_text()) == [
        {"targets": ["h:2", "h:3"], "labels": {"job": "camstream-worker"}}
    ]
