"""The live traffic split on Azure: the ``endpoint_split`` Durable Entity, the HTTP starter's
one-second reading of it, ``PUT /api/endpoints/{name}/traffic``, and the deployment carried from
the starter's draw through the orchestrator to the request message.

The entity runs through azure-functions-durable's own engine: the handle the library registers
for the Functions host (``Entity.create``), given the JSON the Durable extension sends (the
entity's key, its serialized state and a batch of operations, each input serialized twice, as
the extension does) and answering with the library's own ``EntityState`` JSON. The one double
is the durable client (the host's HTTP API cannot run here): ``FakeDurableClient`` keeps entity
states as the task hub would and applies each signal by running that same handle.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from azure.durable_functions.models.EntityStateResponse import EntityStateResponse
from durable_history import FakeDurableClient, History, registered_functions, replay, run, run_entity
from test_azure_http import body_of, request

from nearline.brokers.memory import MemoryBroker
from nearline.constants import REQUEST_QUEUE
from nearline.http.handlers import ROUTES
from nearline.messages import RequestMessage
from nearline.pipelines.spec import Catalog, load_pipelines
from nearline.pipelines.traffic import Split
from orchestrations import http_api, scoring, split_readings, split_state
from orchestrations.azure_status import ENQUEUE_ACTIVITY, SCORING_ORCHESTRATOR
from orchestrations.durable_jobs import DurableJobs
from orchestrations.scoring import score_job
from orchestrations.split_readings import SPLIT_READING_S, SplitReadings
from orchestrations.split_state import HISTORY_LIMIT, SPLIT_ENTITY

CALL_ACTIVITY = 0
PIPELINES = """
pipelines:
  ab:
    input_schema: {type: object}
    deployments:
      blue:  {steps: [{name: tag, factory: "deployment_steps:tagger", args: {tag: blue}, batch: true}]}
      green: {steps: [{name: tag, factory: "deployment_steps:tagger", args: {tag: green}, batch: true}]}
      red:   {steps: [{name: tag, factory: "deployment_steps:tagger", args: {tag: red}, batch: true}]}
    traffic: {blue: 70, green: 30}
"""
FILE_SPLIT = {"traffic": {"blue": 70, "green": 30, "red": 0}, "mirror": {}}


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Catalog:
    """The endpoint ``ab`` (blue, green, red), also the app's catalog (what the entity reads)."""
    path = tmp_path / "pipelines.yaml"
    path.write_text(PIPELINES)
    loaded = load_pipelines(path)
    monkeypatch.setattr(http_api, "_catalog", loaded)
    monkeypatch.setattr(split_readings, "_readings", SplitReadings())  # no reading from another test
    return loaded


# --- the entity, through the library's engine -----------------------------------------------


def test_the_entity_starts_from_the_pipelines_files_split(catalog: Catalog) -> None:
    answer = run_entity("ab", None, ("get", None))
    [result] = answer["results"]
    assert result["isError"] is False
    assert result["result"] == {**FILE_SPLIT, "history": []}
    assert answer["entityExists"] is True and answer["entityState"] == {**FILE_SPLIT, "history": []}


def test_set_changes_the_split_and_records_the_change(catalog: Catalog) -> None:
    before = datetime.now(UTC)
    change = {"traffic": {"blue": 90, "green": 10}, "mirror": {"red": 5}, "reason": "green: step 1"}
    answer = run_entity("ab", None, ("set", change), ("get", None))
    set_result, get_result = answer["results"]
    assert not set_result["isError"] and set_result["result"] == get_result["result"]
    state = answer["entityState"]
    assert (state["traffic"], state["mirror"]) == ({"blue": 90, "green": 10, "red": 0}, {"red": 5})
    [entry] = state["history"]
    assert entry["reason"] == "green: step 1" and entry["traffic"] == state["traffic"]
    assert before <= datetime.fromisoformat(entry["at"]) <= datetime.now(UTC)


