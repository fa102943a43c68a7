"""Callbacks on Azure (orchestrations/delivery.py): the scoring orchestration, replayed through
azure-functions-durable's own engine, delivers a job's event with Durable's retry policy; the
activity sends it to a real receiver on loopback, verified by the Standard Webhooks reference
library.

Not run here (no Functions host): the extension's timers between retries. The retry options the
orchestrator hands it are checked as JSON, and a retried delivery as the history the extension
writes (TaskFailed, a timer, TaskScheduled again).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from durable_history import FakeDurableClient, History, registered_functions, replay, run
from standardwebhooks.webhooks import Webhook
from test_azure_orchestrator import DEADLINE, RESULT_EVENT, T0, failure_of, job, result

from nearline.pipelines.spec import Catalog
from orchestrations import delivery
from orchestrations.azure_status import ENQUEUE_ACTIVITY, SCORING_ORCHESTRATOR, is_terminal, job_record
from orchestrations.delivery import DELIVERY_ACTIVITY, DELIVERY_ORCHESTRATOR, AttemptFailed, deliver_callback
from orchestrations.durable_jobs import DurableJobs
from orchestrations.scoring import score_job

CALL_ACTIVITY_WITH_RETRY, CONTINUE_AS_NEW = 1, 4
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HOOK = "https://hooks.example.com/cb"
OUTCOME = {
    "runtimeStatus": "Completed",
    "output": {"label": 7},
    "created": T0.timestamp(),
    "ended": T0.timestamp() + 4,
    "customStatus": {"worker": "w-1", "timings": {}},
}


@pytest.fixture(autouse=True)
def settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEARLINE_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("NEARLINE_WEBHOOK_RETRY_S", "2")
    monkeypatch.setenv("NEARLINE_WEBHOOK_MAX_ATTEMPTS", "3")
    monkeypatch.setattr(delivery, "_sender", None)  # the next one reads this test's allow-list


def scored(**outcome: Any) -> History:
    """The second execution: the job's outcome is known, its callback not yet delivered."""
    return History({"job": job(callback_url=HOOK), "outcome": OUTCOME | outcome}, T0, SCORING_ORCHESTRATOR)


def callback_of(state: dict[str, Any]) -> dict[str, Any]:
    status: dict[str, Any] = state["customStatus"]["callback"]
    return status


# --- the scoring orchestration --------------------------------------------------------------


def test_once_the_result_is_in_a_job_with_a_callback_continues_with_its_outcome() -> None:
    h = History({"job": job(callback_url=HOOK)}, T0, SCORING_ORCHESTRATOR)
    h.episode().task_scheduled(0, ENQUEUE_ACTIVITY).episode().task_completed(0, {"queued": True})
    h.episode().timer_created(1, DEADLINE).episode().event_raised(RESULT_EVENT, result(output={"label": 7}))
    r = replay(score_job, h)
    assert r.error is None
    again = r.actions[-1]
    assert again["actionType"] == CONTINUE_AS_NEW
    carried = json.loads(again["input"])
    assert carried["job"]["callback_url"] == HOOK
    outcome = carried["outcome"]
    assert (outcome["runtimeStatus"], outcome["output"]) == ("Completed", {"label": 7})
    assert outcome["customStatus"]["worker"] == "w-1" and outcome["created"] == T0.timestamp()


def test_a_deadline_is_an_outcome_to_call_back_too() -> None:
    h = History({"job": job(callback_url=HOOK)}, T0, SCORING_ORCHESTRATOR)
    h.episode().task_scheduled(0, ENQUEUE_ACTIVITY).episode().task_completed(0, {"queued": True})
    h.episode().timer_created(1, DEADLINE).episode(DEADLINE).timer_fired(1, DEADLINE)
    r = replay(score_job, h)
    assert r.error is None  # not failed yet: it continues to deliver the callback first
    outcome = json.loads(r.actions[-1]["input"])["outcome"]
    assert outcome["runtimeStatus"] == "Failed" and outcome["error"]["code"] == "DeadlineExceeded"
    assert outcome["ended"] == DEADLINE.timestamp()


def test_the_delivery_is_scheduled_with_durables_retry_policy_and_no_secret() -> None:
    r = replay(score_job, scored())
    assert not r.done and r.error is None
    [call] = r.actions
    assert (call["actionType"], call["functionName"]) == (CALL_ACTIVITY_WITH_RETRY, DELIVERY_ACTIVITY)
    assert call["retryOptions"] == {
        "firstRetryIntervalInMilliseconds": 2000,
        "maxNumberOfAttempts": 3,
        "backoffCoefficient": 2.0,
        "maxRetryIntervalInMilliseconds": 3_600_000,
        "retryTimeoutInMilliseconds": 86_400_000,
    }
    assert SECRET not in json.dumps(r.state)  # the history never holds the secret
    assert callback_of(r.state)["state"] == "Pending"
    assert r.state["customStatus"]["worker"] == "w-1"


