"""The scoring orchestrator, replayed through azure-functions-durable's own engine.

Each test builds the history the Durable extension would send after some number of episodes
(tests/durable_history.py) and checks what the orchestrator asks for next: its actions, its
custom status, its output or its failure. No Functions host runs here; the replay engine is
the library's, the same code the host calls.
"""

from __future__ import annotations

import inspect
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.durable_functions import DurableOrchestrationClient
from durable_history import FakeDurableClient, History, Replay, registered_functions, replay, run, stamp

from nearline.brokers.memory import MemoryBroker
from nearline.constants import REQUEST_QUEUE, RESPONSE_QUEUE
from nearline.errors import ConfigError
from nearline.messages import RequestMessage, ResultMessage
from orchestrations import scoring
from orchestrations.azure_status import (
    ENQUEUE_ACTIVITY,
    RESULT_EVENT,
    SCORING_ORCHESTRATOR,
    parse_failure,
)
from orchestrations.responses import deliver
from orchestrations.scoring import score_job

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
DEADLINE = T0 + timedelta(seconds=60)
CALL_ACTIVITY, CREATE_TIMER, WAIT_FOR_EVENT, WHEN_ANY = 0, 5, 6, 11


def job(**overrides: Any) -> dict[str, Any]:
    fields = {
        "id": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "pipeline": "digits",
        "input": {"pixels": [0] * 64},
        "deadline": DEADLINE.timestamp(),
        "priority": "normal",
    }
    return fields | overrides


def started(schema: int = 1, **overrides: Any) -> History:
    return History({"job": job(**overrides)}, T0, SCORING_ORCHESTRATOR, schema=schema)


def queued(schema: int = 1) -> History:
    """Episodes 1-2: the activity was scheduled and has completed."""
    h = started(schema)
    return h.episode().task_scheduled(0, ENQUEUE_ACTIVITY).episode().task_completed(0, {"queued": True})


def waiting(schema: int = 1) -> History:
    """Episodes 1-3: the timer (event id 1, after the activity's 0) is created; now waiting."""
    return queued(schema).episode().timer_created(1, DEADLINE).episode()


def result(status: str = "Completed", **fields: Any) -> dict[str, Any]:
    if status == "Completed":
        return ResultMessage.completed(
            job()["id"], fields.pop("output", {"label": 3}), worker="w-1", **fields
        ).to_dict()
    return ResultMessage.failed(
        job()["id"], fields.pop("code"), fields.pop("message"), worker="w-1"
    ).to_dict()


def failure_of(r: Replay) -> tuple[str, str]:
    """The (code, message) the status route will show, from what Durable stores as the output."""
    assert r.error is not None, f"expected a failure, got {r.state}"
    return parse_failure(f"Orchestrator function '{SCORING_ORCHESTRATOR}' failed: {r.error}")


def test_first_episode_schedules_the_enqueue_activity_with_the_job() -> None:
    r = replay(score_job, started())
    assert not r.done and r.error is None
    [action] = r.actions
    assert (action["actionType"], action["functionName"]) == (CALL_ACTIVITY, ENQUEUE_ACTIVITY)
    assert json.loads(action["input"]) == job()
    assert "customStatus" not in r.state


@pytest.mark.parametrize("schema", [1, 2])
def test_after_enqueue_it_waits_for_the_event_or_the_deadline_in_one_when_any(schema: int) -> None:
    r = replay(score_job, queued(schema))
    assert not r.done and r.error is None
    [[call, when_any]] = r.state["actions"]  # upperSchemaVersion >= 1: one list, task_any is one action
    assert call["functionName"] == ENQUEUE_ACTIVITY
    assert when_any["actionType"] == WHEN_ANY
    event, timer = when_any["compoundActions"]
    assert (event["actionType"], event["externalEventName"]) == (WAIT_FOR_EVENT, RESULT_EVENT)
    assert (timer["actionType"], timer["fireAt"], timer["isCanceled"]) == (
        CREATE_TIMER,
        stamp(DEADLINE),
        False,
    )
    assert r.state["customStatus"] == "Queued"


def test_schema_v1_reports_one_action_list_per_yield() -> None:
    r = replay(score_job, queued(schema=0))
    groups = [[a["actionType"] for a in group] for group in r.state["actions"]]
    assert groups == [[CALL_ACTIVITY], [WAIT_FOR_EVENT, CREATE_TIMER]]


def test_the_result_event_completes_the_job_and_cancels_the_timer() -> None:
    r = replay(score_job, waiting().event_raised(RESULT_EVENT, result(output={"label": 7})))
    assert r.done and r.error is None
    assert r.state["output"] == {"label": 7}
    timer = next(a for a in r.actions if a["actionType"] == CREATE_TIMER)
    assert timer["isCanceled"] is True
    assert r.state["customStatus"]["worker"] == "w-1"


