"""Cancellation on Azure: a job terminated while queued is never computed (docs/azure.md, Cancellation).

The jobs go the way they go on Azure, with the one double of the Azure tests for the Functions
host (tests/durable_history.py): submitted through the HTTP function, their orchestrators
replayed through azure-functions-durable's engine up to the ``enqueue`` activity, which the test
then runs as the host would, onto a ``memory://`` request queue; terminated through the HTTP
function, whose tombstone goes to a real Azurite; and received by a worker whose hooks are the
ones ``python -m workers`` builds for Service Bus.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func
import pipeline_steps
import pytest
from azurite import Azurite, azurite_fixture  # noqa: F401 - registers the fixture
from durable_history import FakeDurableClient, History, replay, run
from test_azure_blobs import Unreachable
from test_servicebus import CONNECTION

from nearline.azure_blobs import AzureBlobs
from nearline.brokers.memory import MemoryBroker
from nearline.constants import REQUEST_QUEUE, RESPONSE_QUEUE, TOMBSTONES_CONTAINER
from nearline.messages import RequestMessage, ResultMessage
from nearline.models.repository import ModelRepository
from nearline.pipelines.runner import PipelineRunner
from nearline.pipelines.spec import Catalog, load_pipelines
from nearline.settings import WorkerSettings
from nearline.tombstones import Tombstones, tombstone_name
from nearline.worker import Worker
from nearline.worker.cli import job_state
from nearline.worker.hooks import Tombstoned, default_hooks
from orchestrations import http_api, queue_depth, scoring, storage
from orchestrations.azure_status import SCORING_ORCHESTRATOR
from orchestrations.scoring import score_job

BASE = "https://nearline-fn.azurewebsites.net"
WORKER_PIPELINES = Path(__file__).parent / "data" / "worker_pipelines.yaml"
SECRET = "test-installation-secret-" + "s" * 16


@pytest.fixture
def catalog() -> Catalog:
    return load_pipelines(WORKER_PIPELINES)


@pytest.fixture
def tombstones(azurite: Azurite) -> Iterator[AzureBlobs]:
    store = azurite.container(TOMBSTONES_CONTAINER)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def app(azurite: Azurite, tombstones: AzureBlobs, monkeypatch: pytest.MonkeyPatch) -> MemoryBroker:
    """The Function app's process state: its settings, request queue and storage, fresh."""
    monkeypatch.setenv("NEARLINE_SECRET", SECRET)
    monkeypatch.setenv("NEARLINE_BLOB_STORE", azurite.connection_string)
    broker = MemoryBroker()
    monkeypatch.setattr(scoring, "_broker", broker)
    monkeypatch.setattr(storage, "_tombstones", None)
    monkeypatch.setattr(storage, "_opened", False)
    monkeypatch.setattr(queue_depth, "_gate", None)
    monkeypatch.setattr(queue_depth, "_no_gate", True)  # shedding: tests/test_azure_shedding.py
    return broker


def call(route: Any, client: FakeDurableClient, method: str, path: str, body: Any = None, **kw: Any) -> Any:
    """An HTTP function called in-process as the Functions host calls it."""
    query = dict(p.split("=", 1) for p in path.split("?", 1)[1].split("&")) if "?" in path else {}
    headers = kw.pop("headers", {})
    req = func.HttpRequest(
        method,
        BASE + path,
        headers=headers,
        params=query,
        route_params=kw,
        body=json.dumps(body).encode() if body is not None else b"",
    )
    return run(route(req, client))


def submit(client: FakeDurableClient, catalog: Catalog, body: dict[str, Any], key: str | None = None) -> str:
    headers = {"Idempotency-Key": key} if key else {}
    resp = call(
        lambda req, c: http_api.submit(req, c, lambda: catalog),
        client,
        "POST",
        "/api/score/record",
        body,
        headers=headers,
        pipeline="record",
    )
    assert resp.status_code == 202, resp.get_body()
    return str(json.loads(resp.get_body())["id"])


def run_orchestrator_to_enqueue(client: FakeDurableClient, job_id: str) -> None:
    """Replay the job's orchestrator (first episode) and run the activity it schedules."""
    history = History(client.instances[job_id]["input"], datetime.now(UTC), SCORING_ORCHESTRATOR)
    [action] = replay(score_job, history).actions
    assert action["functionName"] == "enqueue"
    job = json.loads(action["input"]) if isinstance(action["input"], str) else action["input"]
    assert scoring.enqueue(job) == {"queued": True}


def terminate(client: FakeDurableClient, job_id: str) -> Any:
    return call(http_api.terminate, client, "POST", f"/api/jobs/{job_id}/terminate?reason=stop", id=job_id)


def azure_worker(broker: MemoryBroker, azurite: Azurite, tmp_path: Path) -> Worker:
    """A worker as ``python -m workers`` builds it for Service Bus with NEARLINE_BLOB_STORE set."""
    settings = WorkerSettings(broker=CONNECTION, blob_store=azurite.connection_string)
    store, found = job_state(settings)
    assert store is None and found is not None
    runner = PipelineRunner(load_pipelines(WORKER_PIPELINES), ModelRepository(tmp_path))
    return Worker(broker, runner, hooks=default_hooks(5, store, found))


