"""What the Azure modules share: function names, the failure encoding, Durable status → document.

Nothing here imports ``azure``: the functions below work on the attributes of
``azure.durable_functions.DurableOrchestrationStatus`` and are tested without a Functions host.

Failure encoding: an orchestrator fails by raising :class:`OrchestrationFailure`, whose ``str()``
is the JSON ``{"code": ..., "message": ...}``. Durable stores a failed instance's output as
``"Orchestrator function 'score_job' failed: <that str>"``; :func:`parse_failure` finds the JSON
in it again, so a Failed job's ``output`` is ``{"error": {"code", "message"}}`` as on every
other profile.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Protocol

from nearline import tracing
from nearline.constants import DEFAULT_LANE, LANES
from nearline.errors import JobFailure, NearlineError
from nearline.jobs import JobRecord, JobStatus, error_output, status_document

#: Durable function names. Durable addresses orchestrators and activities by function name,
#: so these must equal the Python function names in ``orchestrations/scoring.py``.
SCORING_ORCHESTRATOR = "score_job"
ENQUEUE_ACTIVITY = "enqueue"
#: The key of the scoring orchestrator's input that holds a job's outcome while its callback is
#: delivered (``orchestrations/delivery.py``), and the outcomes it may hold.
OUTCOME = "outcome"
_ENDS = ("Completed", "Failed")
#: The external event the response-queue function raises on a job's instance.
RESULT_EVENT = "ScoreCompleted"
#: App setting (or setting prefix, for identity: ``ServiceBusConnection__fullyQualifiedNamespace``)
#: that the Service Bus trigger and the enqueue activity both connect with.
SERVICE_BUS_CONNECTION = "ServiceBusConnection"

# Durable's runtimeStatus → ours. ContinuedAsNew is transient (we never continue-as-new) and a
# suspended instance has not ended; Canceled is the legacy name of Terminated.
_STATUS = {
    "Pending": JobStatus.PENDING,
    "Running": JobStatus.RUNNING,
    "ContinuedAsNew": JobStatus.RUNNING,
    "Suspended": JobStatus.RUNNING,
    "Completed": JobStatus.COMPLETED,
    "Failed": JobStatus.FAILED,
    "Terminated": JobStatus.TERMINATED,
    "Canceled": JobStatus.TERMINATED,
}


class DurableClient(Protocol):
    """The part of ``DurableOrchestrationClient`` the Azure functions use."""

    async def start_new(
        self, orchestration_function_name: str, instance_id: str | None = None, client_input: Any = None
    ) -> str: ...

    async def get_status(
        self,
        instance_id: str,
        show_history: bool = False,
        show_history_output: bool = False,
        show_input: bool = False,
    ) -> Any: ...

    async def terminate(self, instance_id: str, reason: str) -> None: ...

    async def purge_instance_history(self, instance_id: str) -> Any: ...

    async def raise_event(self, instance_id: str, event_name: str, event_data: Any = None) -> None: ...


class OrchestrationFailure(JobFailure):
    """Ends a job ``Failed`` with ``code``; ``str()`` is the JSON that :func:`parse_failure` reads."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return json.dumps({"code": self.code, "message": self.message})


def parse_failure(output: Any) -> tuple[str, str]:
    """``(code, message)`` of a Failed instance's Durable output.

    Finds the first JSON object with a string ``code`` in the text; anything else (an
    orchestrator that crashed outside our encoding) is reported as ``InternalError`` with the
    text as its message.
    """
    if isinstance(output, dict):
        error = output.get("error")
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            return error["code"], str(error.get("message", ""))
        # Newer extension versions may report FailureDetails ({"ErrorType", "ErrorMessage"}).
        output = output.get("ErrorMessage") or output.get("errorMessage") or json.dumps(output)
    text = "" if output is None else str(output)
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            found, _ = decoder.raw_decode(text, start)
        except ValueError:
            found = None
        if isinstance(found, dict) and isinstance(found.get("code"), str):
            return found["code"], str(found.get("message", ""))
        start = text.find("{", start + 1)
    return NearlineError.code, text or "the orchestration failed without a message"


def job_status(runtime_status: Any) -> JobStatus:
    """Our status for Durable's ``runtimeStatus`` (an enum member, its value, or None)."""
    value = getattr(runtime_status, "value", runtime_status)
    return _STATUS.get(str(value), JobStatus.PENDING) if value is not None else JobStatus.PENDING


