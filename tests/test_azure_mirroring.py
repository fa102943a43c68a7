"""Mirroring on Azure (docs/deployments.md, Mirroring): a shadow job is an orchestration of the
mirror deployment on the low lane that carries ``shadow_of`` and never a callback.

Submits go through the HTTP starter (``orchestrations.http_api.submit``) over the durable client
double; the shadow's orchestration is replayed through azure-functions-durable's own engine and
its request sent by the real ``enqueue`` activity to an in-memory broker.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from durable_history import FakeDurableClient, History, replay, run
from test_azure_http import request

from nearline.brokers.memory import MemoryBroker
from nearline.constants import REQUEST_QUEUE
from nearline.jobs import JobRecord
from nearline.messages import RequestMessage, ResultMessage
from nearline.pipelines.spec import Catalog, load_pipelines
from orchestrations import http_api, scoring, split_readings
from orchestrations.azure_status import (
    ENQUEUE_ACTIVITY,
    RESULT_EVENT,
    SCORING_ORCHESTRATOR,
    job_record,
    orchestrator_input,
)
from orchestrations.durable_jobs import DurableJobs
from orchestrations.scoring import score_job
from orchestrations.split_readings import SplitReadings

CALL_ACTIVITY, CONTINUE_AS_NEW = 0, 4
HOOK = "http://127.0.0.1:9/hook"
SUBMITS = 20  # each mirrored with probability 1/2: none mirrored happens once in a million runs
PIPELINES = """
pipelines:
  ab:
    input_schema: {type: object}
    deployments:
      blue:  {steps: [{name: tag, factory: "deployment_steps:tagger", args: {tag: blue}, batch: true}]}
      green: {steps: [{name: tag, factory: "deployment_steps:tagger", args: {tag: green}, batch: true}]}
    traffic: {blue: 100, green: 0}
    mirror: {green: 50}