def test_changes_are_kept_newest_first_up_to_the_limit(catalog: Catalog) -> None:
    state = None
    for n in range(HISTORY_LIMIT + 3):
        weights = {"blue": 100 - n, "green": n}
        state = run_entity("ab", state, ("set", {"traffic": weights, "reason": f"step {n}"}))["entityState"]
    assert len(state["history"]) == HISTORY_LIMIT
    assert [e["reason"] for e in state["history"][:2]] == [
        f"step {HISTORY_LIMIT + 2}",
        f"step {HISTORY_LIMIT + 1}",
    ]
    assert state["history"][-1]["reason"] == "step 3"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"traffic": {"blue": 60, "green": 30}}, "the weights sum to 90"),
        ({"traffic": {"blue": 50, "purple": 50}}, "'purple' is not a deployment"),
        ({"traffic": {"blue": 50, "green": 50}, "mirror": {"green": 10}}, "mirror only to a deployment at 0"),
        ({"traffic": {"blue": 100}, "mirror": {"green": 30, "red": 30}}, "at most 50"),
        ({"traffic": {"blue": 100}, "weights": {}}, "unknown field(s): weights"),
        ({"mirror": {}}, "'traffic' is required"),
        ({"traffic": {"blue": 100}, "reason": ["no"]}, "'reason' must be a string"),
        ("blue=100", "must be a JSON object"),
    ],
)
def test_a_split_that_breaks_a_rule_is_refused_and_the_state_is_left_as_it_was(
    catalog: Catalog, change: Any, message: str
) -> None:
    state = run_entity("ab", None, ("set", {"traffic": {"blue": 90, "green": 10}, "reason": "one"}))
    stored = state["entityState"]
    answer = run_entity("ab", stored, ("set", change))
    [result] = answer["results"]
    assert result["isError"] is True and message in result["result"]
    assert answer["entityState"] == stored


def test_reset_goes_back_to_the_files_split_and_keeps_the_history(catalog: Catalog) -> None:
    stored = run_entity("ab", None, ("set", {"traffic": {"blue": 0, "green": 100}}))["entityState"]
    answer = run_entity("ab", stored, ("reset", None))
    state = answer["entityState"]
    assert {k: state[k] for k in ("traffic", "mirror")} == FILE_SPLIT
    assert [e["reason"] for e in state["history"]] == ["reset to the pipelines file's split", ""]
    reasoned = run_entity("ab", state, ("reset", {"reason": "incident 42"}))["entityState"]
    assert reasoned["history"][0]["reason"] == "incident 42"


def test_an_unknown_operation_or_endpoint_fails_and_changes_nothing(catalog: Catalog) -> None:
    [result] = run_entity("ab", None, ("delete", None))["results"]
    assert result["isError"] and "the operations are: get, set, reset" in result["result"]
    answer = run_entity("nope", None, ("set", {"traffic": {"blue": 100}}))
    assert answer["results"][0]["isError"] and "nope" in answer["results"][0]["result"]
    assert answer["entityExists"] is False and answer["entityState"] is None


# --- the double: the host's durable client, with entities ------------------------------------


#: :class:`FakeDurableClient` keeps entities (tests/durable_history.py); the name is kept for
#: the tests that import it from here.
EntityClient = FakeDurableClient


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def jobs_over(client: EntityClient, catalog: Catalog, clock: Clock | None = None) -> DurableJobs:
    return DurableJobs(client, lambda: catalog, splits=SplitReadings(clock=clock or Clock()))


# --- the starter's reading: at most a second old --------------------------------------------


def test_without_an_entity_the_split_is_the_files(catalog: Catalog) -> None:
    client = EntityClient()
    assert run(jobs_over(client, catalog).split("ab")) == Split(FILE_SPLIT["traffic"], {})
    assert run(jobs_over(client, catalog).split_history("ab")) == []


def test_a_second_read_within_a_second_does_not_call_the_client(catalog: Catalog) -> None:
    client, clock = EntityClient(), Clock()
    client.entities["ab"] = {"traffic": {"blue": 0, "green": 100}, "mirror": {}, "history": []}
    jobs = jobs_over(client, catalog, clock)
    assert run(jobs.split("ab")).traffic == {"blue": 0, "green": 100, "red": 0}
    client.entities["ab"] = {"traffic": {"blue": 100, "green": 0}, "mirror": {}, "history": []}
    clock.now += SPLIT_READING_S - 0.001
    assert run(jobs.split("ab")).traffic["green"] == 100  # the reading, not the entity
    assert client.calls_of("read_entity_state") == ["ab"]
    clock.now += 0.001
    assert run(jobs.split("ab")).traffic["blue"] == 100  # a second old: read again
    assert client.calls_of("read_entity_state") == ["ab", "ab"]


