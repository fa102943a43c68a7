"""Building and validating the Kubernetes manifests (``k8s/``) for the tests of test_k8s*.py.

* Building: every overlay (and the redis overlay with the GPU component) through
  ``kubectl kustomize``, offline, once per session; the fixtures ``builds``, ``build`` (one
  test per build) and ``reference`` (import them into a test module, as triton_fixture's).
* Reading the built objects: workloads, pod specs, containers, the worker, env, ports, selectors,
  ScaledObjects and their triggers.
* KEDA's reference data (``../shared/reference``): CRD schemas, the structural check that finds
  fields the API server would prune, and the scaler key tables of ``keda-triggers.md``.
* The names the manifests must repeat, taken from the code that owns them.

A missing ``kubectl`` or reference data skips the tests here and fails them under CI.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import unavailable

from nearline import constants as c
from nearline import settings
from nearline.brokers.redis_streams import GROUP as REDIS_GROUP
from nearline.brokers.redis_streams import stream_key
from nearline.brokers.servicebus_wire import lane_queue

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"

# The broker names the manifests must repeat (YAML cannot import them), in one place, taken
# from the code that owns them: the lane queues of Service Bus, the lane streams of Redis and
# their consumer group (named in a trigger only if it uses consumerGroup).
BROKER_NAMES: dict[str, Any] = {
    "servicebus_queues": {lane: lane_queue(c.REQUEST_QUEUE, lane) for lane in c.LANES},
    "redis_streams": {lane: stream_key(c.REQUEST_QUEUE, lane) for lane in c.LANES},
    "redis_consumer_group": REDIS_GROUP,
}

#: Oldest Kubernetes the manifests claim to support; they are also checked against the newest
#: schema kubernetes-validate ships (removed or renamed fields fail there).
MIN_KUBERNETES = "1.32"
KUBERNETES_VERSIONS = (MIN_KUBERNETES, kubernetes_validate.utils.latest_version())

OVERLAYS = ("azure", "redis")
#: Builds checked by the generic tests: the overlays, plus the redis overlay with the GPU component.
BUILDS = (*OVERLAYS, "redis+gpu")

ENV_NAMES = {v.name for v in settings.VARIABLES}
WORKER_COMMAND = ["python", "-m", "workers"]

Obj = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Building


def kustomize(kubectl: str, directory: Path) -> list[Obj]:
    """The objects ``kubectl kustomize directory`` builds."""
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@functools.cache
def build_all(kubectl: str) -> dict[str, list[Obj]]:
    """Every build of :data:`BUILDS`, made once per session (tests must not change them)."""
    built = {name: kustomize(kubectl, K8S / "overlays" / name) for name in OVERLAYS}
    with tempfile.TemporaryDirectory(prefix="redis-gpu-") as tmp:
        combo = Path(tmp)
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
        built["redis+gpu"] = kustomize(kubectl, combo)
    return built


@pytest.fixture(scope="module", name="builds")
def builds_fixture() -> dict[str, list[Obj]]:
    """Every build, by name (:data:`BUILDS`)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        unavailable("kubectl", "kubectl not found: it builds the overlays (`kubectl kustomize`)")
    return build_all(kubectl)


@pytest.fixture(params=BUILDS, name="build")
def build_fixture(request: pytest.FixtureRequest, builds: dict[str, list[Obj]]) -> list[Obj]:
    """Each build in turn."""
    return builds[request.param]


@pytest.fixture(scope="module", name="reference")
def reference_fixture() -> Path:
    """KEDA's reference data: ``keda-crds/`` and ``keda-triggers.md``."""
    if not (REFERENCE / "keda-triggers.md").is_file():
        unavailable("the KEDA reference data", f"reference data missing: {REFERENCE}")
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


def auth_provider(build: list[Obj], trigger: Obj) -> str | None:
    """The pod identity provider of the trigger's TriggerAuthentication, if it has one."""
    ref = trigger.get("authenticationRef")
    if ref is None:
        return None
    auth = named(build, ref.get("kind", "TriggerAuthentication"), ref["name"])
    return auth["spec"].get("podIdentity", {}).get("provider")


def scaling_targets(so: Obj) -> list[float]:
    """A ScaledObject's per-replica targets: its formula's and each trigger's."""
    modifiers = so["spec"].get("advanced", {}).get("scalingModifiers", {})
    values = [float(modifiers["target"])] if modifiers.get("formula") else []
    for trigger in so["spec"]["triggers"]:
        for key in ("messageCount", "lagCount", "pendingEntriesCount", "streamLength"):
            if key in trigger["metadata"]:
                values.append(float(trigger["metadata"][key]))
    return values


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
# Images


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """A Dockerfile's (INSTRUCTION, arguments), continuation lines joined, comments left out."""
    text = re.sub(r"\\\n", " ", path.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
