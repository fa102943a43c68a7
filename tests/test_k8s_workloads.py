"""Kubernetes workloads (``k8s/``) and their images (``docker/``).

The invariants that tie the built workloads to the code: the workers' ports, probes, grace
period, metrics Service, PodDisruptionBudget, GPUs and Triton; every pod's resources, user and
image; the Redis profile's Redis and API; and the Dockerfiles the images come from. The builds,
schemas and KEDA are checked in test_k8s.py; the helpers are k8s_validation.py.
"""

from __future__ import annotations

import math
import re
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from k8s_validation import (  # noqa: F401 - fixtures, registered by name
    ENV_NAMES,
    K8S,
    MIN_KUBERNETES,
    ROOT,
    Obj,
    build_fixture,
    builds_fixture,
    containers,
    dockerfile_instructions,
    env_of,
    named,
    objects,
    pod_specs,
    port_number,
    selects,
    worker_container,
    worker_deployments,
)

from nearline import constants as c
from nearline import settings
from nearline.addresses import is_loopback

#: Time after the lease for a worker to publish results and settle the batch it holds on SIGTERM.
SETTLE_ALLOWANCE_S = 15


# ---------------------------------------------------------------------------------------------
# Workers


def test_grace_period_covers_lease_and_settling(build: list[Obj]) -> None:
    """Past its lease a batch is someone else's (Redis reclaims it; the Service Bus client abandons
    it), so lease + settling is the longest a drain can usefully take, and must fit the grace."""
    for deployment in worker_deployments(build):
        env = env_of(worker_container(deployment), build)
        lease = max(float(env.get(settings.LEASE_S.name) or c.LEASE_S), c.LEASE_S)
        grace = deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        assert grace >= math.ceil(lease) + SETTLE_ALLOWANCE_S


def test_worker_probes_and_port_are_the_workers(build: list[Obj]) -> None:
    for deployment in worker_deployments(build):
        container = worker_container(deployment)
        env = env_of(container, build)
        assert int(env.get(settings.WORKER_PORT.name) or c.WORKER_PORT) == c.WORKER_PORT
        # The default is loopback (no key on these endpoints); probes and scrapes come to the pod IP.
        host = env.get(settings.WORKER_HOST.name)
        assert host and not is_loopback(host), "the worker must bind the pod's address explicitly"
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
    assert env[settings.MODEL_BACKEND.name] == "triton"
    url = urlsplit(env[settings.TRITON_URL.name] or "")
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
    keys = [e for e in container["env"] if e["name"] == settings.API_KEYS.name]
    assert keys and "secretKeyRef" in keys[0]["valueFrom"], "API keys come from a Secret"
    assert not objects(build, "Secret"), "no Secret value is shipped in the build"
    # A long-poll may run MAX_WAIT_S after the preStop pause before the server may stop.
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] >= pause + c.MAX_WAIT_S
    env = env_of(container, build)
    worker_env = env_of(worker_container(worker_deployments(build)[0]), build)
    assert env[settings.BROKER.name] == worker_env[settings.BROKER.name]
    assert f"--broker=$({settings.BROKER.name})" in container["args"]
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
        if e["name"] == settings.API_KEYS.name
    ]
    assert example["metadata"]["name"] == ref["name"]
    assert example["metadata"]["namespace"] == api["metadata"]["namespace"]
    assert ref["key"] in example["stringData"]
    assert "REPLACE" in example["stringData"][ref["key"]], "the example must not hold a usable key"
    kustomization = (K8S / "overlays" / "redis" / "kustomization.yaml").read_text()
    assert "api-keys.secret.example.yaml" not in kustomization


# ---------------------------------------------------------------------------------------------
# Images


@pytest.mark.parametrize(
    ("dockerfile", "port", "entry"),
    [
        ("worker.Dockerfile", c.WORKER_PORT, '["python", "-m", "workers"]'),
        ("api.Dockerfile", c.HTTP_PORT, '["nearline", "serve"]'),
    ],
)
def test_dockerfiles(dockerfile: str, port: int, entry: str) -> None:
    steps = dockerfile_instructions(ROOT / "docker" / dockerfile)
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