def is_terminal(status: Any) -> bool:
    """True when a Durable status object describes a job that has ended: its instance has, or
    (fetched with its input) the instance is delivering the ended job's callback."""
    return bool(status) and (job_status(status.runtime_status).terminal or _outcome(status) is not None)


def orchestrator_input(job: JobRecord) -> dict[str, Any]:
    """The scoring orchestrator's input: the job fields the orchestration and status need.

    ``fingerprint`` is the request's digest, which a repeat of a keyed request is compared with
    (:func:`nearline.idempotency.reused`); Durable keeps it with the instance. A shadow job
    (docs/deployments.md, Mirroring) carries ``shadow_of``, the live job's id, and never a
    callback: a shadow's result is kept for comparison, never delivered.
    """
    callback = job.callback_url if job.shadow_of is None else None
    return {
        "job": {
            "id": job.id,
            "pipeline": job.pipeline,
            "input": job.input,
            "deadline": job.deadline,
            "priority": job.priority,
            "fingerprint": job.fingerprint,
            **({"deployment": job.deployment} if job.deployment else {}),
            **({"traceparent": parent} if (parent := tracing.traceparent()) else {}),
            **({"shadow_of": job.shadow_of} if job.shadow_of else {}),
            **({"callback_url": callback, "status_url": job.status_url} if callback else {}),
        }
    }


def job_record(status: Any) -> JobRecord:
    """A Durable status (fetched with ``show_input=True``) as the job record it stands for."""
    raw = status.input_
    if isinstance(raw, str):  # the extension may hand the input back still JSON-encoded
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
    job = raw.get("job") if isinstance(raw, dict) else None
    job = job if isinstance(job, dict) else {}
    state = job_status(status.runtime_status)
    output = status.output
    if state is JobStatus.FAILED:
        output = error_output(*parse_failure(output))
    created = _epoch(status.created_time)
    updated = _epoch(status.last_updated_time or status.created_time)
    outcome = _outcome(status)
    if outcome is not None:  # the job has ended; its callback is delivered (or was: the same)
        state, output, created, updated = _ended(outcome, state, output, created, updated)
    return JobRecord(
        id=str(status.instance_id),
        pipeline=str(job.get("pipeline", "")),
        input=job.get("input"),
        status=state,
        output=output,
        custom_status=status.custom_status,
        created=created,
        updated=updated,
        callback_url=job.get("callback_url") if isinstance(job.get("callback_url"), str) else None,
        fingerprint=job.get("fingerprint") if isinstance(job.get("fingerprint"), str) else None,
        deadline=_deadline(job.get("deadline")),
        deployment=job.get("deployment") if isinstance(job.get("deployment"), str) else None,
        priority=str(job["priority"]) if job.get("priority") in LANES else DEFAULT_LANE,
        shadow_of=job.get("shadow_of") if isinstance(job.get("shadow_of"), str) else None,
    )


def job_document(status: Any) -> dict[str, Any]:
    """The status document (docs/api.md) of a Durable status: rendered by the one renderer."""
    return status_document(job_record(status))


def _deadline(value: Any) -> float | None:
    """The job's deadline as the request message carries it (what a tombstone is matched by)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _outcome(status: Any) -> dict[str, Any] | None:
    """The outcome the scoring orchestration continued with to deliver the job's callback
    (:mod:`orchestrations.delivery`), when the status was fetched with its input."""
    raw = getattr(status, "input_", None)
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    outcome = raw.get(OUTCOME) if isinstance(raw, dict) else None
    return outcome if isinstance(outcome, dict) and outcome.get("runtimeStatus") in _ENDS else None


def _ended(
    outcome: dict[str, Any], state: JobStatus, output: Any, created: float, updated: float
) -> tuple[JobStatus, Any, float, float]:
    """``(status, output, created, updated)`` of a job whose outcome the orchestration carries."""
    if not state.terminal:  # while delivering, the outcome is the job's; after, Durable's agrees
        state = JobStatus(outcome["runtimeStatus"])
        output = outcome.get("output")
        if state is JobStatus.FAILED:
            error = outcome.get("error")
            error = error if isinstance(error, dict) else {}
            output = error_output(str(error.get("code")), str(error.get("message", "")))
    return state, output, _number(outcome.get("created"), created), _number(outcome.get("ended"), updated)


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _epoch(when: datetime | None) -> float:
    if when is None:
        return 0.0
    if when.tzinfo is None:  # Durable's times are UTC; a naive one is UTC too
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
