"""Wire messages (docs/api.md, Wire messages): the request and result messages, JSON on every broker.

The field names are firm: workers, the Azure response function and external tools read them.
Messages are parsed once, when received, into frozen dataclasses; a message that does not
parse is reported as :class:`MessageError` and never unpickled or guessed at.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from nearline.constants import DEFAULT_LANE, LANES
from nearline.errors import NearlineError
from nearline.jobs import JobStatus, error_output


class MessageError(NearlineError):
    """A message body is not a valid nearline message.

    Its own code, not a job's: whoever receives such a message decides what it means for the
    job (a worker fails it with ``PoisonMessage``).
    """

    code = "MalformedMessage"


Priority = Literal["high", "normal", "low"]


@dataclass(frozen=True)
class RequestMessage:
    """A scoring request on the request queue; ``id`` is the job id and the message id.

    ``deployment`` is the endpoint deployment chosen at submit (docs/deployments.md); None (a
    message from before deployments): the pipeline's deployment with the most traffic.
    """

    id: str
    pipeline: str
    input: Any
    enqueued_at: float
    deadline: float | None = None
    priority: str = DEFAULT_LANE
    attempt: int = 1
    deployment: str | None = None
    #: The W3C trace context of the job's trace (nearline/tracing.py); None when tracing is off.
    traceparent: str | None = None

    def expired(self, now: float | None = None) -> bool:
        """True when the deadline has passed."""
        return self.deadline is not None and (now if now is not None else time.time()) >= self.deadline

    def to_json(self) -> bytes:
        """The message as sent; ``input`` is not copied (``asdict`` recursed once per level)."""
        fields = ("id", "pipeline", "input", "enqueued_at", "deadline", "priority", "attempt")
        data = {name: getattr(self, name) for name in fields}
        if self.deployment is not None:
            data["deployment"] = self.deployment
        if self.traceparent is not None:
            data["traceparent"] = self.traceparent
        return _dumps(data)

    @classmethod
    def from_json(cls, body: bytes | str) -> RequestMessage:
        data = _load_object(body)
        try:
            msg = cls(
                id=_str(data, "id"),
                pipeline=_str(data, "pipeline"),
                input=data.get("input"),
                enqueued_at=float(data["enqueued_at"]),
                deadline=None if data.get("deadline") is None else float(data["deadline"]),
                priority=str(data.get("priority", DEFAULT_LANE)),
                attempt=int(data.get("attempt", 1)),
                deployment=None if data.get("deployment") is None else _str(data, "deployment"),
                traceparent=_traceparent(data),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MessageError(f"request message: bad or missing field: {exc}") from None
        if msg.priority not in LANES:
            raise MessageError(f"request message: priority {msg.priority!r} is not one of {LANES}")
        return msg


@dataclass(frozen=True)
class ResultMessage:
    """A job's result on the response queue: ``output`` when Completed, ``error`` when Failed."""

    id: str
    status: Literal["Completed", "Failed"]
    output: Any = None
    error: dict[str, str] | None = None
    worker: str = ""
    request_enqueued_at: float | None = None
    received_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    traceparent: str | None = None

    @classmethod
    def completed(cls, id: str, output: Any, **kw: Any) -> ResultMessage:
        return cls(id=id, status="Completed", output=output, **kw)

    @classmethod
    def failed(cls, id: str, code: str, message: str, **kw: Any) -> ResultMessage:
        return cls(id=id, status="Failed", error={"code": code, "message": message}, **kw)

    def job_end(self) -> tuple[str, JobStatus, Any]:
        """``(job id, terminal status, output)`` this result ends its job with (the lifecycle's
        end, or the worker's own on Redis: ``StatusStore.settle_ended``)."""
        if self.status == "Completed":
            return self.id, JobStatus.COMPLETED, self.output
        error = self.error or {}
        return self.id, JobStatus.FAILED, error_output(error.get("code", "Failed"), error.get("message", ""))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "worker": self.worker,
            "request_enqueued_at": self.request_enqueued_at,
            "received_at": self.received_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "timings": self.timings,
        }
        if self.status == "Completed":
            d["output"] = self.output
        else:
            d["error"] = self.error
        if self.traceparent is not None:
            d["traceparent"] = self.traceparent
        return d

    def to_json(self) -> bytes:
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, body: bytes | str) -> ResultMessage:
        data = _load_object(body)
        status = data.get("status")
        if status not in ("Completed", "Failed"):
            raise MessageError(f"result message: status {status!r} is not Completed or Failed")
        error = data.get("error")
        if status == "Failed" and not (isinstance(error, dict) and "code" in error):
            raise MessageError("result message: a Failed result needs error.code")
        try:
            return cls(
                id=_str(data, "id"),
                status=status,
                output=data.get("output"),
                error=error,
                worker=str(data.get("worker", "")),
                request_enqueued_at=_time(data, "request_enqueued_at"),
                received_at=_time(data, "received_at"),
                started_at=data.get("started_at"),
                finished_at=data.get("finished_at"),
                timings=dict(data.get("timings") or {}),
                traceparent=_traceparent(data),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MessageError(f"result message: bad or missing field: {exc}") from None


def _dumps(data: dict[str, Any]) -> bytes:
    """JSON as RFC 8259 has it: a NaN or an infinity raises ValueError instead of being written."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


def _no_constant(literal: str) -> Any:
    raise MessageError(f"message holds {literal}, not a finite number: not JSON")


def _load_object(body: bytes | str) -> dict[str, Any]:
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"message is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MessageError("message is not a JSON object")
    return data


def _time(data: dict[str, Any], key: str) -> float | None:
    """An optional epoch-seconds field, for observation only: None when absent (older workers
    send none) or not a number (a result is never lost over its timestamps)."""
    value = data.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _traceparent(data: dict[str, Any]) -> str | None:
    """The optional W3C ``traceparent`` (55 characters), for observation only: anything else
    is dropped, never a reason to fail a job."""
    value = data.get("traceparent")
    return value if isinstance(value, str) and len(value) == 55 else None


def _str(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise MessageError(f"message field {key!r} must be a non-empty string")
    return value
