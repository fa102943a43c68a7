"""host.json: valid for the Functions host (SchemaStore's schema) and tuned for near-real-time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT.parent / "shared" / "reference" / "azure-functions-host.schema.json"


def timespan_s(value: str) -> float:
    """hh:mm:ss[.fff] → seconds."""
    hours, minutes, seconds = value.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@pytest.fixture(scope="module")
def host() -> dict[str, Any]:
    return json.loads((ROOT / "host.json").read_text())


def test_host_json_validates_against_the_functions_host_schema(host: dict[str, Any]) -> None:
    if not SCHEMA.exists():
        pytest.fail(f"reference schema missing: {SCHEMA}")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(host), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_would_catch_a_mistake(host: dict[str, Any]) -> None:
    # Guards the test above against a schema that accepts anything (e.g. a wrong oneOf branch).
    schema = json.loads(SCHEMA.read_text())
    broken = json.loads(json.dumps(host))
    broken["extensions"]["durableTask"]["storageProvider"]["maxQueuePolingInterval"] = "00:00:01"
    assert not jsonschema.Draft7Validator(schema).is_valid(broken)


def test_version_and_extension_bundle(host: dict[str, Any]) -> None:
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {
        "id": "Microsoft.Azure.Functions.ExtensionBundle",
        "version": "[4.*, 5.0.0)",
    }


def test_durable_hub_polls_its_queues_often(host: dict[str, Any]) -> None:
    durable = host["extensions"]["durableTask"]
    assert durable["hubName"]
    # The default backs off to 30 s when idle: the first job after a quiet spell would wait that long.
    assert timespan_s(durable["storageProvider"]["maxQueuePollingInterval"]) <= 2
    # Durable documents extended sessions for .NET only; elsewhere they can silently stall functions.
    assert not durable.get("extendedSessionsEnabled", False)


def test_service_bus_trigger_settles_and_renews(host: dict[str, Any]) -> None:
    sb = host["extensions"]["serviceBus"]
    assert sb["autoCompleteMessages"] is True  # the response function relies on it (see responses.py)
    assert sb["maxConcurrentCalls"] >= 1 and sb["prefetchCount"] >= 0
    assert timespan_s(sb["maxAutoLockRenewalDuration"]) > 0


def test_function_timeout_covers_the_longest_long_poll(host: dict[str, Any]) -> None:
    from nearline.constants import MAX_WAIT_S

    assert timespan_s(host["functionTimeout"]) > MAX_WAIT_S
    assert host["extensions"]["http"]["routePrefix"] == "api"  # the contract's /api/... paths


# --- the Durable Task Scheduler variant (docs/azure.md, The Durable Task Scheduler) ------------

DTS = ROOT / "host.durable-task-scheduler.json"
#: The backend's settings as Microsoft's Python samples for the scheduler write them.
DTS_PROVIDER = {"type": "azureManaged", "connectionStringName": "DURABLE_TASK_SCHEDULER_CONNECTION_STRING"}


def with_provider_type(schema: dict[str, Any]) -> dict[str, Any]:
    """The reference schema, admitting ``storageProvider.type``.

    SchemaStore's schema (2026-07) describes only the Azure Storage provider's settings and refuses
    any other key under ``storageProvider``, ``type`` among them, although the Durable extension
    reads ``type`` to pick its backend (``azureManaged``: the scheduler; ``mssql``, ``netherite``).
    This adds that one property and nothing else; the next test notices when SchemaStore does.
    """
    patched = json.loads(json.dumps(schema))
    provider = patched["definitions"]["durableTask-extension"]["properties"]["storageProvider"]
    provider["properties"]["type"] = {"enum": ["AzureStorage", "azureManaged", "mssql", "netherite"]}
    return patched


@pytest.fixture(scope="module")
def dts() -> dict[str, Any]:
    return json.loads(DTS.read_text())


def test_the_scheduler_variant_differs_from_host_json_only_in_its_backend(
    host: dict[str, Any], dts: dict[str, Any]
) -> None:
    assert dts["extensions"]["durableTask"]["storageProvider"] == DTS_PROVIDER
    strip = json.loads(json.dumps(host))
    strip["extensions"]["durableTask"]["storageProvider"] = DTS_PROVIDER
    assert dts == strip  # every other setting (timeouts, concurrency, Service Bus) is the same


def test_the_scheduler_variant_validates_against_the_schema(dts: dict[str, Any]) -> None:
    schema = with_provider_type(json.loads(SCHEMA.read_text()))
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(dts), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    broken = json.loads(json.dumps(dts))
    broken["extensions"]["durableTask"]["storageProvider"]["type"] = "azureManagd"
    assert not jsonschema.Draft7Validator(schema).is_valid(broken)


def test_the_reference_schema_refuses_nothing_but_the_provider_type(dts: dict[str, Any]) -> None:
    # When SchemaStore learns storageProvider.type, this fails: drop with_provider_type then.
    schema = json.loads(SCHEMA.read_text())
    found = [
        (list(c.path), c.message)
        for e in jsonschema.Draft7Validator(schema).iter_errors(dts)
        for c in (e.context or [e])
        if list(c.path)
    ]
    assert found == [
        (
            ["extensions", "durableTask", "storageProvider"],
            "Additional properties are not allowed ('type' was unexpected)",
        )
    ]