"""


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Catalog:
    path = tmp_path / "pipelines.yaml"
    path.write_text(PIPELINES)
    loaded = load_pipelines(path)
    monkeypatch.setattr(http_api, "_catalog", loaded)
    monkeypatch.setattr(split_readings, "_readings", SplitReadings())
    monkeypatch.setenv("NEARLINE_CALLBACK_ALLOW", "127.0.0.1/32")
    return loaded


def submit_all(client: FakeDurableClient, catalog: Catalog) -> list[str]:
    """``SUBMITS`` untargeted calls with a callback; the raw bodies of the answers."""
    body = {"input": {"n": 1}, "priority": "high", "callback_url": HOOK}
    return [
        run(http_api.submit(request("POST", "/api/score/ab", body, pipeline="ab"), client, lambda: catalog))
        .get_body()
        .decode()
        for _ in range(SUBMITS)
    ]


def started_jobs(client: FakeDurableClient) -> tuple[dict[str, Any], dict[str, Any]]:
    """The orchestrations started: (live jobs by id, shadow jobs by id), as their input holds them."""
    jobs = {i: s["input"]["job"] for i, s in client.instances.items() if s["name"] == SCORING_ORCHESTRATOR}
    live = {i: j for i, j in jobs.items() if "shadow_of" not in j}
    return live, {i: j for i, j in jobs.items() if "shadow_of" in j}


def test_a_mirrored_call_starts_a_low_lane_shadow_with_shadow_of_and_no_callback(catalog: Catalog) -> None:
    client = FakeDurableClient()
    answers = submit_all(client, catalog)
    live, shadows = started_jobs(client)
    assert len(live) == SUBMITS and 1 <= len(shadows) <= SUBMITS
    assert {json.loads(a)["id"] for a in answers} == set(live)
    for job in live.values():
        assert (job["deployment"], job["priority"], job["callback_url"]) == ("blue", "high", HOOK)
    for shadow_id, shadow in shadows.items():
        assert shadow["shadow_of"] in live and shadow_id not in live
        assert (shadow["deployment"], shadow["priority"]) == ("green", "low")
        assert "callback_url" not in shadow and "status_url" not in shadow
        assert shadow["input"] == live[shadow["shadow_of"]]["input"]
        assert not any(shadow_id in answer for answer in answers)  # its id is never handed out
        record = job_record(run(client.get_status(shadow_id, show_input=True)))
        assert (record.shadow_of, record.deployment, record.priority) == (shadow["shadow_of"], "green", "low")
        assert record.callback_url is None
    live_record = job_record(run(client.get_status(next(iter(live)), show_input=True)))
    assert (live_record.shadow_of, live_record.priority, live_record.callback_url) == (None, "high", HOOK)


def test_a_shadows_orchestration_queues_on_the_low_lane_and_ends_without_a_delivery(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = FakeDurableClient()
    submit_all(client, catalog)
    _, shadows = started_jobs(client)
    shadow_id, shadow = next(iter(shadows.items()))
    deadline = datetime.fromtimestamp(shadow["deadline"], UTC)
    history = History(client.instances[shadow_id]["input"], datetime.now(UTC), SCORING_ORCHESTRATOR)
    [enqueue] = replay(score_job, history).actions
    assert (enqueue["actionType"], enqueue["functionName"]) == (CALL_ACTIVITY, ENQUEUE_ACTIVITY)
    broker = MemoryBroker()
    monkeypatch.setattr(scoring, "_broker", broker)
    assert scoring.enqueue(json.loads(enqueue["input"])) == {"queued": True}
    [delivery] = broker.receive(REQUEST_QUEUE, 10, wait_s=0)
    message = RequestMessage.from_json(delivery.body)
    assert (delivery.lane, message.id, message.deployment) == ("low", shadow_id, "green")
    history.episode().task_scheduled(0, ENQUEUE_ACTIVITY).episode().task_completed(0, {"queued": True})
    history.episode().timer_created(1, deadline).episode()
    result = ResultMessage.completed(shadow_id, {"tag": "green"}, worker="w-1").to_dict()
    ended = replay(score_job, history.event_raised(RESULT_EVENT, result))
    assert ended.done and ended.error is None and ended.state["output"] == {"tag": "green"}
    assert all(a["actionType"] != CONTINUE_AS_NEW for a in ended.actions)  # no callback to deliver
    # The live job, with its callback, continues as new to deliver it: the contrast that matters.
    live_id = shadow["shadow_of"]
    live_history = History(client.instances[live_id]["input"], datetime.now(UTC), SCORING_ORCHESTRATOR)
    live_history.episode().task_scheduled(0, ENQUEUE_ACTIVITY).episode().task_completed(0, {"queued": True})
    live_history.episode().timer_created(1, deadline).episode()
    live_result = ResultMessage.completed(live_id, {"tag": "blue"}, worker="w-1").to_dict()
    live_ended = replay(score_job, live_history.event_raised(RESULT_EVENT, live_result))
    assert [a["actionType"] for a in live_ended.actions][-1] == CONTINUE_AS_NEW


def test_terminating_a_shadow_starts_no_callback_delivery(catalog: Catalog) -> None:
    client = FakeDurableClient()
    submit_all(client, catalog)
    _, shadows = started_jobs(client)
    shadow_id, shadow = next(iter(shadows.items()))
    jobs = DurableJobs(client, lambda: catalog)
    run(jobs.terminate(shadow_id, "not needed"))
    run(jobs.terminate(shadow["shadow_of"], "not needed"))
    assert client.instances[shadow_id]["runtimeStatus"] == "Terminated"
    assert f"{shadow_id}-callback" not in client.instances
    assert f"{shadow['shadow_of']}-callback" in client.instances  # the live job's is delivered


def test_a_shadow_never_carries_a_callback_into_its_orchestration() -> None:
    shadow = JobRecord(
        id="s", pipeline="ab", input={}, deadline=1.0, priority="low", callback_url=HOOK, shadow_of="live"
    )
    job = orchestrator_input(shadow)["job"]
    assert job["shadow_of"] == "live" and "callback_url" not in job and "status_url" not in job
