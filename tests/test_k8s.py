"""Kubernetes manifests (``k8s/``): the builds, their schemas, KEDA's triggers and scaling.

Every overlay is built with ``kubectl kustomize`` (offline) and checked three ways:
schemas (Kubernetes' own through kubernetes-validate; KEDA's CRDs from ``../shared/reference``),
KEDA trigger metadata (the scaler key tables of ``keda-triggers.md``), and the invariants that
tie the manifests to the code: queue names, connections, scaling targets. The workloads, the
pods and the images are checked in test_k8s_workloads.py; the building and validating helpers
are k8s_validation.py.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
from k8s_validation import (  # noqa: F401 - fixtures, registered by name
    BROKER_NAMES,
    KUBERNETES_VERSIONS,
    MIN_KUBERNETES,
    REDIS_GROUP,
    Obj,
    auth_provider,
    build_fixture,
    builds_fixture,
    crd_schemas,
    env_of,
    keda_problems,
    named,
    reference_fixture,
    scaled_objects,
    scaler_tables,
    scaling_targets,
    triggers,
    worker_container,
    worker_deployments,
)

from nearline import constants as c
from nearline import settings

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


def test_servicebus_triggers_follow_the_scaler_rules(builds: dict[str, list[Obj]]) -> None:
    build = builds["azure"]
    found = triggers(build, "azure-servicebus")
    assert found
    for trigger in found:
        meta = trigger["metadata"]
        # queueName XOR (topicName + subscriptionName)
        assert ("queueName" in meta) != ("topicName" in meta and "subscriptionName" in meta)
        # No connection string: workload identity, which needs the namespace.
        assert auth_provider(build, trigger) == "azure-workload"
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
    broker = env_of(worker_container(worker_deployments(build)[0]), build)[settings.BROKER.name]
    assert broker is not None
    url = urlsplit(broker)
    assert url.scheme == "servicebus"
    namespace, _, suffix = (url.hostname or "").partition(".")
    assert suffix == "servicebus.windows.net"
    for trigger in triggers(build, "azure-servicebus"):
        assert trigger["metadata"]["namespace"] == namespace


def test_redis_trigger_reaches_the_workers_redis(builds: dict[str, list[Obj]]) -> None:
    build = builds["redis"]
    broker = env_of(worker_container(worker_deployments(build)[0]), build)[settings.BROKER.name]
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


def test_target_per_replica_lets_a_worker_fill_its_batches(build: list[Obj]) -> None:
    """A target below max_batch would add workers before one worker's batches are full."""
    env = env_of(worker_container(worker_deployments(build)[0]), build)
    max_batch = int(env.get(settings.MAX_BATCH.name) or c.MAX_BATCH)
    for so in scaled_objects(build):
        targets = scaling_targets(so)
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
