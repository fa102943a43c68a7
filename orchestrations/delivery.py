"""Callbacks on Azure: the scoring orchestration delivers a job's event once its outcome is known.

``score_job`` is wrapped by :func:`with_callback`. For a job with a ``callback_url``, the first
execution runs the scoring as before; once the outcome is known (a result, a worker's failure,
the deadline) it continues as new with the outcome in its input. The second execution calls the
``deliver_callback`` activity with Durable's retry policy (``call_activity_with_retry``:
``NEARLINE_WEBHOOK_RETRY_S`` doubling per attempt up to an hour, ``NEARLINE_WEBHOOK_MAX_ATTEMPTS``
attempts, ``NEARLINE_WEBHOOK_MAX_AGE_S`` in all), records the delivery in ``customStatus.callback``
and then ends as the job ended. Meanwhile the job is shown ended (:mod:`orchestrations.azure_status`
reads the outcome from the input), and the event is the one every profile sends
(:mod:`nearline.webhooks`), signed in the activity with ``NEARLINE_WEBHOOK_SECRET`` from the app
settings (never in the orchestration's history). The activity sends under the same guard as
``nearline serve`` (:mod:`nearline.callbacks`, ``NEARLINE_CALLBACK_ALLOW``).

A job terminated through the API never runs its orchestrator again, so the terminate route starts
``deliver_job_callback`` (the same delivery, as an orchestration of its own, instance id
``<job id>-callback``) for it.

The orchestrators are replayed from their history: they read no clock but the context's and do
no I/O; the activity does the sending, and reports an attempt worth retrying by raising.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Generator
from datetime import UTC, datetime
from typing import Any

import azure.durable_functions as df

from nearline import webhooks
from nearline.callback_sender import CallbackSender
from nearline.callbacks import CallbackGuard, configured_allow_list
from nearline.constants import WEBHOOK_MAX_RETRY_S
from nearline.errors import ConfigError, NearlineError
from nearline.jobs import JobRecord, JobStatus, callback_status, error_output, status_document
from nearline.settings import WebhookSettings
from orchestrations.azure_status import OUTCOME, OrchestrationFailure

DELIVERY_ACTIVITY = "deliver_callback"
DELIVERY_ORCHESTRATOR = "deliver_job_callback"

bp = df.Blueprint()
Orchestrator = Callable[[df.DurableOrchestrationContext], Generator[Any, Any, Any]]


class AttemptFailed(NearlineError):
    """An attempt worth retrying failed (no answer, 408, 429, 5xx): Durable retries the activity."""

    code = "CallbackAttemptFailed"


class BackoffRetryOptions(df.RetryOptions):
    """Durable's retry options with the backoff fields the extension reads (the JavaScript SDK's
    names), which the Python SDK's class leaves out: without them every retry waits as long as
    the first."""

    def __init__(self, settings: WebhookSettings) -> None:
        super().__init__(max(1, int(settings.retry_s * 1000)), settings.max_attempts)
        self.settings = settings

    def to_json(self) -> dict[str, Any]:
        fields: dict[str, Any] = dict(super().to_json())
        fields["backoffCoefficient"] = 2.0
        fields["maxRetryIntervalInMilliseconds"] = int(WEBHOOK_MAX_RETRY_S * 1000)
        fields["retryTimeoutInMilliseconds"] = int(self.settings.max_age_s * 1000)
        return fields


def with_callback(orchestrator: Orchestrator) -> Orchestrator:
    """Wrap the scoring orchestrator: deliver the job's callback once its outcome is known."""

    @functools.wraps(orchestrator)
    def run(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
        raw = context.get_input(expected_type=dict)
        if isinstance(raw, dict) and isinstance(raw.get(OUTCOME), dict):
            return (yield from deliver_then_end(context, raw))
        job = raw.get("job") if isinstance(raw, dict) else None
        if not (isinstance(job, dict) and job.get("callback_url")):
            return (yield from orchestrator(context))
        started = _epoch(context.current_utc_datetime)
        outcome: dict[str, Any]
        try:
            output = yield from orchestrator(context)
        except OrchestrationFailure as failure:
            outcome = {"runtimeStatus": "Failed", "error": {"code": failure.code, "message": failure.message}}
        else:
            outcome = {"runtimeStatus": "Completed", "output": output}
        outcome |= {"created": started, "ended": _epoch(context.current_utc_datetime)}
        outcome["customStatus"] = context.custom_status
        context.continue_as_new({**raw, OUTCOME: outcome})
        return None

    return run


def deliver_then_end(
    context: df.DurableOrchestrationContext, raw: dict[str, Any]
) -> Generator[Any, Any, Any]:
    """Deliver the callback of the job whose outcome ``raw`` holds, then end as the job ended."""
    job, outcome = raw["job"], raw[OUTCOME]
    carried = outcome.get("customStatus")
    base = carried if isinstance(carried, dict) else {}
    context.set_custom_status({**base, "callback": callback_status("Pending")})
    state = yield from deliver(context, job, outcome)
    context.set_custom_status({**base, "callback": state})
    if outcome["runtimeStatus"] == "Failed":
        error = outcome.get("error") or {}
        raise OrchestrationFailure(str(error.get("code")), str(error.get("message", "")))
    return outcome.get("output")


def deliver(
    context: df.DurableOrchestrationContext, job: dict[str, Any], outcome: dict[str, Any]
) -> Generator[Any, Any, dict[str, Any]]:
    """Call the delivery activity with retries; the ``customStatus.callback`` it came to."""
    try:
        settings = WebhookSettings.from_env()
    except ConfigError as exc:  # a bad setting is logged by the host; the job still ends
        return callback_status("GivenUp", 0, None, exc.message)
    task = context.call_activity_with_retry(
        DELIVERY_ACTIVITY, BackoffRetryOptions(settings), {"job": job, OUTCOME: outcome}
    )
    try:
        result = yield task
    except Exception as exc:  # every attempt failed; the engine rethrows the last as a bare Exception
        return callback_status("GivenUp", _attempts(task), None, _last_error(str(exc)))
    state: dict[str, Any] = callback_status(
        str(result.get("state")), _attempts(task), result.get("lastStatus"), result.get("lastError")
    )
    return state


def deliver_job_callback(context: df.DurableOrchestrationContext) -> Generator[Any, Any, Any]:
    """Orchestrator: deliver the callback of a job that ended without its orchestrator (terminated)."""
    raw = context.get_input(expected_type=dict)
    state = yield from deliver(context, raw["job"], raw[OUTCOME])
    context.set_custom_status({"callback": state})
    return state


def terminated_input(record: JobRecord, reason: str, now: float) -> dict[str, Any]:
    """The input of ``deliver_job_callback`` for ``record``, terminated with ``reason`` at ``now``."""
    job = {
        "id": record.id,
        "pipeline": record.pipeline,
        "input": record.input,
        "callback_url": record.callback_url,
    }
    return {
        "job": job,
        OUTCOME: {"runtimeStatus": "Terminated", "output": reason, "created": record.created, "ended": now},
    }


bp.orchestration_trigger(context_name="context")(deliver_job_callback)


# --- the activity ------------------------------------------------------------------------

_sender: CallbackSender | None = None
_sender_lock = threading.Lock()


def sender() -> CallbackSender:
    """The process's sender under ``NEARLINE_CALLBACK_ALLOW`` (built on first use)."""
    global _sender
    with _sender_lock:
        if _sender is None:
            _sender = CallbackSender(CallbackGuard(configured_allow_list()))
        return _sender


def deliver_callback(delivery: dict[str, Any]) -> dict[str, Any]:
    """Activity: one signed attempt at a job's callback.

    Returns ``{"state": "Delivered" | "GivenUp", "lastStatus", "lastError"}`` when retrying
    cannot change the outcome (a 2xx; a refusal by the receiver or the guard; a delivery older
    than ``NEARLINE_WEBHOOK_MAX_AGE_S``).

    Raises:
        AttemptFailed: No answer, 408, 429 or a 5xx: Durable tries again.
    """
    settings = WebhookSettings.from_env()
    job, outcome = delivery["job"], delivery[OUTCOME]
    now = datetime.now(UTC).timestamp()
    if now - float(outcome["ended"]) > settings.max_age_s:
        return {
            "state": "GivenUp",
            "lastStatus": None,
            "lastError": f"not sent: older than {settings.max_age_s:g} s",
        }
    body = webhooks.event_body(status_document(event_record(job, outcome)), job.get("status_url"))
    headers = webhooks.signed_headers(webhooks.message_id(job["id"]), body, settings.secrets, now)
    attempt = sender().post(job["callback_url"], body, headers)
    if attempt.retryable:
        raise AttemptFailed(attempt.error or "no answer")
    state = "Delivered" if attempt.delivered else "GivenUp"
    return {"state": state, "lastStatus": attempt.status, "lastError": attempt.error}


bp.activity_trigger(input_name="delivery")(deliver_callback)


def event_record(job: dict[str, Any], outcome: dict[str, Any]) -> JobRecord:
    """The job record an event describes: the job as it ended (docs/api.md, Status document)."""
    status = JobStatus(outcome["runtimeStatus"])
    output = outcome.get("output")
    if status is JobStatus.FAILED:
        error = outcome.get("error") or {}
        output = error_output(str(error.get("code")), str(error.get("message", "")))
    custom = outcome.get("customStatus")
    return JobRecord(
        id=job["id"],
        pipeline=job.get("pipeline", ""),
        input=job.get("input"),
        status=status,
        output=output,
        custom_status=custom if custom not in ({}, "Queued") else None,
        created=float(outcome.get("created") or 0.0),
        updated=float(outcome["ended"]),
    )


def _attempts(task: Any) -> int:
    """Attempts the retrying task made (the engine counts them; replay gives the same count)."""
    return int(getattr(task, "num_attempts", 0) or 0)


def _last_error(text: str) -> str:
    """The last attempt's error from the engine's text (``"<reason>\\n<details>"``), shortened."""
    return text.strip().splitlines()[0][:300] if text.strip() else "every attempt failed"


def _epoch(when: datetime) -> float:
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()
