"""The scoring orchestration: one Durable instance per job, instance id = job id.

``score_job`` (the orchestrator) calls the ``enqueue`` activity, which sends the request message
to the Service Bus request queue of the job's lane, then waits for whichever comes first: the
``ScoreCompleted`` event (raised by ``orchestrations/responses.py`` with the worker's result
message) or a durable timer at the job's deadline. It ends with the worker's output, or fails
(see :mod:`orchestrations.azure_status` for the failure encoding) with the worker's error code,
``DeadlineExceeded``, or ``BrokerError`` when the request could not be sent.

The orchestrator is replayed from its history on every step, so it is deterministic: its only
clock is ``context.current_utc_datetime`` and it does no I/O; the activity does the sending.
A second ``ScoreCompleted`` for the same job (a redelivered request scored twice) finds the
instance completed: Durable drops it, and the response function drops it before that.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Generator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import azure.durable_functions as df

from nearline.brokers import Broker, open_broker
from nearline.constants import LANES, REQUEST_QUEUE
from nearline.errors import BrokerError, ConfigError, DeadlineExceeded, NearlineError, PoisonMessage
from nearline.jobs import JobRecord
from nearline.messages import MessageError, ResultMessage
from nearline.settings import BROKER, FunctionsSettings
from nearline.submissions import request_message
from orchestrations.azure_status import (
    ENQUEUE_ACTIVITY,
    RESULT_EVENT,
    SERVICE_BUS_CONNECTION,
    OrchestrationFailure,
)
from orchestrations.delivery import with_callback

bp = df.Blueprint()


@with_callback  # then deliver its callback, if it has one (orchestrations/delivery.py)
def score_job(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    """Enqueue the job's request, then end with its result or fail at its deadline."""
    job = job_from_input(context.get_input(expected_type=dict))
    deadline = datetime.fromtimestamp(job["deadline"], UTC)
    if context.current_utc_datetime.tzinfo is None:  # compare (and hand timers) like with like
        deadline = deadline.replace(tzinfo=None)
    if context.current_utc_datetime >= deadline:
        # Started after its deadline (e.g. the hub was backed up): never worth a GPU's time.
        raise OrchestrationFailure(DeadlineExceeded.code, "the deadline passed before the job was queued")
    try:
        sent = yield context.call_activity(ENQUEUE_ACTIVITY, job, expected_type=dict)
    except Exception as exc:  # the replay engine rethrows an activity's failure as a bare Exception
        raise OrchestrationFailure(BrokerError.code, f"could not queue the request: {exc}") from None
    if not (isinstance(sent, dict) and sent.get("queued")):
        raise OrchestrationFailure(DeadlineExceeded.code, "the deadline passed before the job was queued")
    context.set_custom_status("Queued")
    result = context.wait_for_external_event(RESULT_EVENT, expected_type=dict)
    timer = context.create_timer(deadline)
    winner = yield context.task_any([result, timer])
    if winner is timer:
        raise OrchestrationFailure(
            DeadlineExceeded.code, f"no result before the job's deadline ({deadline.isoformat()})"
        )
    timer.cancel()  # else the instance would stay Running until the deadline
    return job_outcome(context, result.result)


def job_from_input(value: Any) -> dict[str, Any]:
    """The ``job`` of the orchestrator input (see ``azure_status.orchestrator_input``)."""
    job = value.get("job") if isinstance(value, dict) else None
    if not isinstance(job, dict) or not isinstance(job.get("id"), str):
        raise OrchestrationFailure(NearlineError.code, "orchestrator input has no job")
    if isinstance(job.get("deadline"), bool) or not isinstance(job.get("deadline"), int | float):
        raise OrchestrationFailure(NearlineError.code, f"job {job['id']} has no numeric deadline")
    if job.get("priority") not in LANES:
        raise OrchestrationFailure(NearlineError.code, f"job {job['id']} has no valid priority")
    return job


def job_outcome(context: df.DurableOrchestrationContext, payload: Any) -> Any:
    """The job's output from a ``ScoreCompleted`` payload (a result message as a dict).

    Raises:
        OrchestrationFailure: the worker reported ``Failed`` (its code and message), or the
            payload is not a result message (``PoisonMessage``).
    """
    try:
        result = ResultMessage.from_json(json.dumps(payload))
    except (MessageError, TypeError, ValueError) as exc:
        raise OrchestrationFailure(PoisonMessage.code, f"unusable result event: {exc}") from None
    context.set_custom_status({"worker": result.worker, "timings": result.timings})
    if result.status == "Completed":
        return result.output
    error = result.error or {}
    raise OrchestrationFailure(str(error.get("code")), str(error.get("message", "")))


# Registered without rebinding the names: `score_job` stays the plain generator that tests
# replay, while the blueprint holds the trigger binding the Functions host indexes.
bp.orchestration_trigger(context_name="context")(score_job)


# --- the activity ------------------------------------------------------------------------

_broker: Broker | None = None
_broker_lock = threading.Lock()


def broker_url(env: Mapping[str, str]) -> str:
    """The broker the activity sends to: ``NEARLINE_BROKER``, else the Service Bus trigger's setting.

    Reusing the trigger's connection setting means one setting configures both directions:
    ``ServiceBusConnection`` (a connection string) or
    ``ServiceBusConnection__fullyQualifiedNamespace`` (managed identity).
    """
    configured = FunctionsSettings.from_env(env).broker
    if configured:
        return configured
    if env.get(SERVICE_BUS_CONNECTION):
        return env[SERVICE_BUS_CONNECTION]
    namespace = env.get(f"{SERVICE_BUS_CONNECTION}__fullyQualifiedNamespace")
    if namespace:
        return f"servicebus://{namespace}"
    raise ConfigError(
        f"no broker configured: set {SERVICE_BUS_CONNECTION}__fullyQualifiedNamespace (managed identity),"
        f" {SERVICE_BUS_CONNECTION} (connection string) or {BROKER.name}"
    )


def request_broker() -> Broker:
    """The process's broker, opened on first use (the Functions host reuses worker processes)."""
    global _broker
    with _broker_lock:
        if _broker is None:
            _broker = open_broker(broker_url(os.environ))
        return _broker


def enqueue(job: dict[str, Any]) -> dict[str, Any]:
    """Activity: send the job's request message to its lane; ``{"queued": False}`` if too late.

    Message id = job id, so a retried activity is absorbed by Service Bus duplicate detection;
    the message lives until the deadline (after it, the orchestrator has failed the job anyway).
    """
    record = JobRecord(
        id=job["id"],
        pipeline=job["pipeline"],
        input=job.get("input"),
        deadline=float(job["deadline"]),
        priority=job["priority"],
        deployment=job.get("deployment"),
    )
    message = replace(request_message(record, now=time.time()), traceparent=job.get("traceparent"))
    ttl_s = float(job["deadline"]) - message.enqueued_at
    if ttl_s <= 0:
        return {"queued": False}
    try:
        request_broker().send(
            REQUEST_QUEUE, message.to_json(), message_id=record.id, lane=record.priority, ttl_s=ttl_s
        )
    except NearlineError:
        raise
    except Exception as exc:
        raise BrokerError(f"could not send the request of job {record.id}: {exc}") from exc
    return {"queued": True}


bp.activity_trigger(input_name="job")(enqueue)
