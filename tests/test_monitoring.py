"""Prometheus and Grafana: the metric names nearline exports, and ``k8s/components/monitoring``.

The names are checked against Prometheus's naming conventions (a unit on every histogram,
``_total`` on counters, lanes on what a lane can make differ) and against docs/operations.md's
table. The monitoring component is built into the redis overlay with ``kubectl kustomize``: the
ConfigMap validates against Kubernetes' schema; the PrometheusRule and the PodMonitor have no
schema at hand (the Prometheus Operator's CRDs are not in ``../shared/reference``), so their
shape is checked by the rules written here; ``promtool`` is not installed, so every PromQL
expression is checked minimally: brackets balance and each ``nearline_*`` name it reads is one
that nearline exports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import unavailable
from k8s_validation import K8S, MIN_KUBERNETES, Obj, kustomize, named
from prometheus_client import CollectorRegistry

from nearline.callback_sender import CallbackSender
from nearline.callbacks import CallbackGuard
from nearline.deliveries import Dispatcher
from nearline.http.metrics import ApiMetrics
from nearline.settings import WebhookSettings
from nearline.store.memory import MemoryStore
from nearline.worker.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = ROOT / "docs" / "operations.md"
MONITORING = K8S / "components" / "monitoring"
#: The unit suffixes nearline's histograms may have (Prometheus: base units, plural).
UNITS = ("_seconds", "_bytes", "_messages")
#: Metrics a lane can make differ: each has a ``lane`` label.
BY_LANE = {
    "nearline_worker_queue_wait_seconds",
    "nearline_worker_results",
    "nearline_worker_failures",
    "nearline_worker_dead_lettered",
}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}


def registries() -> list[CollectorRegistry]:
    """Every registry nearline exports: the API's (hops included), a worker's, the callbacks'."""
    callbacks = CollectorRegistry()
    Dispatcher(MemoryStore(), CallbackSender(CallbackGuard()), WebhookSettings(), registry=callbacks)
    return [ApiMetrics().registry, WorkerMetrics().registry, callbacks]


def families() -> dict[str, Any]:
    return {f.name: f for r in registries() for f in r.collect()}


def exported_names() -> set[str]:
    """Every series name a scrape can show (a counter's ``_total``, a histogram's ``_bucket``...)."""
    names = set()
    for name, family in families().items():
        names |= {name + s for s in SUFFIXES.get(family.type, ("",))}
    return names


def labels_of(family: Any) -> set[str]:
    """A family's label names, read from the metric object (no samples needed)."""
    for r in registries():
        metric = r._names_to_collectors.get(family.name + ("_total" if family.type == "counter" else ""))
        if metric is not None:
            return set(metric._labelnames)
    raise AssertionError(family.name)


# --- the names ------------------------------------------------------------------------------


def test_metric_names_follow_the_prometheus_conventions() -> None:
    found = families()
    assert len(found) >= 15
    for name, family in found.items():
        assert re.fullmatch(r"nearline_[a-z0-9_]+", name), name
        assert not name.endswith("_total"), f"{name}: prometheus_client adds _total to counters"
        if family.type == "histogram":
            assert name.endswith(UNITS), f"{name}: a histogram needs a unit suffix"
        if family.type == "gauge":
            assert not name.endswith(("_total", "_count")), name
    for name in BY_LANE:
        assert "lane" in labels_of(found[name]), name


def test_operations_md_lists_every_metric_and_no_other() -> None:
    section = OPERATIONS.read_text().split("\n## Metrics and alerts\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(nearline_[a-z0-9_]+)`", section, re.MULTILINE))
    shown = {name + ("_total" if f.type == "counter" else "") for name, f in families().items()}
    assert documented == shown


# --- the monitoring component ---------------------------------------------------------------


@pytest.fixture(scope="module")
def monitored() -> list[Obj]:
    """The redis overlay with the monitoring component, as ``components:`` in a kustomization."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        unavailable("kubectl", "kubectl not found: it builds the overlays (`kubectl kustomize`)")
    with tempfile.TemporaryDirectory(prefix="redis-monitoring-") as tmp:
        combo = Path(tmp)
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": "nearline",  # as in the overlay the component is added to
            "resources": [os.path.relpath(K8S / "overlays" / "redis", combo)],
            "components": [os.path.relpath(MONITORING, combo)],
        }
        (combo / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return kustomize(kubectl, combo)


def expressions(build: list[Obj]) -> list[str]:
    """Every PromQL expression: the alerts' and the dashboard's."""
    rules = named(build, "PrometheusRule", "nearline")["spec"]["groups"][0]["rules"]
    panels = dashboard(build)["panels"]
    return [r["expr"] for r in rules] + [t["expr"] for p in panels for t in p["targets"]]


def dashboard(build: list[Obj]) -> dict[str, Any]:
    config_map = named(build, "ConfigMap", "nearline-grafana-dashboard")
    return json.loads(config_map["data"]["nearline.json"])  # type: ignore[no-any-return]


def test_the_dashboard_is_a_configmap_grafana_loads(monitored: list[Obj]) -> None:
    config_map = named(monitored, "ConfigMap", "nearline-grafana-dashboard")
    kubernetes_validate.validate(config_map, MIN_KUBERNETES, strict=True)
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "nearline"
    board = dashboard(monitored)
    assert (board["uid"], board["title"]) == ("nearline", "nearline")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    for panel in board["panels"]:
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}


def test_the_prometheusrule_has_the_operators_shape_and_the_alerts(monitored: list[Obj]) -> None:
    rule = named(monitored, "PrometheusRule", "nearline")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "nearline"
    assert set(rule["spec"]) == {"groups"}
    alerts = {}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"]
        for r in group["rules"]:
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
            assert isinstance(r["expr"], str) and r["labels"]["severity"] in ("warning", "critical")
            assert re.fullmatch(r"\d+[smh]", r.get("for", "0s")), r
            assert all(isinstance(v, str) for v in (*r["labels"].values(), *r["annotations"].values()))
            alerts[r["alert"]] = r["expr"]
    # what an operator wants: queue age, dead letters, failure rate, no ready workers
    wanted = {
        "NearlineQueueWaitHigh": "nearline_worker_queue_wait_seconds_bucket",
        "NearlineQueueStalled": "nearline_queue_depth",
        "NearlineDeadLetters": "nearline_worker_dead_lettered_total",
        "NearlineFailureRate": 'nearline_worker_results_total{status="Failed"}',
        "NearlineNoReadyWorkers": "nearline_worker_ready",
    }
    for alert, needle in wanted.items():
        assert needle in alerts[alert], alert


def test_every_expression_reads_metrics_nearline_exports(monitored: list[Obj]) -> None:
    exported = exported_names()
    for expr in expressions(monitored):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        assert expr.count("[") == expr.count("]"), expr
        names = set(re.findall(r"\bnearline_[a-z0-9_]+", expr))
        assert names, expr
        assert names <= exported, f"{sorted(names - exported)} not exported: {expr}"


def test_the_podmonitor_scrapes_the_api_and_the_workers(monitored: list[Obj]) -> None:
    monitor = named(monitored, "PodMonitor", "nearline")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (selector,) = monitor["spec"]["selector"]["matchExpressions"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    scraped = set()
    for kind, name in (("Deployment", "nearline-api"), ("Deployment", "nearline-worker")):
        pod = named(monitored, kind, name)["spec"]["template"]
        if pod["metadata"]["labels"].get(selector["key"]) in selector["values"]:
            ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
            assert endpoint["port"] in ports, name
            scraped.add(name)
    assert scraped == {"nearline-api", "nearline-worker"}