def results(broker: MemoryBroker) -> list[ResultMessage]:
    return [ResultMessage.from_json(d.body) for d in broker.receive(RESPONSE_QUEUE, 100, 0.0)]


def test_a_job_terminated_while_queued_is_dropped_by_the_worker(
    app: MemoryBroker, azurite: Azurite, catalog: Catalog, tmp_path: Path
) -> None:
    client = FakeDurableClient()
    stopped, kept = submit(client, catalog, {"input": {"n": 1}}), submit(client, catalog, {"input": {"n": 2}})
    for job_id in (stopped, kept):
        run_orchestrator_to_enqueue(client, job_id)
    assert terminate(client, stopped).status_code == 202
    deadline = client.instances[stopped]["input"]["job"]["deadline"]
    assert azurite.names(TOMBSTONES_CONTAINER) == [tombstone_name(stopped, deadline)]
    assert client.instances[stopped]["runtimeStatus"] == "Terminated"

    pipeline_steps.COMPUTED.clear()
    worker = azure_worker(app, azurite, tmp_path)
    worker.process(app.receive(REQUEST_QUEUE, 10, 0.0))
    assert pipeline_steps.COMPUTED == [{"n": 2}]  # the terminated job was never computed
    assert [r.id for r in results(app)] == [kept]  # and got no result
    assert app.depth(REQUEST_QUEUE) == 0  # its message was completed, not left to come back


def test_a_later_job_under_the_same_key_is_not_fenced_off_by_the_old_tombstone(
    app: MemoryBroker, azurite: Azurite, catalog: Catalog, tmp_path: Path
) -> None:
    client = FakeDurableClient()
    first = submit(client, catalog, {"input": {"n": 1}, "timeout_s": 60}, key="k-1")
    run_orchestrator_to_enqueue(client, first)
    terminate(client, first)
    worker = azure_worker(app, azurite, tmp_path)
    pipeline_steps.COMPUTED.clear()
    worker.process(app.receive(REQUEST_QUEUE, 10, 0.0))  # the terminated job's request: dropped
    assert call(http_api.purge, client, "DELETE", f"/api/jobs/{first}", id=first).status_code == 200

    again = submit(client, catalog, {"input": {"n": 2}, "timeout_s": 30}, key="k-1")
    assert again == first  # Azure: the key names the same instance again
    run_orchestrator_to_enqueue(client, again)
    worker.process(app.receive(REQUEST_QUEUE, 10, 0.0))
    assert pipeline_steps.COMPUTED == [{"n": 2}]  # its own deadline: not the tombstone's job
    assert [r.output for r in results(app)] == [{"echo": {"n": 2}}]


def test_when_the_tombstone_cannot_be_written_terminate_is_503_and_the_job_runs_on(
    app: MemoryBroker, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "_tombstones", Tombstones(Unreachable()))
    monkeypatch.setattr(storage, "_opened", True)
    client = FakeDurableClient()
    job_id = submit(client, catalog, {"input": {"n": 1}})
    resp = terminate(client, job_id)
    assert (resp.status_code, resp.headers["Retry-After"]) == (503, "1")
    assert client.calls_of("terminate") == []  # not reported ended while its request would still run
    assert client.instances[job_id]["runtimeStatus"] == "Pending"


def test_a_worker_on_service_bus_without_a_blob_store_says_what_it_cannot_do(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="nearline.worker"):
        assert job_state(WorkerSettings(broker=CONNECTION)) == (None, None)
    assert "NEARLINE_BLOB_STORE is not set" in caplog.text


@pytest.mark.parametrize(
    ("terminated", "deadline", "dropped"),
    [
        (100.5, 100.5, True),  # the job it was written for
        (100.5, 130.0, False),  # a later job with the same id (after a purge): another deadline
        (100.5, 7300.5, False),  # another hour: another listing
        (None, 100.5, False),  # no tombstone
    ],
)
def test_a_tombstone_names_its_own_job(
    tombstones: AzureBlobs, terminated: float | None, deadline: float, dropped: bool
) -> None:
    if terminated is not None:
        Tombstones(tombstones).record("j1", terminated)
    message = RequestMessage("j1", "record", {}, enqueued_at=90.0, deadline=deadline)
    assert Tombstones(tombstones).terminated([message]) == ({"j1"} if dropped else set())


def test_a_batch_is_one_listing_per_deadline_hour(tombstones: AzureBlobs) -> None:
    listed: list[str] = []
    names = tombstones.names
    tombstones.names = lambda prefix: listed.append(prefix) or names(prefix)  # type: ignore[method-assign]
    batch = [RequestMessage(f"j{i}", "record", {}, 0.0, deadline=3600.0 * (i % 2) + i) for i in range(32)]
    assert Tombstones(tombstones).terminated(batch) == set()
    assert listed == ["1970010100/", "1970010101/"]


def test_the_hook_leaves_settled_and_live_work_alone(tombstones: AzureBlobs) -> None:
    from nearline.brokers.base import Delivery
    from nearline.worker.hooks import Work

    Tombstones(tombstones).record("dead", 100.0)
    batch = [
        Work(
            Delivery("q", i, b"", "normal", 1, i, 0.0), RequestMessage(i, "record", {}, 90.0, deadline=100.0)
        )
        for i in ("dead", "live")
    ]
    Tombstoned(Tombstones(tombstones)).before(batch, "w")
    assert [w.skip for w in batch] == [True, False]