def test_delivered_at_the_first_attempt_the_job_ends_with_its_output() -> None:
    h = scored().episode().task_scheduled(0, DELIVERY_ACTIVITY)
    h.episode().task_completed(0, {"state": "Delivered", "lastStatus": 204, "lastError": None})
    r = replay(score_job, h)
    assert r.done and r.error is None and r.state["output"] == {"label": 7}
    assert callback_of(r.state) | {"nextAttemptTime": None} == {
        "state": "Delivered",
        "attempts": 1,
        "lastStatus": 204,
        "lastError": None,
        "nextAttemptTime": None,
    }


def test_a_retried_delivery_counts_its_attempts() -> None:
    h = scored().episode().task_scheduled(0, DELIVERY_ACTIVITY)
    h.episode().task_failed(0, "503: busy").timer_created(1, T0 + timedelta(seconds=2))
    h.episode().timer_fired(1, T0 + timedelta(seconds=2)).task_scheduled(2, DELIVERY_ACTIVITY)
    h.episode().task_completed(2, {"state": "Delivered", "lastStatus": 200, "lastError": None})
    r = replay(score_job, h)
    assert r.done and r.error is None
    assert (callback_of(r.state)["state"], callback_of(r.state)["attempts"]) == ("Delivered", 2)


def test_a_delivery_failing_every_attempt_is_given_up_and_the_job_still_ends_as_it_did() -> None:
    h = scored(runtimeStatus="Failed", error={"code": "ModelError", "message": "3 rows for 4"})
    h.episode().task_scheduled(0, DELIVERY_ACTIVITY)
    event = 0
    for attempt in range(3):  # the extension's history: fail, timer, (re)schedule ...
        fire = T0 + timedelta(seconds=2 ** (attempt + 1))
        h.episode().task_failed(event, f"503: down ({attempt + 1})").timer_created(event + 1, fire)
        h.episode().timer_fired(event + 1, fire)
        if attempt < 2:
            h.task_scheduled(event + 2, DELIVERY_ACTIVITY)
        event += 2
    r = replay(score_job, h)
    assert failure_of(r) == ("ModelError", "3 rows for 4")
    state = callback_of(r.state)
    assert (state["state"], state["attempts"]) == ("GivenUp", 3)
    assert "503: down (3)" in state["lastError"]


def test_a_refused_delivery_ends_at_once_given_up() -> None:
    h = scored().episode().task_scheduled(0, DELIVERY_ACTIVITY)
    h.episode().task_completed(0, {"state": "GivenUp", "lastStatus": 410, "lastError": "410: gone"})
    r = replay(score_job, h)
    assert r.done and r.state["output"] == {"label": 7}
    assert (callback_of(r.state)["state"], callback_of(r.state)["lastStatus"]) == ("GivenUp", 410)


def test_a_terminated_jobs_delivery_is_an_orchestration_of_its_own() -> None:
    record = job_record_of({"job": job(callback_url=HOOK)}, "Running")
    payload = delivery.terminated_input(record, "enough", T0.timestamp() + 9)
    h = History(payload, T0, DELIVERY_ORCHESTRATOR).episode().task_scheduled(0, DELIVERY_ACTIVITY)
    h.episode().task_completed(0, {"state": "Delivered", "lastStatus": 200, "lastError": None})
    r = replay(delivery.deliver_job_callback, h)
    assert r.done and callback_of(r.state)["state"] == "Delivered"
    assert payload["outcome"] | {"created": 0} == {
        "runtimeStatus": "Terminated",
        "output": "enough",
        "created": 0,
        "ended": T0.timestamp() + 9,
    }


def test_the_function_app_registers_the_delivery_functions() -> None:
    functions = registered_functions()
    assert {DELIVERY_ACTIVITY, DELIVERY_ORCHESTRATOR} <= set(functions)
    assert functions[SCORING_ORCHESTRATOR].get_user_function().orchestrator_function is score_job


# --- the job while its callback is delivered --------------------------------------------------


def job_record_of(raw: dict[str, Any], runtime_status: str, custom: Any = None) -> Any:
    client = FakeDurableClient()
    run(client.start_new(SCORING_ORCHESTRATOR, job()["id"], raw))
    client.set(job()["id"], runtime_status, custom_status=custom)
    return job_record(run(client.get_status(job()["id"], show_input=True)))


