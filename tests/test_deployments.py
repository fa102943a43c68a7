"""Endpoints with several deployments (docs/deployments.md): the file format and its checks, the
split drawn at submit, targeted calls, and workers that run each deployment on its own batches."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import azure.functions as func
import deployment_steps
import httpx
import pytest
from durable_history import FakeDurableClient, run
from serving import Server, running_server

from nearline.brokers.memory import MemoryBroker
from nearline.check import check
from nearline.client import Client
from nearline.client.errors import ApiBadRequest
from nearline.constants import REQUEST_QUEUE, RESPONSE_QUEUE
from nearline.errors import ConfigError, UnknownDeployment
from nearline.jobs import JobRecord, callback_status, status_document
from nearline.messages import RequestMessage, ResultMessage
from nearline.models.repository import ModelRepository
from nearline.pipelines.runner import PipelineRunner
from nearline.pipelines.spec import Catalog, load_pipelines
from nearline.settings import WorkerSettings
from nearline.store.memory import MemoryStore
from nearline.store_jobs import StoreJobs
from nearline.worker import Worker, WorkerConfig
from orchestrations import http_api, scoring
from orchestrations.azure_status import job_record

STEPS = Path(deployment_steps.__file__)


def endpoint(traffic: str = "{blue: 70, green: 30}", extra: str = "") -> str:
    """A pipelines file with one endpoint ``ab`` of two deployments that tag their outputs."""
    return f"""
