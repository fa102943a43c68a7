"""Load shedding on Azure: the HTTP functions answer 503 + Retry-After while the request queues
are at ``NEARLINE_MAX_QUEUE_DEPTH``, from a cached reading of the queues' runtime properties.

Called in-process (tests/test_azure_http.py's way) with the durable-client double, over the Service
Bus broker the Function app opens from its settings; the management endpoint is the one stand-in:
it answers ``get_queue_runtime_properties`` with the SDK's own ``QueueRuntimeProperties`` and
counts the calls, which is how "no management call per submit" is checked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import pytest
from azure.servicebus.exceptions import ServiceBusConnectionError
from azure.servicebus.management import QueueRuntimeProperties
from azure.servicebus.management._generated.models import MessageCountDetails, QueueDescription
from durable_history import FakeDurableClient, run
from test_servicebus import CONNECTION

from nearline.brokers.servicebus_wire import lane_queue
from nearline.constants import LANES, REQUEST_QUEUE
from nearline.pipelines.spec import Catalog
from orchestrations import http_api, queue_depth, scoring

BASE = "https://nearline-fn.azurewebsites.net"
DIGITS = {"input": {"pixels": [0.0] * 64}}
LIMIT = 10


class QueueProperties:
    """Stands in for the namespace's management endpoint: each lane's active message count."""

    def __init__(self) -> None:
        self.active = {lane_queue(REQUEST_QUEUE, lane): 0 for lane in LANES}
        self.calls: list[str] = []
        self.failure: Exception | None = None

    def get_queue_runtime_properties(self, name: str) -> QueueRuntimeProperties:
        self.calls.append(name)
        if self.failure is not None:
            raise self.failure
        details = MessageCountDetails(active_message_count=self.active[name])
        return QueueRuntimeProperties._from_internal_entity(
            name, QueueDescription(message_count_details=details)
        )

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def properties(monkeypatch: pytest.MonkeyPatch) -> Iterator[QueueProperties]:
    """The app configured as on Azure (a Service Bus connection, a depth limit), reading depth
    from the stand-in; fresh process state."""
    stand_in = QueueProperties()
    monkeypatch.setattr(
        "azure.servicebus.management.ServiceBusAdministrationClient.from_connection_string",
        staticmethod(lambda _: stand_in),
    )
    monkeypatch.setenv("ServiceBusConnection", CONNECTION)
    monkeypatch.setenv("NEARLINE_MAX_QUEUE_DEPTH", str(LIMIT))
    monkeypatch.delenv("NEARLINE_BROKER", raising=False)
    monkeypatch.setattr(scoring, "_broker", None)
    monkeypatch.setattr(queue_depth, "_gate", None)
    monkeypatch.setattr(queue_depth, "_no_gate", False)
    try:
        yield stand_in
    finally:
        if scoring._broker is not None:
            scoring._broker.close()


@pytest.fixture
def clock(properties: QueueProperties) -> Clock:
    gate = queue_depth.request_queue_depth()
    assert gate is not None and gate.limit == LIMIT
    gate.clock = clock = Clock()
    return clock


def submit(client: FakeDurableClient, catalog: Catalog, key: str | None = None) -> func.HttpResponse:
    req = func.HttpRequest(
        "POST",
        f"{BASE}/api/score/digits",
        headers={"Idempotency-Key": key} if key else {},
        params={},
        route_params={"pipeline": "digits"},
        body=json.dumps(DIGITS).encode(),
    )
    return run(http_api.submit(req, client, lambda: catalog))


def health(catalog: Catalog) -> Any:
    req = func.HttpRequest("GET", f"{BASE}/api/health", headers={}, params={}, route_params={}, body=b"")
    return json.loads(run(http_api.health(req, lambda: catalog)).get_body())


def test_over_the_depth_a_submit_is_503_with_retry_after_and_starts_nothing(
    properties: QueueProperties, clock: Clock, catalog: Catalog
) -> None:
    properties.active[lane_queue(REQUEST_QUEUE, "low")] = LIMIT
    client = FakeDurableClient()
    resp = submit(client, catalog)
    assert (resp.status_code, resp.headers["Retry-After"]) == (503, "1")
    error = json.loads(resp.get_body())["error"]
    assert error["code"] == "Overloaded" and f"limit {LIMIT}" in error["message"]
    assert client.calls_of("start_new") == []


def test_under_the_depth_submits_are_accepted_and_the_queues_are_read_once_per_interval(
    properties: QueueProperties, clock: Clock, catalog: Catalog
) -> None:
    properties.active[lane_queue(REQUEST_QUEUE, "normal")] = LIMIT - 1
    client = FakeDurableClient()
    assert {submit(client, catalog).status_code for _ in range(20)} == {202}
    assert len(client.calls_of("start_new")) == 20
    assert sorted(properties.calls) == sorted(lane_queue(REQUEST_QUEUE, lane) for lane in LANES)


def test_the_reading_is_refreshed_once_it_is_old(
    properties: QueueProperties, clock: Clock, catalog: Catalog
) -> None:
    client = FakeDurableClient()
    properties.active[REQUEST_QUEUE] = LIMIT
    assert submit(client, catalog).status_code == 503
    properties.active[REQUEST_QUEUE] = 0  # the backlog drains
    clock.now += 1.0
    assert submit(client, catalog).status_code == 503  # still the cached reading
    clock.now += queue_depth.DEPTH_READING_S
    assert submit(client, catalog).status_code == 202
    assert len(properties.calls) == 2 * len(LANES)


def test_a_repeat_of_a_keyed_job_is_not_refused_for_depth(
    properties: QueueProperties, clock: Clock, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEARLINE_SECRET", "test-installation-secret-" + "s" * 16)
    client = FakeDurableClient()
    first = submit(client, catalog, key="order-7")
    assert first.status_code == 202
    properties.active[REQUEST_QUEUE] = LIMIT
    clock.now += queue_depth.DEPTH_READING_S
    again = submit(client, catalog, key="order-7")
    assert again.status_code == 202
    assert json.loads(again.get_body())["id"] == json.loads(first.get_body())["id"]
    assert submit(client, catalog, key="order-8").status_code == 503


def test_when_the_depth_cannot_be_read_submissions_go_through_and_it_is_logged(
    properties: QueueProperties, clock: Clock, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    properties.failure = ServiceBusConnectionError(message="namespace unreachable")
    client = FakeDurableClient()
    with caplog.at_level(logging.WARNING, logger="nearline.azure.shedding"):
        assert {submit(client, catalog).status_code for _ in range(3)} == {202}
    assert "namespace unreachable" in caplog.text
    assert len(properties.calls) == 1  # a failed read is not retried on every submit either


def test_health_reports_the_cached_depth(
    properties: QueueProperties, clock: Clock, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEARLINE_SECRET", "test-installation-secret-" + "s" * 16)
    properties.active[lane_queue(REQUEST_QUEUE, "high")] = 4
    assert health(catalog)["queueDepth"] == 4
