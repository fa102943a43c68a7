"""Kubernetes manifests (``k8s/``) and images (``docker/``).

Every overlay is built with ``kubectl kustomize`` (offline) and checked three ways:
schemas (Kubernetes' own through kubernetes-validate; KEDA's CRDs from ``../shared/reference``),
KEDA trigger metadata (the scaler key tables of ``keda-triggers.md``), and the invariants that
tie the manifests to the code: ports, probe paths, env names, queue names, lease vs grace period.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from nearline import constants as c
from nearline.brokers.redis_streams import GROUP as REDIS_GROUP
from nearline.brokers.redis_streams import stream_key
from nearline.brokers.servicebus_wire import lane_queue

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# The broker names the manifests must repeat (YAML cannot import them), in one place, taken
# from the code that owns them: the lane queues of Service Bus, the lane streams of Redis and
# their consumer group (named in a trigger only if it uses consumerGroup).
BROKER_NAMES: dict[str, Any] = {
    "servicebus_queues": {lane: lane_queue(c.REQUEST_QUEUE, lane) for lane in c.LANES},
    "redis_streams": {lane: stream_key(c.REQUEST_QUEUE, lane) for lane in c.LANES},
    "redis_consumer_group": REDIS_GROUP,
}

#: Time after the lease for a worker to publish results and settle the batch it holds on SIGTERM.
SETTLE_ALLOWANCE_S = 15
#: Oldest Kubernetes the manifests claim to support; they are also checked against the newest
#: schema kubernetes-validate ships (removed or renamed fields fail there).
MIN_KUBERNETES = "1.32"
KUBERNETES_VERSIONS = (MIN_KUBERNETES, kubernetes_validate.utils.latest_version())

OVERLAYS = ("azure", "redis")
#: Builds checked by the generic tests: the overlays, plus the redis overlay with the GPU component.
BUILDS = (*OVERLAYS, "redis+gpu")

ENV_NAMES = {value for name, value in vars(c).items() if name.startswith("ENV_")}
WORKER_COMMAND = ["python", "-m", "workers"]

Obj = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Building


def _need(what: str, ok: bool) -> None:
    """Skip when a tool or file is missing, except under CI, where that is a failure."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{what} (CI=true: it must be there)")
    pytest.skip(what)


def _kustomize(kubectl: str, directory: Path) -> list[Obj]:
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Obj]]:
    """Every build, made once for the module."""
    kubectl = shutil.which("kubectl")
    _need("kubectl not found: it builds the overlays (`kubectl kustomize`)", kubectl is not None)
    assert kubectl is not None
    built = {name: _kustomize(kubectl, K8S / "overlays" / name) for name in OVERLAYS}
    combo = tmp_path_factory.mktemp("redis-gpu")
    (combo / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize refuses absolute paths; relative ones may leave the root.
                "resources": [os.path.relpath(K8S / "overlays" / "redis", combo)],
                "components": [os.path.relpath(K8S / "components" / "gpu", combo)],
            }
        )
    )
    built["redis+gpu"] = _kustomize(kubectl, combo)
    return built


@pytest.fixture(params=BUILDS)
def build(request: pytest.FixtureRequest, builds: dict[str, list[Obj]]) -> list[Obj]:
    return builds[request.param]


@pytest.fixture(scope="module")
def reference() -> Path:
    _need(f"reference data missing: {REFERENCE}", (REFERENCE / "keda-triggers.md").is_file())
    return REFERENCE


# ---------------------------------------------------------------------------------------------
# Reading the built objects


def objects(build: list[Obj], kind: str) -> list[Obj]:
    return [o for o in build if o["kind"] == kind]