pipelines:
  ab:
    input_schema: {{type: object}}
    deployments:
      blue:
        steps: [{{name: tag, factory: "deployment_steps:tagger", args: {{tag: blue}}, batch: true}}]
      green:
        steps: [{{name: tag, factory: "deployment_steps:tagger", args: {{tag: green}}, batch: true}}]
    traffic: {traffic}
{extra}"""


def catalog(tmp_path: Path, text: str) -> Catalog:
    path = tmp_path / "pipelines.yaml"
    path.write_text(text)
    return load_pipelines(path)


# --- pipelines.yaml -------------------------------------------------------------------------


def test_several_deployments_load_with_their_traffic(tmp_path: Path) -> None:
    ab = catalog(tmp_path, endpoint()).get("ab")
    assert [d.name for d in ab.deployments] == ["blue", "green"]
    assert dict(ab.traffic) == {"blue": 70, "green": 30}
    assert ab.deployment.name == "blue"  # the default: most traffic
    with pytest.raises(UnknownDeployment, match="the deployments are: blue, green"):
        ab.deployment_named("red")


def test_a_single_deployment_takes_all_traffic() -> None:
    digits = load_pipelines().get("digits")
    assert [d.name for d in digits.deployments] == ["v1"]
    assert dict(digits.traffic) == {"v1": 100}


@pytest.mark.parametrize(
    ("traffic", "extra", "needle"),
    [
        ("{blue: 70, green: 20}", "", "pipeline 'ab': traffic: the weights sum to 90"),
        ("{blue: 70, red: 30}", "", "pipeline 'ab': traffic: 'red' is not a deployment; the deployments are"),
        ("{blue: 70.5, green: 29.5}", "", "pipeline 'ab': traffic: blue: the weight must be an integer"),
        ("{blue: 130, green: -30}", "", "pipeline 'ab': traffic: blue: the weight must be an integer"),
        ("[blue]", "", "pipeline 'ab': 'traffic' must map deployment names to weights"),
        (
            "{blue: 100}",
            "    deployment: {name: v1, steps: [{name: x, function: 'a.b:c'}]}",
            "pipeline 'ab': give 'deployment' (one) or 'deployments' (several by name), not both",
        ),
    ],
)
def test_a_bad_split_names_file_endpoint_and_field(
    tmp_path: Path, traffic: str, extra: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        catalog(tmp_path, endpoint(traffic, extra))
    assert str(tmp_path / "pipelines.yaml") in caught.value.message
    assert needle in caught.value.message


def test_several_deployments_need_a_split_and_name_a_bad_step(tmp_path: Path) -> None:
    text = endpoint().replace("    traffic: {blue: 70, green: 30}\n", "")
    with pytest.raises(ConfigError, match="'traffic' is required with several deployments"):
        catalog(tmp_path, text)
    text = endpoint().replace('factory: "deployment_steps:tagger", args: {tag: green}, ', "")
    with pytest.raises(ConfigError, match=r"pipeline 'ab': deployments: green: step 1 \(tag\): one of"):
        catalog(tmp_path, text)


# --- submit ---------------------------------------------------------------------------------


def jobs(cat: Catalog) -> tuple[StoreJobs, MemoryBroker]:
    broker = MemoryBroker()
    return StoreJobs(cat, broker, MemoryStore(), max_queue_depth=10_000), broker


def submit(service: StoreJobs, deployment: str | None = None, key: str | None = None) -> JobRecord:
    body = json.dumps({"input": {"id": 1}}).encode()
    job, _ = asyncio.run(service.submit("ab", body, key, deployment=deployment))
    return job


def test_a_split_over_400_submissions_is_within_a_few_points_of_its_weights(tmp_path: Path) -> None:
    service, broker = jobs(catalog(tmp_path, endpoint()))
    chosen = Counter(submit(service).deployment for _ in range(400))
    assert set(chosen) == {"blue", "green"}
    assert abs(chosen["green"] / 400 - 0.30) < 0.08  # 3.5 standard deviations of a 400-draw share
    sent = [RequestMessage.from_json(d.body) for d in broker.receive(REQUEST_QUEUE, 1000, 0.1)]
    assert Counter(m.deployment for m in sent) == chosen  # the message carries the choice


def test_a_targeted_submit_bypasses_the_weights_zero_included(tmp_path: Path) -> None:
    service, _ = jobs(catalog(tmp_path, endpoint("{blue: 100, green: 0}")))
    assert {submit(service, "green").deployment for _ in range(20)} == {"green"}
    with pytest.raises(UnknownDeployment, match="no deployment 'red'; the deployments are: blue, green"):
        submit(service, "red")


def test_an_endpoint_with_no_live_traffic_takes_targeted_submits_only(tmp_path: Path) -> None:
    service, _ = jobs(catalog(tmp_path, endpoint("{blue: 0, green: 0}")))
    with pytest.raises(UnknownDeployment, match="no live traffic") as caught:
        submit(service)
    assert caught.value.status == 400
    assert submit(service, "blue").deployment == "blue"


def test_a_repeated_idempotent_submit_keeps_the_first_deployment(tmp_path: Path) -> None:
    service, _ = jobs(catalog(tmp_path, endpoint("{blue: 50, green: 50}")))
    firsts = [submit(service, key=f"key-{i}") for i in range(30)]
    assert {j.deployment for j in firsts} == {"blue", "green"}
    for i, first in enumerate(firsts):
        again = submit(service, key=f"key-{i}")
        assert (again.id, again.deployment) == (first.id, first.deployment)


def test_the_status_document_names_the_deployment_beside_the_callback() -> None:
    job = JobRecord("j", "ab", {}, deployment="green", custom_status={"callback": callback_status("Pending")})
    doc = status_document(job)
    assert doc["customStatus"]["deployment"] == "green"
    assert doc["customStatus"]["callback"]["state"] == "Pending"
    assert status_document(JobRecord("j", "ab", {}))["customStatus"] is None  # a record from before


def test_a_request_message_carries_its_deployment() -> None:
    msg = RequestMessage("j", "ab", {}, 1.0, deployment="green")
    assert RequestMessage.from_json(msg.to_json()).deployment == "green"
    assert RequestMessage.from_json(RequestMessage("j", "ab", {}, 1.0).to_json()).deployment is None


# --- workers --------------------------------------------------------------------------------


def test_a_worker_never_mixes_deployments_in_one_batch(tmp_path: Path) -> None:
    cat = catalog(tmp_path, endpoint())
    broker = MemoryBroker()
    worker = Worker(broker, PipelineRunner(cat, ModelRepository(tmp_path)), config=WorkerConfig(max_batch=16))
    plan = {f"j{i}": ["blue", "green", None][i % 3] for i in range(12)}  # None: a message from before
    for job_id, deployment in plan.items():
        msg = RequestMessage(job_id, "ab", {"id": job_id}, time.time(), deployment=deployment)
        broker.send(REQUEST_QUEUE, msg.to_json(), message_id=job_id)
    deployment_steps.BATCHES.clear()
    worker.process(broker.receive(REQUEST_QUEUE, 16, 1.0))
    got = {
        r.id: r for r in (ResultMessage.from_json(d.body) for d in broker.receive(RESPONSE_QUEUE, 16, 0.5))
    }
    assert {i: r.output["deployment"] for i, r in got.items()} == {i: d or "blue" for i, d in plan.items()}
    for tag, ids in deployment_steps.BATCHES:
        assert {plan[i] or "blue" for i in ids} == {tag}  # one deployment per batch
    assert sorted(tag for tag, _ in deployment_steps.BATCHES) == ["blue", "blue", "green"]
    sample = worker.metrics.registry.get_sample_value
    labels = {"pipeline": "ab", "deployment": "green"}
    assert sample("nearline_worker_results_total", {**labels, "lane": "normal", "status": "Completed"}) == 4
    assert sample("nearline_worker_compute_seconds_count", labels) == 1  # per deployment


# --- over HTTP ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    project = tmp_path_factory.mktemp("deployments")
    (project / "pipelines.yaml").write_text(endpoint("{blue: 100, green: 0}"))
    shutil.copy(STEPS, project / STEPS.name)
    with running_server(project / "data", "--pipelines", str(project / "pipelines.yaml")) as s:
        yield s


def score(server: Server, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/score/ab?wait=10", json={"input": {"id": "x"}}, headers=headers, timeout=15
    )


@pytest.mark.parametrize("header", ["nearline-deployment", "azureml-model-deployment"])
def test_a_header_targets_a_deployment_at_zero_traffic(server: Server, header: str) -> None:
    r = score(server, {header: "green"})
    assert r.status_code == 200, r.text
    assert r.json()["output"]["deployment"] == "green"
    assert r.headers["nearline-deployment"] == "green"
    assert r.json()["customStatus"]["deployment"] == "green"
    status = httpx.get(f"{server.url}/api/jobs/{r.json()['instanceId']}", timeout=5)
    assert status.headers["nearline-deployment"] == "green"


def test_untargeted_calls_follow_the_split_and_say_where_they_went(server: Server) -> None:
    r = httpx.post(f"{server.url}/api/score/ab", json={"input": {"id": "y"}}, timeout=5)
    assert r.status_code == 202
    assert r.headers["nearline-deployment"] == "blue"
    done = httpx.get(r.json()["statusQueryGetUri"] + "?wait=10", timeout=15)
    assert done.json()["output"]["deployment"] == "blue"
    assert done.json()["customStatus"] == {"deployment": "blue"}


def test_an_unknown_deployment_is_400_listing_the_deployments(server: Server) -> None:
    r = score(server, {"nearline-deployment": "red"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "UnknownDeployment"
    assert "the deployments are: blue, green" in r.json()["error"]["message"]


def test_the_client_targets_a_deployment(server: Server) -> None:
    with Client(server.url) as client:
        job = client.submit("ab", {"id": "c"}, deployment="green", wait=10)
        assert job.result()["deployment"] == "green"
        with pytest.raises(ApiBadRequest, match="the deployments are: blue, green"):
            client.submit("ab", {"id": "c"}, deployment="red")


def test_the_cli_targets_a_deployment(server: Server) -> None:
    cmd = [sys.executable, "-m", "nearline", "submit", "ab", "-", "--wait", "--url", server.url]
    env = {k: v for k, v in os.environ.items() if k not in ("NEARLINE_URL", "NEARLINE_KEY")}
    done = subprocess.run(
        [*cmd, "--deployment", "green"],
        input='{"id": "cli"}',
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["deployment"] == "green"


def test_the_endpoints_show_their_deployments_models_and_traffic(server: Server) -> None:
    listed = httpx.get(f"{server.url}/api/endpoints", timeout=5).json()["endpoints"]
    (ab,) = [e for e in listed if e["name"] == "ab"]
    assert ab == httpx.get(f"{server.url}/api/endpoints/ab", timeout=5).json()
    assert ab["traffic"] == {"blue": 100, "green": 0}
    assert ab["mirror"] == {}
    assert [(d["name"], d["traffic"], d["models"]) for d in ab["deployments"]] == [
        ("blue", 100, []),
        ("green", 0, []),
    ]
    missing = httpx.get(f"{server.url}/api/endpoints/nope", timeout=5)
    assert missing.status_code == 404 and "the pipelines are: ab" in missing.json()["error"]["message"]


def test_an_endpoint_document_lists_each_deployments_models() -> None:
    (doc,) = [e for e in (p.endpoint_document() for p in load_pipelines()) if e["name"] == "topics"]
    assert doc["deployments"] == [
        {
            "name": "v1",
            "traffic": 100,
            "mirror": 0,
            "models": [{"model": "minilm", "version": 1}, {"model": "topics", "version": 1}],
        },
        {
            "name": "v2",
            "traffic": 0,
            "mirror": 0,
            "models": [{"model": "minilm_onnx", "version": 1}, {"model": "topics", "version": 2}],
        },
    ]


# --- on Azure -------------------------------------------------------------------------------
# The Functions host cannot run here: the HTTP function gets the FakeDurableClient of
# tests/durable_history.py, and the enqueue activity is called as the orchestrator calls it.


def test_on_azure_the_choice_rides_the_orchestration_into_the_request_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat, client = catalog(tmp_path, endpoint("{blue: 100, green: 0}")), FakeDurableClient()
    req = func.HttpRequest(
        "POST",
        "http://127.0.0.1:7071/api/score/ab",
        headers={"azureml-model-deployment": "green"},
        route_params={"pipeline": "ab"},
        body=json.dumps({"input": {"id": "z"}}).encode(),
    )
    resp = run(http_api.submit(req, client, lambda: cat))
    assert resp.status_code == 202 and resp.headers["nearline-deployment"] == "green"
    (instance,) = client.instances.values()
    assert job_record(run(client.get_status(instance["instanceId"], show_input=True))).deployment == "green"
    broker = MemoryBroker()
    monkeypatch.setattr(scoring, "_broker", broker)
    assert scoring.enqueue(instance["input"]["job"]) == {"queued": True}
    (sent,) = broker.receive(REQUEST_QUEUE, 10, 0.1)
    assert RequestMessage.from_json(sent.body).deployment == "green"


def test_a_job_for_a_deployment_the_worker_does_not_know_fails_naming_it(tmp_path: Path) -> None:
    broker = MemoryBroker()
    worker = Worker(broker, PipelineRunner(catalog(tmp_path, endpoint()), ModelRepository(tmp_path)))
    msg = RequestMessage("gone", "ab", {"id": "gone"}, time.time(), deployment="red")
    broker.send(REQUEST_QUEUE, msg.to_json(), message_id="gone")
    worker.process(broker.receive(REQUEST_QUEUE, 16, 1.0))
    (result,) = [ResultMessage.from_json(d.body) for d in broker.receive(RESPONSE_QUEUE, 16, 0.5)]
    assert result.error is not None and result.error["code"] == "UnknownDeployment"
    assert "no deployment 'red'" in result.error["message"]


def test_on_azure_the_endpoints_are_listed_by_the_same_handler(tmp_path: Path) -> None:
    cat = catalog(tmp_path, endpoint())
    req = func.HttpRequest(
        "GET", "http://127.0.0.1:7071/api/endpoints/ab", route_params={"name": "ab"}, body=b""
    )
    resp = run(http_api.read_endpoint(req, lambda: cat))
    assert resp.status_code == 200
    assert json.loads(resp.get_body()) == {**cat.get("ab").endpoint_document(), "history": []}
    req = func.HttpRequest("GET", "http://127.0.0.1:7071/api/endpoints", body=b"")
    assert (
        json.loads(run(http_api.list_endpoints(req, lambda: cat)).get_body())["endpoints"][0]["name"] == "ab"
    )


def test_nearline_check_runs_the_examples_through_every_deployment(tmp_path: Path) -> None:
    """The blue deployment passes; the green one, at 0% traffic, refuses the example."""
    refusing = endpoint("{blue: 100, green: 0}", "    examples: [{id: 1}]").replace(
        'factory: "deployment_steps:tagger", args: {tag: green}, batch: true',
        'function: "pipeline_steps:picky"',
    )
    (tmp_path / "pipelines.yaml").write_text(refusing.replace("{id: 1}", "{id: 1, bad: true}"))
    (result,) = check(WorkerSettings(pipelines=(tmp_path / "pipelines.yaml",), models=tmp_path))
    assert result.problem == "deployment green: example 1 failed: InvalidInput: this item is bad"
