"""The Azure HTTP functions, called in-process with ``func.HttpRequest`` and a durable-client double.

The Functions host (which routes requests, checks keys and serves the durable client's HTTP API)
cannot run here, so the handlers get a ``FakeDurableClient`` (tests/durable_history.py) and the
registration is checked from ``function_app.app.get_functions()``.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from durable_history import FakeDurableClient, run

from nearline.idempotency import caller_scope, keyed_id, slot
from nearline.jobs import JobRecord, status_document
from nearline.pipelines.spec import Catalog, load_pipelines
from orchestrations import http_api
from orchestrations.azure_status import SCORING_ORCHESTRATOR, OrchestrationFailure, job_document

BASE = "https://nearline-fn.azurewebsites.net"
DIGITS = {"input": {"pixels": [0.0] * 64}}
DOCUMENT_KEYS = set(status_document(JobRecord(id="x", pipeline="p", input=None)))
SECRET = "test-installation-secret-" + "s" * 16


@pytest.fixture
def client() -> FakeDurableClient:
    return FakeDurableClient()


@pytest.fixture(autouse=True)
def installation_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEARLINE_SECRET", SECRET)


def keyed(pipeline: str, key: str, api_key: str | None = None, secret: str = SECRET) -> str:
    """The instance id of a keyed submission (an HMAC under the app's secret)."""
    return keyed_id(secret, slot(caller_scope(api_key), pipeline, key))


def request(
    method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, **route: str
) -> func.HttpRequest:
    """A request as the Functions host hands it over (``path`` may carry a query)."""
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    url = BASE + path
    query = dict(p.split("=", 1) for p in url.split("?", 1)[1].split("&")) if "?" in url else {}
    return func.HttpRequest(method, url, headers=headers or {}, params=query, route_params=route, body=raw)


def submit(
    client: FakeDurableClient,
    catalog: Catalog,
    pipeline: str,
    body: Any,
    query: str = "",
    headers: dict[str, str] | None = None,
) -> func.HttpResponse:
    req = request("POST", f"/api/score/{pipeline}{query}", body, headers, pipeline=pipeline)
    return run(http_api.submit(req, client, lambda: catalog))


def body_of(resp: func.HttpResponse) -> Any:
    return json.loads(resp.get_body())


def finish_on_poll(client: FakeDurableClient, after: int, output: Any) -> None:
    """Complete the (only) instance once ``after`` status reads have happened."""

    def advance(instance_id: str) -> None:
        if len(client.calls_of("get_status")) >= after:
            client.set(instance_id, "Completed", output=output)

    client.before_status = advance


# --- submit ---------------------------------------------------------------------------------


def test_submit_starts_the_orchestrator_and_answers_202_with_our_absolute_urls(client, catalog) -> None:
    before = time.time()
    resp = submit(client, catalog, "digits", {**DIGITS, "priority": "high", "timeout_s": 10})
    assert resp.status_code == 202
    doc = body_of(resp)
    job_id = doc["id"]
    assert doc == {
        "id": job_id,
        "statusQueryGetUri": f"{BASE}/api/jobs/{job_id}",
        "terminatePostUri": f"{BASE}/api/jobs/{job_id}/terminate?reason={{text}}",
        "purgeHistoryDeleteUri": f"{BASE}/api/jobs/{job_id}",
    }
    assert resp.headers["Location"] == f"{BASE}/api/jobs/{job_id}"
    assert resp.headers["Retry-After"] == "1"
    assert client.calls_of("start_new") == [job_id]
    started = client.instances[job_id]
    assert started["name"] == SCORING_ORCHESTRATOR
    job = started["input"]["job"]
    assert (job["id"], job["pipeline"], job["input"], job["priority"]) == (
        job_id,
        "digits",
        DIGITS["input"],
        "high",
    )
    assert before + 10 <= job["deadline"] <= time.time() + 10


def test_urls_carry_the_callers_query_key_as_durables_do(client, catalog) -> None:
    doc = body_of(submit(client, catalog, "digits", DIGITS, "?code=secret"))
    assert doc["statusQueryGetUri"] == f"{BASE}/api/jobs/{doc['id']}?code=secret"
    assert doc["terminatePostUri"].endswith("/terminate?reason={text}&code=secret")


def test_submit_with_wait_returns_the_document_when_the_job_ends_in_time(client, catalog) -> None:
    finish_on_poll(client, after=3, output={"label": 4})
    resp = submit(client, catalog, "digits", DIGITS, "?wait=5")
    assert resp.status_code == 200
    doc = body_of(resp)
    assert set(doc) == DOCUMENT_KEYS
    assert (doc["name"], doc["runtimeStatus"], doc["output"]) == ("digits", "Completed", {"label": 4})
    assert doc["input"] == DIGITS["input"]
    assert len(client.calls_of("get_status")) == 3


def test_submit_with_wait_gives_up_with_202_when_the_wait_ends(client, catalog) -> None:
    start = time.monotonic()
    resp = submit(client, catalog, "digits", DIGITS, "?wait=0.3")
    assert 0.3 <= time.monotonic() - start < 1.5
    assert resp.status_code == 202
    assert resp.headers["Retry-After"] == "1"
    assert set(body_of(resp)) == {"id", "statusQueryGetUri", "terminatePostUri", "purgeHistoryDeleteUri"}


@pytest.mark.parametrize(
    ("pipeline", "body", "query", "status", "code", "says"),
    [
        ("digits", b"{not json", "", 400, "BadRequest", "not valid JSON"),
        ("digits", {"input": {"pixels": [1, 2]}}, "", 400, "InvalidInput", "input.pixels"),
        ("digits", {"input": {"pixels": [0] * 64}, "colour": "red"}, "", 400, "BadRequest", "colour"),
        ("topics", {"input": {"text": ""}}, "", 400, "InvalidInput", "input.text"),
        ("nope", DIGITS, "", 404, "UnknownPipeline", "nope"),
        ("identity", {"input": {"blob": "x" * 1_100_000}}, "", 413, "PayloadTooLarge", "limit"),
        ("digits", DIGITS, "?wait=99", 400, "BadRequest", "wait"),
    ],
)
def test_a_rejected_request_answers_the_error_and_starts_nothing(
    client, catalog, pipeline: str, body: Any, query: str, status: int, code: str, says: str
) -> None:
    resp = submit(client, catalog, pipeline, body, query)
    assert resp.status_code == status
    error = body_of(resp)["error"]
    assert error["code"] == code and says in error["message"]
    assert client.calls_of("start_new") == []


def test_the_same_idempotency_key_returns_the_same_job_and_starts_nothing_new(client, catalog) -> None:
    key = {"Idempotency-Key": "order-17"}
    first = body_of(submit(client, catalog, "digits", DIGITS, headers=key))
    second = body_of(submit(client, catalog, "digits", DIGITS, headers=key))
    assert first == second
    assert first["id"] == keyed("digits", "order-17")
    assert client.calls_of("start_new") == [first["id"]]
    other = body_of(submit(client, catalog, "identity", {"input": {}}, headers=key))
    assert other["id"] != first["id"]  # keys are per pipeline


def test_a_keyed_id_cannot_be_computed_without_the_installations_secret(
    client, catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = {"Idempotency-Key": "order-18"}
    ours = body_of(submit(client, catalog, "digits", DIGITS, headers=key))["id"]
    old_namespace = uuid.UUID("6f1b7f43-5a51-4d0e-9a43-0c7d6c1e5a10")  # ids were uuid5(this, key)
    assert ours != uuid.uuid5(old_namespace, "digits\norder-18").hex
    monkeypatch.setenv("NEARLINE_SECRET", "another-installation-" + "t" * 16)
    theirs = body_of(submit(FakeDurableClient(), catalog, "digits", DIGITS, headers=key))["id"]
    assert theirs != ours and len(theirs) == len(ours) == 32


def test_a_repeat_with_another_body_is_422_and_starts_nothing(client, catalog) -> None:
    key = {"Idempotency-Key": "order-19"}
    first = body_of(submit(client, catalog, "digits", DIGITS, headers=key))["id"]
    resp = submit(client, catalog, "digits", {**DIGITS, "priority": "low"}, headers=key)
    error = body_of(resp)["error"]
    assert (resp.status_code, error["code"]) == (422, "IdempotencyKeyReused")
    assert "order-19" in error["message"]
    assert client.calls_of("start_new") == [first]
    assert client.instances[first]["input"]["job"]["priority"] == "normal"


def test_keys_are_scoped_to_the_callers_function_key(client, catalog) -> None:
    def as_caller(api_key: str, body: Any, query: str = "") -> str:
        headers = {"Idempotency-Key": "shared"}
        if not query:
            headers["x-functions-key"] = api_key
        return str(body_of(submit(client, catalog, "digits", body, query, headers))["id"])

    one = as_caller("k1", DIGITS)
    two = as_caller("k2", {"input": {"pixels": [1.0] * 64}})
    assert one != two
    assert (one, two) == (keyed("digits", "shared", "k1"), keyed("digits", "shared", "k2"))
    assert as_caller("k1", DIGITS, "?code=k1") == one


def test_without_the_secret_a_keyed_submission_is_a_config_error(
    client, catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEARLINE_SECRET")
    resp = submit(client, catalog, "digits", DIGITS, headers={"Idempotency-Key": "k"})
    error = body_of(resp)["error"]
    assert (resp.status_code, error["code"]) == (500, "ConfigError")
    assert "NEARLINE_SECRET" in error["message"]
    assert client.calls_of("start_new") == []
    assert submit(client, catalog, "digits", DIGITS).status_code == 202  # unkeyed: unaffected
    health = run(http_api.health(request("GET", "/api/health"), lambda: catalog))
    assert (health.status_code, body_of(health)["error"]["code"]) == (500, "ConfigError")
    assert "NEARLINE_SECRET" in body_of(health)["error"]["message"]


def test_a_short_secret_is_refused(client, catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEARLINE_SECRET", "short")
    resp = submit(client, catalog, "digits", DIGITS, headers={"Idempotency-Key": "k"})
    assert resp.status_code == 500 and "NEARLINE_SECRET" in body_of(resp)["error"]["message"]


def test_an_idempotent_retry_of_a_finished_job_gets_its_result_not_a_rerun(client, catalog) -> None:
    key = {"Idempotency-Key": "k"}
    job_id = body_of(submit(client, catalog, "digits", DIGITS, headers=key))["id"]
    client.set(job_id, "Completed", output={"label": 1})
    resp = submit(client, catalog, "digits", DIGITS, "?wait=1", headers=key)
    assert (resp.status_code, body_of(resp)["output"]) == (200, {"label": 1})
    assert client.calls_of("start_new") == [job_id]  # start_new would have replaced it


def test_a_concurrent_twin_with_the_same_key_gets_the_running_instance(client, catalog) -> None:
    job_id = keyed("digits", "twin")
    real_start = client.start_new

    async def twin_wins(name: str, instance_id: str | None = None, client_input: Any = None) -> str:
        await real_start(name, instance_id, client_input)  # the twin's start lands first ...
        return await real_start(name, instance_id, client_input)  # ... so ours is refused

    client.start_new = twin_wins  # type: ignore[method-assign]
    resp = submit(client, catalog, "digits", DIGITS, headers={"Idempotency-Key": "twin"})
    assert (resp.status_code, body_of(resp)["id"]) == (202, job_id)


def test_a_hub_that_refuses_the_start_is_a_503_with_retry_after(client, catalog) -> None:
    async def refuse(*args: Any, **kwargs: Any) -> str:
        raise Exception("The task hub is not available")

    client.start_new = refuse  # type: ignore[method-assign]
    resp = submit(client, catalog, "digits", DIGITS)
    assert (resp.status_code, resp.headers["Retry-After"]) == (503, "1")
    assert body_of(resp)["error"]["code"] == "BrokerError"


# --- status, terminate, purge ---------------------------------------------------------------


def get_job(client: FakeDurableClient, job_id: str, query: str = "") -> func.HttpResponse:
    return run(http_api.get_job(request("GET", f"/api/jobs/{job_id}{query}", id=job_id), client))


def started_job(client: FakeDurableClient, catalog: Catalog) -> str:
    return str(body_of(submit(client, catalog, "digits", DIGITS))["id"])


@pytest.mark.parametrize("runtime_status", ["Pending", "Running"])
def test_status_of_a_running_job_is_202_with_location_and_retry_after(
    client, catalog, runtime_status
) -> None:
    job_id = started_job(client, catalog)
    client.set(job_id, runtime_status, custom_status="Queued")
    resp = get_job(client, job_id)
    assert resp.status_code == 202
    assert resp.headers["Location"] == f"{BASE}/api/jobs/{job_id}"
    assert resp.headers["Retry-After"] == "1"
    doc = body_of(resp)
    assert (doc["runtimeStatus"], doc["customStatus"], doc["output"]) == (runtime_status, "Queued", None)


def test_status_document_has_the_shape_and_types_of_the_core_renderer(client, catalog) -> None:
    job_id = started_job(client, catalog)
    client.set(job_id, "Completed", output={"label": 2, "probabilities": [0.1] * 10})
    resp = get_job(client, job_id)
    assert resp.status_code == 200
    doc = body_of(resp)
    assert set(doc) == DOCUMENT_KEYS
    assert doc["instanceId"] == job_id and doc["name"] == "digits" and doc["input"] == DIGITS["input"]
    for key in ("createdTime", "lastUpdatedTime"):
        assert isinstance(doc[key], str) and doc[key].endswith("Z")
    assert doc["createdTime"] <= doc["lastUpdatedTime"]


def test_a_failed_job_shows_the_error_code_and_message(client, catalog) -> None:
    job_id = started_job(client, catalog)
    durable_output = (
        f"Orchestrator function 'score_job' failed: {OrchestrationFailure('ModelError', 'bad rows')}"
    )
    client.set(job_id, "Failed", output=durable_output)
    doc = body_of(get_job(client, job_id))
    assert doc["runtimeStatus"] == "Failed"
    assert doc["output"] == {"error": {"code": "ModelError", "message": "bad rows"}}


@pytest.mark.parametrize(("durable", "ours"), [("Terminated", "Terminated"), ("Canceled", "Terminated")])
def test_terminated_jobs_are_terminal(client, catalog, durable: str, ours: str) -> None:
    job_id = started_job(client, catalog)
    client.set(job_id, durable, output="no longer needed")
    resp = get_job(client, job_id)
    assert (resp.status_code, body_of(resp)["runtimeStatus"]) == (200, ours)


def test_status_of_an_unknown_job_is_404(client) -> None:
    resp = get_job(client, "f" * 32)
    assert (resp.status_code, body_of(resp)["error"]["code"]) == (404, "NotFound")


def test_status_with_wait_long_polls(client, catalog) -> None:
    job_id = started_job(client, catalog)
    finish_on_poll(client, after=2, output={"label": 5})
    resp = get_job(client, job_id, "?wait=5")
    assert (resp.status_code, body_of(resp)["output"]) == (200, {"label": 5})


def terminate(client: FakeDurableClient, job_id: str, reason: str = "") -> func.HttpResponse:
    req = request("POST", f"/api/jobs/{job_id}/terminate?reason={reason}", id=job_id)
    return run(http_api.terminate(req, client))


def test_terminate_a_running_job_is_202(client, catalog) -> None:
    job_id = started_job(client, catalog)
    resp = terminate(client, job_id, "cancelled")
    assert resp.status_code == 202
    assert resp.headers["Location"] == f"{BASE}/api/jobs/{job_id}"
    assert client.instances[job_id]["output"] == "cancelled"
    assert body_of(get_job(client, job_id))["runtimeStatus"] == "Terminated"


def test_terminate_a_finished_job_is_410_and_leaves_it_as_it_is(client, catalog) -> None:
    job_id = started_job(client, catalog)
    client.set(job_id, "Completed", output={"label": 0})
    resp = terminate(client, job_id)
    assert (resp.status_code, body_of(resp)["error"]["code"]) == (410, "Gone")
    assert client.calls_of("terminate") == []
    assert client.instances[job_id]["runtimeStatus"] == "Completed"


def test_terminate_an_unknown_job_is_404(client) -> None:
    assert terminate(client, "0" * 32).status_code == 404
    assert client.calls_of("terminate") == []


def test_purge_deletes_once_then_404(client, catalog) -> None:
    job_id = started_job(client, catalog)
    client.set(job_id, "Completed", output={"label": 3})
    req = request("DELETE", f"/api/jobs/{job_id}", id=job_id)
    first = run(http_api.purge(req, client))
    assert (first.status_code, body_of(first)) == (200, {"instancesDeleted": 1})
    assert run(http_api.purge(req, client)).status_code == 404
    assert get_job(client, job_id).status_code == 404


@pytest.mark.parametrize("runtime_status", ["Pending", "Running", "Suspended"])
def test_purge_of_a_job_that_has_not_ended_is_409(client, catalog, runtime_status: str) -> None:
    job_id = started_job(client, catalog)
    client.set(job_id, runtime_status)
    resp = run(http_api.purge(request("DELETE", f"/api/jobs/{job_id}", id=job_id), client))
    error = body_of(resp)["error"]
    assert (resp.status_code, error["code"]) == (409, "Conflict")
    assert job_id in error["message"] and "terminate" in error["message"]
    assert client.calls_of("purge_instance_history") == []
    assert get_job(client, job_id).status_code == 202


def test_after_a_purge_the_key_names_the_same_instance_again(client, catalog) -> None:
    """What holds on Azure (docs/azure.md, Idempotency): no store keeps a map, so the key's
    next request starts an instance with the same id, carrying its own input."""
    key = {"Idempotency-Key": "again"}
    job_id = body_of(submit(client, catalog, "digits", DIGITS, headers=key))["id"]
    client.set(job_id, "Terminated", output="")
    assert run(http_api.purge(request("DELETE", f"/api/jobs/{job_id}", id=job_id), client)).status_code == 200
    other = {"input": {"pixels": [2.0] * 64}}
    assert body_of(submit(client, catalog, "digits", other, headers=key))["id"] == job_id
    assert client.instances[job_id]["input"]["job"]["input"] == other["input"]


def test_an_unexpected_error_is_a_500_in_the_error_shape(client) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("socket closed")

    client.get_status = broken  # type: ignore[method-assign]
    resp = get_job(client, "a" * 32)
    assert resp.status_code == 500
    assert body_of(resp)["error"]["code"] == "InternalError"


# --- pipelines, health, OpenAPI -------------------------------------------------------------


def test_pipelines_lists_names_and_input_schemas(catalog) -> None:
    resp = run(http_api.list_pipelines(request("GET", "/api/pipelines"), lambda: catalog))
    listed = {p["name"]: p for p in body_of(resp)["pipelines"]}
    assert {"digits", "topics", "identity"} <= set(listed)
    assert listed["digits"]["inputSchema"]["properties"]["pixels"]["minItems"] == 64


def test_health_is_ok_and_reports_a_broken_configuration(tmp_path: Path, catalog) -> None:
    assert run(http_api.health(request("GET", "/api/health"), lambda: catalog)).status_code == 200

    def broken() -> Catalog:
        return load_pipelines(tmp_path / "missing.yaml")

    resp = run(http_api.health(request("GET", "/api/health"), broken))
    assert (resp.status_code, body_of(resp)["error"]["code"]) == (500, "ConfigError")


def test_openapi_document_uses_the_request_origin(catalog) -> None:
    doc = body_of(run(http_api.openapi(request("GET", "/api/openapi.json"), lambda: catalog)))
    assert "/api/score/digits" in doc["paths"]
    assert BASE in json.dumps(doc.get("servers", []))


def test_the_catalog_is_loaded_lazily_from_the_setting(
    monkeypatch: pytest.MonkeyPatch, pipelines_file
) -> None:
    monkeypatch.setattr(http_api, "_catalog", None)
    monkeypatch.setenv("NEARLINE_PIPELINES", str(pipelines_file))
    assert http_api.catalog() is http_api.catalog()
    assert "digits" in http_api.catalog()


def test_job_document_reads_a_json_encoded_input() -> None:
    from azure.durable_functions.models.DurableOrchestrationStatus import DurableOrchestrationStatus

    status = DurableOrchestrationStatus.from_json(
        {
            "instanceId": "j",
            "runtimeStatus": "ContinuedAsNew",
            "createdTime": "2026-11-21T12:00:00Z",
            "lastUpdatedTime": "2026-11-21T12:00:01.5Z",
            "customStatus": None,
            "output": None,
            "input": json.dumps({"job": {"pipeline": "topics", "input": {"text": "hi"}}}),
        }
    )
    doc = job_document(status)
    assert (doc["name"], doc["input"], doc["runtimeStatus"]) == ("topics", {"text": "hi"}, "Running")
    assert (doc["createdTime"], doc["lastUpdatedTime"]) == (
        "2026-11-21T12:00:00.000000Z",
        "2026-11-21T12:00:01.500000Z",
    )