def named(build: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects(build, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects in the build"
    return found[0]


def pod_specs(build: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, pod spec) for every Deployment and StatefulSet."""
    for o in build:
        if o["kind"] in ("Deployment", "StatefulSet"):
            yield o, o["spec"]["template"]["spec"]


def containers(spec: Obj) -> list[Obj]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def worker_deployments(build: list[Obj]) -> list[Obj]:
    found = [
        o
        for o in objects(build, "Deployment")
        if any(k.get("command") == WORKER_COMMAND for k in o["spec"]["template"]["spec"]["containers"])
    ]
    assert found, "no Deployment runs `python -m workers`"
    return found


def worker_container(deployment: Obj) -> Obj:
    (container,) = [
        k for k in deployment["spec"]["template"]["spec"]["containers"] if k.get("command") == WORKER_COMMAND
    ]
    return container


def env_of(container: Obj, build: list[Obj]) -> dict[str, str | None]:
    """The container's environment: envFrom ConfigMaps (resolved in the build), then env.

    Values from Secrets or the downward API are ``None``.
    """
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(named(build, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        else:
            pytest.fail(f"envFrom {source}: only ConfigMaps are expected")
    for item in container.get("env", []):
        env[item["name"]] = item.get("value")
    return env


def port_number(container: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    return int(number)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def scaled_objects(build: list[Obj]) -> list[Obj]:
    found = objects(build, "ScaledObject")
    assert found, "no ScaledObject in the build"
    return found


def triggers(build: list[Obj], kind: str) -> list[Obj]:
    return [t for so in scaled_objects(build) for t in so["spec"]["triggers"] if t["type"] == kind]


# ---------------------------------------------------------------------------------------------
# Reference data: KEDA's CRD schemas and scaler key tables


@functools.cache
def crd_schemas(reference: Path) -> dict[tuple[str, str], Obj]:
    """(apiVersion, kind) → openAPIV3Schema, from every CRD in keda-crds/."""
    schemas = {}
    for path in sorted((reference / "keda-crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def unknown_fields(value: Any, schema: Obj, path: str = "") -> list[str]:
    """Fields the API server would silently prune: keys a structural schema does not declare."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return []
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        found = []
        for key, item in value.items():
            if properties is not None and key in properties:
                found += unknown_fields(item, properties[key], f"{path}.{key}")
            elif isinstance(additional, dict):
                found += unknown_fields(item, additional, f"{path}.{key}")
            elif properties is not None and additional is None:
                found.append(f"{path}.{key}")
        return found
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [
            f for i, item in enumerate(value) for f in unknown_fields(item, schema["items"], f"{path}[{i}]")
        ]
    return []


def keda_problems(obj: Obj, schemas: dict[tuple[str, str], Obj]) -> list[str]:
    schema = schemas.get((obj["apiVersion"], obj["kind"]))
    if schema is None:
        return [f"no CRD schema for {obj['apiVersion']} {obj['kind']}"]
    validator = jsonschema.Draft202012Validator(schema)
    problems = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    return problems + [f"{p}: unknown field (pruned by the API server)" for p in unknown_fields(obj, schema)]


def scaler_tables(reference: Path) -> dict[str, dict[str, set[str]]]:
    """Per scaler, from keda-triggers.md: ``known`` keys, keys allowed in ``metadata``, ``required``.

    A row's key cell lists alternatives (``a / aFromEnv, b``) and may add ``(and ...FromEnv)``.
    Keys whose "where" column names no triggerMetadata (connection strings, passwords) belong in
    a TriggerAuthentication or the environment: only their ``...FromEnv`` forms may sit in metadata.
    """
    tables: dict[str, dict[str, set[str]]] = {}
    text = (reference / "keda-triggers.md").read_text()
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        title, _, body = section.partition("\n")
        rows = [line for line in body.splitlines() if line.startswith("|")]
        if not rows or rows[0].strip("| ").split("|")[0].strip() != "key":
            continue
        table: dict[str, set[str]] = {"known": set(), "metadata": set(), "required": set()}
        for row in rows[2:]:
            key_cell, where, rule = (cell.strip() for cell in row.strip().strip("|").split("|"))
            plain = re.sub(r"\(.*?\)", "", key_cell)
            keys = set(re.findall(r"[A-Za-z]+", plain))
            if "...FromEnv" in key_cell:
                keys |= {f"{k}FromEnv" for k in keys}
            table["known"] |= keys
            in_metadata = "triggerMetadata" in where
            table["metadata"] |= {k for k in keys if in_metadata or k.endswith("FromEnv")}
            if rule.lower().startswith("required"):
                table["required"] |= keys
        tables[title.strip()] = table
    return tables


# ---------------------------------------------------------------------------------------------
# Builds and schemas


def test_overlays_build_with_their_parts(builds: dict[str, list[Obj]]) -> None:
    azure, redis = builds["azure"], builds["redis"]
    for build in builds.values():
        assert len(worker_deployments(build)) == 1
        assert len(scaled_objects(build)) == 1
    named(azure, "Deployment", "triton")
    named(azure, "Service", "triton")
    named(azure, "TriggerAuthentication", "nearline-servicebus")
    named(redis, "StatefulSet", "redis")
    named(redis, "Service", "redis")
    named(redis, "Deployment", "nearline-api")
    named(redis, "Service", "nearline-api")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_objects_validate_against_kubernetes_schemas(build: list[Obj], version: str) -> None:
    failures = []
    for obj in build:
        if obj["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc}")
    assert not failures, "\n".join(failures)


def test_keda_objects_validate_against_crds(build: list[Obj], reference: Path) -> None:
    schemas = crd_schemas(reference)
    keda = [o for o in build if o["apiVersion"].startswith("keda.sh/")]
    assert keda
    failures = [f"{o['kind']}/{o['metadata']['name']}: {p}" for o in keda for p in keda_problems(o, schemas)]
    assert not failures, "\n".join(failures)


def test_validators_reject_broken_objects(builds: dict[str, list[Obj]], reference: Path) -> None:
    """The schema checks above can fail: a wrong type, a typo'd field, a field in the wrong place."""
    schemas = crd_schemas(reference)
    so = scaled_objects(builds["redis"])[0]
    wrong_type = copy.deepcopy(so)
    wrong_type["spec"]["minReplicaCount"] = "0"
    typo = copy.deepcopy(so)
    typo["spec"]["cooldownPeriods"] = 300
    assert keda_problems(wrong_type, schemas)
    assert keda_problems(typo, schemas)
    deployment = copy.deepcopy(worker_deployments(builds["redis"])[0])
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 60
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, MIN_KUBERNETES, strict=True)


# ---------------------------------------------------------------------------------------------
# KEDA triggers


def test_scaler_tables_parse(reference: Path) -> None:
    tables = scaler_tables(reference)
    assert {"azure-servicebus", "redis-streams"} <= tables.keys()
    assert {"queueName", "messageCount", "namespace", "useRegex"} <= tables["azure-servicebus"]["metadata"]
    assert "connection" not in tables["azure-servicebus"]["metadata"]
    assert tables["redis-streams"]["required"] == {"stream"}
    assert {"passwordFromEnv", "addressFromEnv", "lagCount"} <= tables["redis-streams"]["metadata"]


def test_trigger_metadata_keys_are_known_and_required_ones_present(build: list[Obj], reference: Path) -> None:
    tables = scaler_tables(reference)
    for so in scaled_objects(build):
        for trigger in so["spec"]["triggers"]:
            table = tables.get(trigger["type"])
            assert table is not None, f"no key table for scaler {trigger['type']}"
            keys = set(trigger["metadata"])
            assert keys <= table["metadata"], (
                f"{trigger['type']}: unknown or secret keys {keys - table['metadata']}"
            )
            assert table["required"] <= keys, f"{trigger['type']}: missing {table['required'] - keys}"


def _auth_provider(build: list[Obj], trigger: Obj) -> str | None:
    ref = trigger.get("authenticationRef")
    if ref is None:
        return None
    auth = named(build, ref.get("kind", "TriggerAuthentication"), ref["name"])
    return auth["spec"].get("podIdentity", {}).get("provider")


def test_servicebus_triggers_follow_the_scaler_rules(builds: dict[str, list[Obj]]) -> None:
    build = builds["azure"]
    found = triggers(build, "azure-servicebus")
    assert found
    for trigger in found:
        meta = trigger["metadata"]
        # queueName XOR (topicName + subscriptionName)
        assert ("queueName" in meta) != ("topicName" in meta and "subscriptionName" in meta)
        # No connection string: workload identity, which needs the namespace.
        assert _auth_provider(build, trigger) == "azure-workload"
        assert meta.get("namespace")
        assert "messageCount" in meta, "the per-replica target is chosen, not left to KEDA's default"


def test_redis_triggers_follow_the_scaler_rules(builds: dict[str, list[Obj]]) -> None:
    found = triggers(builds["redis"], "redis-streams")
    assert found
    for trigger in found:
        meta = trigger["metadata"]
        if {"pendingEntriesCount", "lagCount"} & meta.keys():
            assert meta.get("consumerGroup"), "pendingEntriesCount and lagCount need a consumerGroup"
        assert {"address", "addressFromEnv", "host", "hostFromEnv"} & meta.keys(), "no Redis connection"


# ---------------------------------------------------------------------------------------------
# Queue names and connections


def test_servicebus_trigger_covers_exactly_the_request_lanes(builds: dict[str, list[Obj]]) -> None:
    lanes = set(BROKER_NAMES["servicebus_queues"].values())
    others = {c.RESPONSE_QUEUE, f"{c.REQUEST_QUEUE}-dlq", f"{c.REQUEST_QUEUE}-high-extra", "other"}
    covered: set[str] = set()
    for trigger in triggers(builds["azure"], "azure-servicebus"):
        meta = trigger["metadata"]
        if meta.get("useRegex") == "true":
            # KEDA keeps a queue when the (leftmost-longest) match is the whole name.
            assert meta.get("operation", "sum") == "sum", "lanes must add up, not max or average"
            pattern = re.compile(meta["queueName"])
            matched = {q for q in lanes | others if pattern.fullmatch(q)}
        else:
            matched = {meta["queueName"]}
        assert not matched & others, f"trigger also counts {matched & others}"
        covered |= matched
    assert covered == lanes


def test_redis_triggers_cover_exactly_the_lane_streams(builds: dict[str, list[Obj]]) -> None:
    found = triggers(builds["redis"], "redis-streams")
    streams = [t["metadata"]["stream"] for t in found]
    assert sorted(streams) == sorted(BROKER_NAMES["redis_streams"].values())
    for trigger in found:
        assert trigger["metadata"].get("consumerGroup", REDIS_GROUP) == BROKER_NAMES["redis_consumer_group"]


def test_redis_formula_adds_up_every_trigger(builds: dict[str, list[Obj]]) -> None:
    (so,) = scaled_objects(builds["redis"])
    modifiers = so["spec"].get("advanced", {}).get("scalingModifiers")
    assert modifiers, "without a formula KEDA takes the max over the lanes, not their sum"
    names = [t.get("name") for t in so["spec"]["triggers"]]
    assert all(names) and len(set(names)) == len(names)
    formula = modifiers["formula"]
    assert re.fullmatch(r"\s*\w+(\s*\+\s*\w+)*\s*", formula), f"not a plain sum: {formula}"
    assert sorted(re.findall(r"\w+", formula)) == sorted(names)


def test_servicebus_namespace_matches_the_workers_broker(builds: dict[str, list[Obj]]) -> None:
    build = builds["azure"]
    broker = env_of(worker_container(worker_deployments(build)[0]), build)[c.ENV_BROKER]
    assert broker is not None
    url = urlsplit(broker)
    assert url.scheme == "servicebus"
    namespace, _, suffix = (url.hostname or "").partition(".")
    assert suffix == "servicebus.windows.net"
    for trigger in triggers(build, "azure-servicebus"):
        assert trigger["metadata"]["namespace"] == namespace


def test_redis_trigger_reaches_the_workers_redis(builds: dict[str, list[Obj]]) -> None:
    build = builds["redis"]
    broker = env_of(worker_container(worker_deployments(build)[0]), build)[c.ENV_BROKER]
    assert broker is not None
    url = urlsplit(broker)
    assert url.scheme == "redis"
    service = named(build, "Service", url.hostname or "")
    port = url.port or 6379
    assert port in [p["port"] for p in service["spec"]["ports"]]
    database = url.path.strip("/") or "0"
    for trigger in triggers(build, "redis-streams"):
        meta = trigger["metadata"]
        # KEDA connects from its own namespace: the Service name must carry the namespace.
        assert (
            meta["address"] == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{port}"
        )
        assert meta.get("databaseIndex", "0") == database


# ---------------------------------------------------------------------------------------------
# Scaling


def test_scale_target_is_a_deployment_of_the_build(build: list[Obj]) -> None:
    for so in scaled_objects(build):
        ref = so["spec"]["scaleTargetRef"]
        assert ref.get("kind", "Deployment") == "Deployment"
        assert ref.get("apiVersion", "apps/v1") == "apps/v1"
        target = named(build, "Deployment", ref["name"])
        assert target["metadata"]["namespace"] == so["metadata"]["namespace"]
        assert "replicas" not in target["spec"], "KEDA owns the replica count; apply would reset it"


def _targets(so: Obj) -> list[float]:
    modifiers = so["spec"].get("advanced", {}).get("scalingModifiers", {})
    values = [float(modifiers["target"])] if modifiers.get("formula") else []
    for trigger in so["spec"]["triggers"]:
        for key in ("messageCount", "lagCount", "pendingEntriesCount", "streamLength"):
            if key in trigger["metadata"]:
                values.append(float(trigger["metadata"][key]))
    return values


def test_target_per_replica_lets_a_worker_fill_its_batches(build: list[Obj]) -> None:
    """A target below max_batch would add workers before one worker's batches are full."""
    env = env_of(worker_container(worker_deployments(build)[0]), build)
    max_batch = int(env.get(c.ENV_MAX_BATCH) or c.MAX_BATCH)
    for so in scaled_objects(build):
        targets = _targets(so)
        assert targets
        assert min(targets) >= max_batch, f"targets {targets} below max batch {max_batch}"


def test_scale_from_zero_and_gentle_scale_in(build: list[Obj]) -> None:
    for so in scaled_objects(build):
        spec = so["spec"]
        assert spec["maxReplicaCount"] > spec.get("minReplicaCount", 0)
        if spec.get("minReplicaCount", 0) == 0:
            # With zero consumers nothing is ever pending: a measure of unread entries must wake
            # the workers (the stream's length, which the backend keeps to waiting + leased).
            for trigger in spec["triggers"]:
                if trigger["type"] == "redis-streams":
                    meta = trigger["metadata"]
                    assert "consumerGroup" not in meta or "lagCount" in meta, "pending entries cannot wake"
        polling = spec.get("pollingInterval", 30)
        down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert down["stabilizationWindowSeconds"] >= max(60, 2 * polling)
        assert spec.get("cooldownPeriod", 300) >= down["stabilizationWindowSeconds"] // 2
        assert any(
            (p["type"] == "Pods" and p["value"] <= 2) or (p["type"] == "Percent" and p["value"] <= 50)
            for p in down["policies"]
        ), "scale-in removes many pods at once"


# ---------------------------------------------------------------------------------------------
# Workers


def test_grace_period_covers_lease_and_settling(build: list[Obj]) -> None:
    """Past its lease a batch is someone else's (Redis reclaims it; the Service Bus client abandons
    it), so lease + settling is the longest a drain can usefully take, and must fit the grace."""
    for deployment in worker_deployments(build):
        env = env_of(worker_container(deployment), build)
        lease = max(float(env.get(c.ENV_LEASE_S) or c.LEASE_S), c.LEASE_S)
        grace = deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        assert grace >= math.ceil(lease) + SETTLE_ALLOWANCE_S


def test_worker_probes_and_port_are_the_workers(build: list[Obj]) -> None:
    for deployment in worker_deployments(build):
        container = worker_container(deployment)
        env = env_of(container, build)
        assert int(env.get(c.ENV_WORKER_PORT) or c.WORKER_PORT) == c.WORKER_PORT
        assert c.WORKER_PORT in [p["containerPort"] for p in container["ports"]]
        for probe, path in (
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("startupProbe", "/healthz"),
        ):
            get = container[probe]["httpGet"]
            assert get["path"] == path, probe
            assert port_number(container, get["port"]) == c.WORKER_PORT, probe
        assert "preStop" not in container.get("lifecycle", {}), "SIGTERM drains; a preStop delays it"


def test_worker_metrics_service_selects_the_workers(build: list[Obj]) -> None:
    (deployment,) = worker_deployments(build)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    services = [s for s in objects(build, "Service") if selects(s["spec"]["selector"], labels)]
    assert services
    for service in services:
        for port in service["spec"]["ports"]:
            assert port_number(worker_container(deployment), port["targetPort"]) == c.WORKER_PORT


def test_pdb_selects_the_workers_and_nothing_else(build: list[Obj]) -> None:
    (deployment,) = worker_deployments(build)
    worker_labels = deployment["spec"]["template"]["metadata"]["labels"]
    budgets = [
        p
        for p in objects(build, "PodDisruptionBudget")
        if selects(p["spec"]["selector"]["matchLabels"], worker_labels)
    ]
    assert len(budgets) == 1
    (budget,) = budgets
    # minAvailable would block every drain while KEDA runs one worker.
    assert "minAvailable" not in budget["spec"]
    for workload, _ in pod_specs(build):
        if workload is not deployment:
            other = workload["spec"]["template"]["metadata"]["labels"]
            assert not selects(budget["spec"]["selector"]["matchLabels"], other), workload["metadata"]["name"]


def test_azure_workers_get_a_gpu_on_the_gpu_pool(builds: dict[str, list[Obj]]) -> None:
    for name in ("azure", "redis+gpu"):
        (deployment,) = worker_deployments(builds[name])
        spec = deployment["spec"]["template"]["spec"]
        resources = worker_container(deployment)["resources"]
        assert (
            str(resources["requests"]["nvidia.com/gpu"]) == str(resources["limits"]["nvidia.com/gpu"]) == "1"
        )
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    (deployment,) = worker_deployments(builds["azure"])
    assert deployment["spec"]["template"]["spec"]["nodeSelector"]
    (cpu,) = worker_deployments(builds["redis"])
    limits = worker_container(cpu)["resources"].get("limits", {})
    assert "nvidia.com/gpu" not in limits, "the redis overlay's default is CPU"


def test_azure_workers_use_workload_identity_and_triton(builds: dict[str, list[Obj]]) -> None:
    build = builds["azure"]
    (deployment,) = worker_deployments(build)
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    account = named(build, "ServiceAccount", template["spec"]["serviceAccountName"])
    assert re.fullmatch(
        r"[0-9a-f-]{36}", account["metadata"]["annotations"]["azure.workload.identity/client-id"]
    )
    env = env_of(worker_container(deployment), build)
    assert env[c.ENV_MODEL_BACKEND] == "triton"
    url = urlsplit(env[c.ENV_TRITON_URL] or "")
    assert url.scheme == "grpc"
    service = named(build, "Service", url.hostname or "")
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == url.port]
    triton = [
        d
        for d in objects(build, "Deployment")
        if selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
    ]
    assert len(triton) == 1
    (server,) = triton[0]["spec"]["template"]["spec"]["containers"]
    assert port_number(server, port["targetPort"]) == 8001
    assert "--model-repository=/models" in server["args"]
    assert any(m["mountPath"] == "/models" for m in server["volumeMounts"])
    assert server["image"].startswith("nvcr.io/nvidia/tritonserver:") and server["image"].endswith("-py3")
    assert str(server["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    for probe, path in (("livenessProbe", "/v2/health/live"), ("readinessProbe", "/v2/health/ready")):
        assert server[probe]["httpGet"]["path"] == path
        assert port_number(server, server[probe]["httpGet"]["port"]) == 8000


def test_env_names_are_the_codes(build: list[Obj]) -> None:
    seen = set()
    for _, spec in pod_specs(build):
        for container in containers(spec):
            seen |= {name for name in env_of(container, build) if name.startswith("NEARLINE_")}
    for config in objects(build, "ConfigMap"):
        seen |= {name for name in config.get("data", {}) if name.startswith("NEARLINE_")}
    assert seen, "no NEARLINE_* settings found"
    assert seen <= ENV_NAMES, f"not read by the code: {seen - ENV_NAMES}"


# ---------------------------------------------------------------------------------------------
# Every pod


def test_containers_have_resource_requests(build: list[Obj]) -> None:
    for workload, spec in pod_specs(build):
        for container in containers(spec):
            requests = container.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= requests.keys(), f"{workload['metadata']['name']}/{container['name']}"
            assert "memory" in container["resources"].get("limits", {}), container["name"]


def test_pods_run_as_non_root(build: list[Obj]) -> None:
    for workload, spec in pod_specs(build):
        assert spec.get("securityContext", {}).get("runAsNonRoot") is True, workload["metadata"]["name"]
        for container in containers(spec):
            context = container.get("securityContext", {})
            assert context.get("allowPrivilegeEscalation") is False, container["name"]


def test_images_are_pinned(build: list[Obj]) -> None:
    for _, spec in pod_specs(build):
        for container in containers(spec):
            image = container["image"]
            name, _, tag = image.rpartition(":")
            assert name and "/" not in tag and tag not in ("", "latest"), image


# ---------------------------------------------------------------------------------------------
# Redis profile: Redis and the API


def test_redis_persists_to_a_volume(builds: dict[str, list[Obj]]) -> None:
    redis = named(builds["redis"], "StatefulSet", "redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = " ".join(container["args"])
    assert "--appendonly yes" in args and "--appendfsync everysec" in args
    assert "--maxmemory-policy noeviction" in args, "a queue must never evict"
    claims = {t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    data_dir = container["args"][container["args"].index("--dir") + 1]
    assert any(mounts.get(claim) == data_dir for claim in claims), "the AOF is not on the claimed volume"


def test_api_deployment(builds: dict[str, list[Obj]]) -> None:
    build = builds["redis"]
    api = named(build, "Deployment", "nearline-api")
    spec = api["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert c.HTTP_PORT in [p["containerPort"] for p in container["ports"]]
    assert f"--port={c.HTTP_PORT}" in container["args"] and "--no-workers" in container["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/api/health"
        assert port_number(container, container[probe]["httpGet"]["port"]) == c.HTTP_PORT
    keys = [e for e in container["env"] if e["name"] == c.ENV_API_KEYS]
    assert keys and "secretKeyRef" in keys[0]["valueFrom"], "API keys come from a Secret"
    assert not objects(build, "Secret"), "no Secret value is shipped in the build"
    # A long-poll may run MAX_WAIT_S after the preStop pause before the server may stop.
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] >= pause + c.MAX_WAIT_S
    env = env_of(container, build)
    worker_env = env_of(worker_container(worker_deployments(build)[0]), build)
    assert env[c.ENV_BROKER] == worker_env[c.ENV_BROKER]
    assert f"--broker=$({c.ENV_BROKER})" in container["args"]
    (service,) = [
        s
        for s in objects(build, "Service")
        if selects(s["spec"]["selector"], api["spec"]["template"]["metadata"]["labels"])
    ]
    assert [p["port"] for p in service["spec"]["ports"]] == [c.HTTP_PORT]


def test_api_keys_secret_example_matches_the_deployment(builds: dict[str, list[Obj]]) -> None:
    example = yaml.safe_load((K8S / "overlays" / "redis" / "api-keys.secret.example.yaml").read_text())
    kubernetes_validate.validate(example, MIN_KUBERNETES, strict=True)
    api = named(builds["redis"], "Deployment", "nearline-api")
    (ref,) = [
        e["valueFrom"]["secretKeyRef"]
        for e in api["spec"]["template"]["spec"]["containers"][0]["env"]
        if e["name"] == c.ENV_API_KEYS
    ]
    assert example["metadata"]["name"] == ref["name"]
    assert example["metadata"]["namespace"] == api["metadata"]["namespace"]
    assert ref["key"] in example["stringData"]
    assert "REPLACE" in example["stringData"][ref["key"]], "the example must not hold a usable key"
    kustomization = (K8S / "overlays" / "redis" / "kustomization.yaml").read_text()
    assert "api-keys.secret.example.yaml" not in kustomization


# ---------------------------------------------------------------------------------------------
# Images


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


@pytest.mark.parametrize(
    ("dockerfile", "port", "entry"),
    [
        ("worker.Dockerfile", c.WORKER_PORT, '["python", "-m", "workers"]'),
        ("api.Dockerfile", c.HTTP_PORT, '["nearline", "serve"]'),
    ],
)
def test_dockerfiles(dockerfile: str, port: int, entry: str) -> None:
    steps = _instructions(ROOT / "docker" / dockerfile)
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "runs as root"
    assert ("EXPOSE", str(port)) in steps
    assert ("ENTRYPOINT", entry) in steps
    runs = " ".join(arg for op, arg in steps if op == "RUN")
    if dockerfile == "api.Dockerfile":
        assert "requirements-worker.txt" not in runs and "torch" not in runs, "the API needs no model stack"
    else:
        assert "requirements-worker.txt" in runs
        assert "nearline models build --out /opt/nearline/models" in runs


def test_dockerignore_keeps_the_context_small_and_complete() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "models", "local.settings.json"} <= ignored
    copied = {
        "README.md",
        "pyproject.toml",
        "requirements.txt",
        "requirements-worker.txt",
        "nearline",
        "workers",
    }
    assert not copied & ignored