def test_a_failing_read_keeps_the_last_split_and_is_retried_a_second_later(catalog: Catalog) -> None:
    client, clock = EntityClient(), Clock()
    client.entities["ab"] = {"traffic": {"blue": 0, "green": 100}, "mirror": {}, "history": []}
    jobs = jobs_over(client, catalog, clock)
    run(jobs.split("ab"))
    client.fail_reads, clock.now = True, clock.now + SPLIT_READING_S
    assert run(jobs.split("ab")).traffic["green"] == 100
    assert run(jobs.split("ab")).traffic["green"] == 100
    assert len(client.calls_of("read_entity_state")) == 2  # the failure counts as a reading
    fresh = jobs_over(client, catalog)  # a process that never read it: the file's split
    assert run(fresh.split("ab")) == Split(FILE_SPLIT["traffic"], {})


def test_a_state_the_pipelines_file_no_longer_fits_gives_way_to_the_files_split(
    catalog: Catalog, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(split_state, "_warned", set())
    client = EntityClient()
    client.entities["ab"] = {"traffic": {"blue": 50, "gone": 50}, "mirror": {}, "history": []}
    jobs = jobs_over(client, catalog)
    assert run(jobs.split("ab")) == run(jobs.split("ab")) == Split(FILE_SPLIT["traffic"], {})
    [logged] = [r for r in caplog.records if "does not fit the pipelines file" in r.getMessage()]
    assert "'gone' is not a deployment" in logged.getMessage()  # once, not per submit


@pytest.mark.parametrize(
    ("response", "state"),
    [
        (EntityStateResponse(False), None),
        (EntityStateResponse(True, {"traffic": {"blue": 100}}), {"traffic": {"blue": 100}}),
        (EntityStateResponse(True, '{"traffic": {"blue": 100}}'), {"traffic": {"blue": 100}}),
        (EntityStateResponse(True, "[1, 2]"), None),
        (EntityStateResponse(True, "{not json"), None),
        (EntityStateResponse(True, None), None),
    ],
)
def test_an_entity_state_is_read_as_the_extension_may_hand_it_back(response: Any, state: Any) -> None:
    assert split_readings.decode(response) == state


def test_set_split_signals_the_entity_and_this_process_sees_it_at_once(catalog: Catalog) -> None:
    client, clock = EntityClient(), Clock()
    client.hold_signals = True  # the entity has not applied it yet
    jobs = jobs_over(client, catalog, clock)
    new = Split({"blue": 20, "green": 80, "red": 0}, {"red": 10})
    assert run(jobs.set_split("ab", new, "step 2")) == new
    assert client.signals == [("ab", "set", {**new.document(), "reason": "step 2"})]
    assert run(jobs.split("ab")) == new
    [entry] = run(jobs.split_history("ab"))
    assert (entry["reason"], entry["traffic"]) == ("step 2", new.document()["traffic"])
    other = jobs_over(client, catalog)  # another process: the entity's state, once applied
    assert run(other.split("ab")) == Split(FILE_SPLIT["traffic"], {})
    client.deliver()
    assert run(jobs_over(client, catalog).split("ab")) == new


# --- PUT /api/endpoints/{name}/traffic, and the draw it changes --------------------------------


def put_traffic(client: EntityClient, catalog: Catalog, body: Any) -> Any:
    req = request("PUT", "/api/endpoints/ab/traffic", body, name="ab")
    return run(http_api.set_traffic(req, client, lambda: catalog))


def test_put_traffic_answers_with_the_endpoint_and_its_history(catalog: Catalog) -> None:
    client = EntityClient()
    resp = put_traffic(client, catalog, {"traffic": {"blue": 0, "green": 100}, "reason": "cut over"})
    assert resp.status_code == 200, resp.get_body()
    doc = body_of(resp)
    assert doc["traffic"] == {"blue": 0, "green": 100, "red": 0} and doc["history"][0]["reason"] == "cut over"
    assert client.entities["ab"]["traffic"] == doc["traffic"]  # the entity applied the same
    read = run(
        http_api.read_endpoint(request("GET", "/api/endpoints/ab", name="ab"), lambda: catalog, client)
    )
    assert body_of(read)["traffic"] == doc["traffic"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"traffic": {"blue": 60}}, "the weights sum to 60"),
        ({"traffic": {"blue": 100}, "mirror": {"red": 51}}, "at most 50"),
        (b"{not json", ""),
    ],
)
def test_put_traffic_with_a_broken_rule_is_400_and_signals_nothing(
    catalog: Catalog, body: Any, message: str
) -> None:
    client = EntityClient()
    resp = put_traffic(client, catalog, body)
    assert resp.status_code == 400 and message in body_of(resp)["error"]["message"]
    assert client.signals == []