def test_the_timer_firing_first_fails_the_job_with_deadline_exceeded() -> None:
    r = replay(score_job, waiting().timer_fired(1, DEADLINE))
    assert not r.done
    code, message = failure_of(r)
    assert code == "DeadlineExceeded"
    assert "deadline" in message


def test_a_worker_reported_failure_fails_the_job_with_the_workers_code() -> None:
    payload = result("Failed", code="ModelError", message="digits returned 3 rows for 4 inputs")
    r = replay(score_job, waiting().event_raised(RESULT_EVENT, payload))
    assert failure_of(r) == ("ModelError", "digits returned 3 rows for 4 inputs")


def test_a_duplicate_result_event_is_harmless() -> None:
    h = waiting().event_raised(RESULT_EVENT, result(output={"label": 1}))
    h.event_raised(RESULT_EVENT, result(output={"label": 2}))  # a redelivered request scored twice
    r = replay(score_job, h)
    assert r.done and r.error is None
    assert r.state["output"] == {"label": 1}


def test_a_result_raised_before_the_activity_completed_is_kept_for_the_wait() -> None:
    # A fast worker can answer before the activity's completion reaches the orchestrator; the
    # engine parks the early event (with a warning) and hands it to the wait when it appears.
    h = started().episode().task_scheduled(0, ENQUEUE_ACTIVITY).episode()
    h.event_raised(RESULT_EVENT, result(output={"label": 9})).task_completed(0, {"queued": True})
    with pytest.warns(UserWarning, match="Potential duplicate Task completion"):
        r = replay(score_job, h)
    assert r.done and r.state["output"] == {"label": 9}


def test_replay_is_deterministic() -> None:
    for h in (started(), queued(), waiting().event_raised(RESULT_EVENT, result())):
        first, second = replay(score_job, h), replay(score_job, h)
        assert json.dumps(first.state, sort_keys=True) == json.dumps(second.state, sort_keys=True)


def test_an_enqueue_failure_fails_the_job_with_broker_error() -> None:
    h = started().episode().task_scheduled(0, ENQUEUE_ACTIVITY).episode()
    r = replay(score_job, h.task_failed(0, "BrokerError", "Service Bus: could not send"))
    code, message = failure_of(r)
    assert code == "BrokerError" and "could not send" in message


def test_a_job_started_after_its_deadline_is_never_queued() -> None:
    r = replay(score_job, started(deadline=(T0 - timedelta(seconds=1)).timestamp()))
    assert r.actions == []
    assert failure_of(r)[0] == "DeadlineExceeded"


def test_an_activity_that_was_too_late_to_send_fails_with_deadline_exceeded() -> None:
    h = started().episode().task_scheduled(0, ENQUEUE_ACTIVITY).episode().task_completed(0, {"queued": False})
    assert failure_of(replay(score_job, h))[0] == "DeadlineExceeded"


def test_a_malformed_result_event_fails_the_job_as_a_poison_message() -> None:
    r = replay(score_job, waiting().event_raised(RESULT_EVENT, {"id": "x", "status": "Maybe"}))
    assert failure_of(r)[0] == "PoisonMessage"


def test_the_registered_orchestrator_is_this_generator() -> None:
    handle = registered_functions()[SCORING_ORCHESTRATOR].get_user_function()
    assert handle.orchestrator_function is score_job
    # The host's entry point: the context JSON in, the state JSON out.
    state = json.loads(handle(queued().context()))
    assert state["customStatus"] == "Queued"


# --- the enqueue activity ---------------------------------------------------------------------


@pytest.fixture
def memory_broker(monkeypatch: pytest.MonkeyPatch) -> MemoryBroker:
    broker = MemoryBroker()
    monkeypatch.setattr(scoring, "_broker", broker)
    return broker


def test_enqueue_sends_the_request_message_to_the_jobs_lane(memory_broker: MemoryBroker) -> None:
    deadline = datetime.now(UTC).timestamp() + 30
    assert scoring.enqueue(job(deadline=deadline, priority="high")) == {"queued": True}
    [d] = memory_broker.receive(REQUEST_QUEUE, 10, wait_s=0)
    assert (d.message_id, d.lane) == (job()["id"], "high")
    msg = RequestMessage.from_json(d.body)
    assert (msg.id, msg.pipeline, msg.input, msg.deadline) == (
        job()["id"],
        "digits",
        job()["input"],
        deadline,
    )
    assert memory_broker.depth(RESPONSE_QUEUE) == 0