def test_while_delivering_the_job_reads_as_ended_with_its_callback_pending() -> None:
    custom = {"worker": "w-1", "timings": {}, "callback": {"state": "Pending", "attempts": 0}}
    record = job_record_of({"job": job(callback_url=HOOK), "outcome": OUTCOME}, "Running", custom)
    assert (record.status.value, record.output) == ("Completed", {"label": 7})
    assert record.custom_status["callback"]["state"] == "Pending"
    assert (record.created, record.updated) == (OUTCOME["created"], OUTCOME["ended"])
    failed = job_record_of(
        {
            "job": job(),
            "outcome": {"runtimeStatus": "Failed", "error": {"code": "DeadlineExceeded", "message": "m"}},
        },
        "Running",
    )
    assert failed.output == {"error": {"code": "DeadlineExceeded", "message": "m"}}


def test_a_delivering_job_cannot_be_terminated_and_is_purged_after(catalog: Catalog) -> None:
    client = FakeDurableClient()
    run(
        client.start_new(
            SCORING_ORCHESTRATOR, job()["id"], {"job": job(callback_url=HOOK), "outcome": OUTCOME}
        )
    )
    client.set(job()["id"], "Running")
    jobs = DurableJobs(client, lambda: catalog)
    assert is_terminal(run(client.get_status(job()["id"], show_input=True)))
    with pytest.raises(Exception, match="already ended \\(Completed\\)"):
        run(jobs.terminate(job()["id"]))
    with pytest.raises(Exception, match="callback is being delivered"):
        run(jobs.purge(job()["id"]))
    client.set(job()["id"], "Completed", output={"label": 7})
    assert run(jobs.purge(job()["id"])) == 1


def test_terminating_a_job_with_a_callback_starts_its_delivery(catalog: Catalog) -> None:
    client = FakeDurableClient()
    run(client.start_new(SCORING_ORCHESTRATOR, job()["id"], {"job": job(callback_url=HOOK)}))
    client.set(job()["id"], "Running")
    run(DurableJobs(client, lambda: catalog).terminate(job()["id"], "enough"))
    started = client.instances[f"{job()['id']}-callback"]
    assert started["name"] == DELIVERY_ORCHESTRATOR
    assert started["input"]["outcome"]["output"] == "enough"
    assert started["input"]["job"]["callback_url"] == HOOK


# --- the activity, against a real receiver on loopback -----------------------------------------


@contextmanager
def receiver(status: int) -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    got: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def activity_input(url: str, **outcome: Any) -> dict[str, Any]:
    now = time.time()
    return {"job": job(callback_url=url), "outcome": OUTCOME | {"created": now - 1, "ended": now} | outcome}


def test_the_activity_sends_the_signed_event_every_profile_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEARLINE_CALLBACK_ALLOW", "127.0.0.1/32")
    with receiver(204) as (url, got):
        assert deliver_callback(activity_input(url)) == {
            "state": "Delivered",
            "lastStatus": 204,
            "lastError": None,
        }
    ((headers, body),) = got
    event = Webhook(SECRET).verify(body, headers)
    assert event["type"] == "job.completed" and headers["webhook-id"] == f"msg_{job()['id']}"
    assert event["data"]["output"] == {"label": 7} and event["data"]["customStatus"]["worker"] == "w-1"
    assert event["data"]["runtimeStatus"] == "Completed"


def test_the_activity_raises_for_an_attempt_worth_retrying(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEARLINE_CALLBACK_ALLOW", "127.0.0.1/32")
    with receiver(503) as (url, got), pytest.raises(AttemptFailed, match="503"):
        deliver_callback(activity_input(url))
    assert len(got) == 1


def test_the_activity_gives_up_on_a_refusal_the_guard_or_old_age(monkeypatch: pytest.MonkeyPatch) -> None:
    with receiver(204) as (url, got):
        refused = deliver_callback(activity_input(url))  # loopback is not allowed here
        assert refused["state"] == "GivenUp" and "loopback" in refused["lastError"]
        monkeypatch.setenv("NEARLINE_CALLBACK_ALLOW", "127.0.0.1/32")
        monkeypatch.setattr(delivery, "_sender", None)
        old = deliver_callback(activity_input(url, ended=time.time() - 90_000))
        assert old["state"] == "GivenUp" and "older than" in old["lastError"]
    assert got == []
    with receiver(404) as (url, got):
        assert deliver_callback(activity_input(url))["lastStatus"] == 404
