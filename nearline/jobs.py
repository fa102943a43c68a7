"""Job records and the status document (docs/api.md, Status document).

A :class:`JobRecord` is what a status store keeps; :func:`status_document` is the one function
that renders it for clients, used by the local API and the Azure HTTP functions alike.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote


class JobStatus(enum.StrEnum):
    """Durable Functions' runtimeStatus values that nearline uses."""

    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    TERMINATED = "Terminated"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.TERMINATED)


@dataclass(frozen=True)
class JobRecord:
    """One job as a status store holds it. Times are epoch seconds (UTC).

    The idempotency fields (:mod:`nearline.idempotency`) are set on keyed jobs only:
    ``idempotency_slot`` is the key's slot (one job per slot), ``fingerprint`` the request's digest
    a repeat is compared with. ``enqueued`` is False while a keyed job's record is claimed and its
    request message not yet sent (a repeat then gets 409). ``status_url`` is kept for a job with a
    ``callback_url``: its status URL as the submitter was given it, which an event too large to
    carry the job's input and output links to (docs/webhooks.md). ``deployment`` is the endpoint
    deployment chosen at submit (docs/deployments.md); None on records from before deployments.
    ``shadow_of`` is set on a shadow job (a mirrored copy, docs/deployments.md): the live job's id.
    A shadow's result is kept for comparison, never returned to a client nor called back.
    ``timings`` is set when a worker's result ended the job: each pipeline step's milliseconds,
    in order, for the micro-batch the job ran in (the dashboard's job page; not in the status
    document). None for a job not ended by a worker.
    """

    id: str
    pipeline: str
    input: Any
    status: JobStatus = JobStatus.PENDING
    output: Any = None
    custom_status: Any = None
    created: float = 0.0
    updated: float = 0.0
    deadline: float | None = None
    priority: str = "normal"
    idempotency_key: str | None = None
    callback_url: str | None = None
    idempotency_slot: str | None = None
    fingerprint: str | None = None
    enqueued: bool = True
    status_url: str | None = None
    deployment: str | None = None
    shadow_of: str | None = None
    timings: dict[str, float] | None = None

    def with_status(self, status: JobStatus, output: Any = None, now: float | None = None) -> JobRecord:
        return replace(self, status=status, output=output, updated=now if now is not None else time.time())


def iso(ts: float | None) -> str | None:
    """Epoch seconds → ISO 8601 UTC with a ``Z`` suffix, as Durable Functions writes them."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def status_document(job: JobRecord) -> dict[str, Any]:
    """The status document every profile returns from ``GET /api/jobs/{id}``.

    ``customStatus.deployment`` names the deployment that scores the job (kept beside whatever
    else ``customStatus`` holds, such as ``callback``; a non-mapping customStatus is left as it is).
    """
    custom = job.custom_status
    if job.deployment is not None and (custom is None or isinstance(custom, dict)):
        custom = {**(custom or {}), "deployment": job.deployment}
    return {
        "instanceId": job.id,
        "name": job.pipeline,
        "runtimeStatus": job.status.value,
        "input": job.input,
        "output": job.output,
        "customStatus": custom,
        "createdTime": iso(job.created),
        "lastUpdatedTime": iso(job.updated),
    }


def callback_status(
    state: str,
    attempts: int = 0,
    last_status: int | None = None,
    last_error: str | None = None,
    next_attempt: float | None = None,
) -> dict[str, Any]:
    """``customStatus.callback`` of a job with a ``callback_url`` (docs/webhooks.md).

    ``state`` is ``Pending`` (being delivered), ``Delivered`` or ``GivenUp``; ``last_status``
    the receiver's last HTTP status (None: no answer), ``last_error`` what went wrong last.
    """
    return {
        "state": state,
        "attempts": attempts,
        "lastStatus": last_status,
        "lastError": last_error,
        "nextAttemptTime": iso(next_attempt),
    }


#: ``custom_status`` of a job with a ``callback_url`` once it has ended, until the first attempt.
PENDING_CALLBACK: dict[str, Any] = {"callback": callback_status("Pending")}


def error_output(code: str, message: str) -> dict[str, Any]:
    """The ``output`` of a Failed job."""
    return {"error": {"code": code, "message": message}}


def job_urls(base_url: str, job_id: str, code: str | None = None) -> dict[str, str]:
    """The 202 body (docs/api.md, Job URLs): the job's absolute management URLs.

    ``code`` is the caller's query-string key, carried into every URL as Durable Functions does,
    so a client that authenticates with ``?code=`` (Logic Apps, azure-core's poller) can poll.
    """
    status = f"{base_url.rstrip('/')}/api/jobs/{job_id}"
    key = f"code={quote(code, safe='')}" if code else ""
    return {
        "id": job_id,
        "statusQueryGetUri": f"{status}?{key}" if key else status,
        "terminatePostUri": f"{status}/terminate?reason={{text}}" + (f"&{key}" if key else ""),
        "purgeHistoryDeleteUri": f"{status}?{key}" if key else status,
    }


def poll_headers(urls: dict[str, str], retry_after: int) -> dict[str, str]:
    """``Location`` and ``Retry-After`` for a 202 that points at the job's status."""
    return {"Location": urls["statusQueryGetUri"], "Retry-After": str(retry_after)}