def test_enqueue_past_the_deadline_sends_nothing(memory_broker: MemoryBroker) -> None:
    assert scoring.enqueue(job(deadline=datetime.now(UTC).timestamp() - 1)) == {"queued": False}
    assert memory_broker.depth(REQUEST_QUEUE) == 0


def test_the_activity_finds_its_broker_in_the_trigger_settings() -> None:
    ns = {"ServiceBusConnection__fullyQualifiedNamespace": "ns.servicebus.windows.net"}
    assert scoring.broker_url(ns) == "servicebus://ns.servicebus.windows.net"
    conn = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=s"
    assert scoring.broker_url({"ServiceBusConnection": conn, **ns}) == conn
    assert scoring.broker_url({"NEARLINE_BROKER": "memory://x", "ServiceBusConnection": conn}) == "memory://x"
    with pytest.raises(ConfigError, match="ServiceBusConnection__fullyQualifiedNamespace"):
        scoring.broker_url({})


# --- the response-queue function --------------------------------------------------------------


@pytest.fixture
def client() -> FakeDurableClient:
    fake = FakeDurableClient()
    run(fake.start_new(SCORING_ORCHESTRATOR, job()["id"], {"job": job()}))
    fake.set(job()["id"], "Running", custom_status="Queued")
    return fake


def test_a_result_is_raised_as_the_event_on_its_jobs_instance(client: FakeDurableClient) -> None:
    body = ResultMessage.completed(job()["id"], {"label": 3}, worker="w-1").to_json()
    assert run(deliver(body, client)) == "delivered"
    [(instance, name, payload)] = client.events
    assert (instance, name) == (job()["id"], RESULT_EVENT)
    assert ResultMessage.from_json(json.dumps(payload)).output == {"label": 3}


def test_a_result_for_a_finished_job_is_dropped(client: FakeDurableClient) -> None:
    client.set(job()["id"], "Completed", output={"label": 3})
    body = ResultMessage.completed(job()["id"], {"label": 4}).to_json()
    assert run(deliver(body, client)) == "finished"
    assert client.calls_of("raise_event") == []


def test_a_result_for_an_unknown_job_is_dropped(client: FakeDurableClient) -> None:
    assert run(deliver(ResultMessage.completed("f" * 32, {}).to_json(), client)) == "unknown"
    assert client.calls_of("raise_event") == []


@pytest.mark.parametrize("body", [b"\x00not json", b"[1, 2]", b'{"id": "x", "status": "Failed"}'])
def test_a_malformed_result_is_dropped_without_a_status_read(client: FakeDurableClient, body: bytes) -> None:
    assert run(deliver(body, client)) == "malformed"
    assert client.calls == [("start_new", job()["id"])]


def test_a_hub_error_propagates_so_the_message_is_redelivered(client: FakeDurableClient) -> None:
    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("host unavailable")

    client.get_status = unreachable  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        run(deliver(ResultMessage.completed(job()["id"], {}).to_json(), client))


def test_the_service_bus_trigger_hands_the_body_to_deliver(client: FakeDurableClient) -> None:
    from azure.functions.servicebus import ServiceBusMessage  # what the worker builds from the binding

    fn = registered_functions()["receive_result"]
    msg = ServiceBusMessage(
        body=ResultMessage.completed(job()["id"], {"ok": True}).to_json(),
        message_id="r1",
        application_properties={},
        user_properties={},
    )
    run(fn.get_user_function().client_function(msg=msg, client=client))
    assert [e[1] for e in client.events] == [RESULT_EVENT]


def test_durable_and_service_bus_functions_are_registered() -> None:
    def trigger(name: str) -> dict[str, Any]:
        return dict(registered_functions()[name].get_trigger().get_dict_repr())

    assert trigger(SCORING_ORCHESTRATOR)["type"] == "orchestrationTrigger"
    assert trigger(ENQUEUE_ACTIVITY)["type"] == "activityTrigger"
    sb = trigger("receive_result")
    assert (sb["type"], sb["queueName"], sb["connection"]) == (
        "serviceBusTrigger",
        RESPONSE_QUEUE,
        "ServiceBusConnection",
    )


def test_the_double_has_the_real_clients_signatures() -> None:
    for name in ("start_new", "get_status", "terminate", "purge_instance_history", "raise_event"):
        real = inspect.signature(getattr(DurableOrchestrationClient, name))
        fake = inspect.signature(getattr(FakeDurableClient, name))
        assert list(fake.parameters)[: len(real.parameters)] == list(real.parameters)[: len(fake.parameters)]
        assert set(fake.parameters) <= set(real.parameters), name