def test_the_put_route_is_admin_and_every_admin_route_is_registered_so() -> None:
    functions = registered_functions()
    trigger = functions["put_traffic"].get_trigger().get_dict_repr()
    assert (trigger["route"], [str(m.value) for m in trigger["methods"]]) == (
        "endpoints/{name}/traffic",
        ["PUT"],
    )
    assert any(b.get_dict_repr()["type"] == "durableClient" for b in functions["put_traffic"].get_bindings())
    registered = {}
    for fn in functions.values():
        t = fn.get_trigger().get_dict_repr()
        if t["type"] == "httpTrigger":
            registered[(str(t["methods"][0].value), "/api/" + t["route"])] = str(
                getattr(t["authLevel"], "value", "function")
            )
    admin = [r for r in ROUTES if r.admin and (r.method, r.path) in registered]
    assert admin and all(registered[(r.method, r.path)] == "admin" for r in admin)
    trigger = functions[SPLIT_ENTITY].get_trigger().get_dict_repr()
    assert (trigger["type"], trigger["entityName"]) == ("entityTrigger", SPLIT_ENTITY)


def test_submits_draw_from_the_live_split_and_the_orchestrator_carries_the_draw(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = EntityClient()
    assert put_traffic(client, catalog, {"traffic": {"blue": 0, "green": 100}}).status_code == 200
    submitted = [
        run(
            http_api.submit(
                request("POST", "/api/score/ab", {"input": {"n": n}}, pipeline="ab"), client, lambda: catalog
            )
        )
        for n in range(5)
    ]
    assert {r.headers["nearline-deployment"] for r in submitted} == {"green"}
    job_id = body_of(submitted[0])["id"]
    started = client.instances[job_id]["input"]
    assert started["job"]["deployment"] == "green"
    # The split changes after the start: the orchestrator's replays still carry green.
    assert put_traffic(client, catalog, {"traffic": {"blue": 100, "green": 0}}).status_code == 200
    history = History(started, datetime.now(UTC), SCORING_ORCHESTRATOR)
    first = replay(score_job, history)
    again = replay(score_job, history.episode().task_scheduled(0, ENQUEUE_ACTIVITY).episode())
    [enqueue] = first.actions
    assert (enqueue["actionType"], enqueue["functionName"]) == (CALL_ACTIVITY, ENQUEUE_ACTIVITY)
    assert json.loads(enqueue["input"])["deployment"] == "green"
    assert again.actions == first.actions  # deterministic: no entity call, no draw
    broker = MemoryBroker()
    monkeypatch.setattr(scoring, "_broker", broker)
    assert scoring.enqueue(json.loads(enqueue["input"])) == {"queued": True}
    [delivery] = broker.receive(REQUEST_QUEUE, 10, wait_s=0)
    assert RequestMessage.from_json(delivery.body).deployment == "green"
    after = run(
        http_api.submit(
            request("POST", "/api/score/ab", {"input": {}}, pipeline="ab"), client, lambda: catalog
        )
    )
    assert after.headers["nearline-deployment"] == "blue"  # this process reads its own change at once
