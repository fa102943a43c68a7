"""Parsing a submit request into a job: the validation every front door shares.

The local API (``nearline.api``) and the Azure HTTP functions (``orchestrations.http_api``) both call
:func:`parse_submission` (through ``nearline.service.Jobs.submit``), so a request rejected by one is
rejected by the other with the same status and message. Nothing here touches a queue or a store.
Job ids and ``Idempotency-Key`` are decided by ``Jobs.submit`` (:mod:`nearline.idempotency`).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nearline import strict_json
from nearline.addresses import AllowList
from nearline.callbacks import CallbackRefused, check_callback_url, configured_allow_list
from nearline.constants import (
    DEFAULT_LANE,
    DEFAULT_TIMEOUT_S,
    LANES,
    MAX_BODY_BYTES,
    MAX_TIMEOUT_S,
    MAX_WAIT_S,
)
from nearline.errors import PayloadTooLarge, RequestError
from nearline.jobs import JobRecord
from nearline.messages import RequestMessage
from nearline.pipelines import traffic

if TYPE_CHECKING:
    from nearline.pipelines.spec import Catalog

_BODY_FIELDS = {"input", "timeout_s", "priority", "callback_url"}


@dataclass(frozen=True)
class Submission:
    """A validated submit request; ``deployment`` is the one that scores it (docs/deployments.md)."""

    pipeline: str
    input: Any
    timeout_s: float
    priority: str
    callback_url: str | None
    deployment: str | None = None


def parse_submission(
    catalog: Catalog,
    pipeline: str,
    body: bytes,
    *,
    max_body: int = MAX_BODY_BYTES,
    allow: AllowList | None = None,
    deployment: str | None = None,
    split: Mapping[str, int] | None = None,
) -> Submission:
    """Check a submit body against the contract and the pipeline's input schema, and pick the
    deployment: ``deployment`` (the ``nearline-deployment`` header) when given, else one drawn by
    the traffic weights ``split`` (the endpoint's live split, ``Jobs.split``; default: the file's).

    Raises:
        UnknownPipeline: (404) no such pipeline.
        PayloadTooLarge: (413) ``body`` is over ``max_body`` bytes.
        RequestError / InvalidInput: (400) not strict JSON (:mod:`nearline.strict_json`: UTF-8,
            finite numbers, no lone surrogates, no repeated keys, nested at most
            ``MAX_JSON_DEPTH``), unknown fields, a bad option, or an input that fails the
            pipeline's schema; the message names the field.
        CallbackRefused: (400) a ``callback_url`` that can never be sent to (a host name is
            looked up by ``Jobs.submit``); ``allow`` is the allow-list (default:
            ``NEARLINE_CALLBACK_ALLOW``).
        UnknownDeployment: (400) ``deployment`` is not one of the endpoint's, or none was given
            and the endpoint has no live traffic; the message lists the deployments.
    """
    spec = catalog.get(pipeline)
    chosen = spec.deployment_named(deployment).name if deployment is not None else None
    if len(body) > max_body:
        raise PayloadTooLarge(f"request body is {len(body)} bytes; the limit is {max_body}")
    try:
        doc = strict_json.load(body)
    except strict_json.StrictJSONError as exc:  # not JSON, or NaN, 1e400, "\ud800", too deep
        raise RequestError(str(exc)) from None
    if not isinstance(doc, dict):
        raise RequestError('request body must be a JSON object: {"input": ...}')
    if "input" not in doc:
        raise RequestError("request body: 'input' is required: {\"input\": <pipeline input>}")
    unknown = sorted(set(doc) - _BODY_FIELDS)
    if unknown:
        raise RequestError(f"unknown field(s) in request body: {', '.join(unknown)}")
    spec.validate(doc["input"])
    return Submission(
        pipeline=pipeline,
        input=doc["input"],
        timeout_s=_timeout(doc.get("timeout_s")),
        priority=_priority(doc.get("priority")),
        callback_url=_callback(doc.get("callback_url"), allow),
        deployment=chosen or traffic.choose(spec.traffic if split is None else split, pipeline),
    )


def parse_wait(value: str | None) -> float | None:
    """The ``wait`` query parameter: seconds in 0..30, or None when absent."""
    if value is None or value == "":
        return None
    try:
        wait = float(value)
    except ValueError:
        raise RequestError(f"query parameter 'wait' must be a number of seconds, got {value!r}") from None
    if not 0 <= wait <= MAX_WAIT_S or math.isnan(wait):
        raise RequestError(f"query parameter 'wait' must be between 0 and {MAX_WAIT_S:g} seconds")
    return wait


def new_job(
    sub: Submission, job_id: str, idempotency_key: str | None = None, now: float | None = None
) -> JobRecord:
    """The Pending record of a freshly accepted submission."""
    now = time.time() if now is None else now
    return JobRecord(
        id=job_id,
        pipeline=sub.pipeline,
        input=sub.input,
        created=now,
        updated=now,
        deadline=now + sub.timeout_s,
        priority=sub.priority,
        idempotency_key=idempotency_key,
        callback_url=sub.callback_url,
        deployment=sub.deployment,
    )


def shadow_job(live: JobRecord, deployment: str) -> JobRecord:
    """A shadow of ``live`` for ``deployment`` (docs/deployments.md, Mirroring): the same input
    and deadline, its own random id (never handed out), the low lane, no key and no callback."""
    return JobRecord(
        id=uuid.uuid4().hex,
        pipeline=live.pipeline,
        input=live.input,
        created=live.created,
        updated=live.updated,
        deadline=live.deadline,
        priority=LANES[-1],  # low: shadows never get ahead of live work
        deployment=deployment,
        shadow_of=live.id,
    )


def request_message(job: JobRecord, now: float | None = None) -> RequestMessage:
    """The request message (docs/api.md, Wire messages) for ``job``."""
    return RequestMessage(
        id=job.id,
        pipeline=job.pipeline,
        input=job.input,
        enqueued_at=time.time() if now is None else now,
        deadline=job.deadline,
        priority=job.priority,
        deployment=job.deployment,
    )


def _timeout(value: Any) -> float:
    if value is None:
        return DEFAULT_TIMEOUT_S
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError("request body: 'timeout_s' must be a number of seconds")
    if not 0 < value <= MAX_TIMEOUT_S:
        raise RequestError(f"request body: 'timeout_s' must be > 0 and <= {MAX_TIMEOUT_S:g}")
    return float(value)


def _priority(value: Any) -> str:
    if value is None:
        return DEFAULT_LANE
    if value not in LANES:
        raise RequestError(f"request body: 'priority' must be one of {', '.join(LANES)}")
    return str(value)


def _callback(value: Any, allow: AllowList | None) -> str | None:
    """A ``callback_url`` that the callback guard could ever send to (names are looked up later);
    ``allow`` None: ``NEARLINE_CALLBACK_ALLOW``, read only for a request that has one."""
    if value is None:
        return None
    allow = configured_allow_list() if allow is None else allow
    if not isinstance(value, str):
        raise CallbackRefused("request body: 'callback_url' must be an absolute https URL")
    try:
        check_callback_url(value, allow)
    except CallbackRefused as exc:
        raise CallbackRefused(f"request body: 'callback_url' {exc.message}") from None
    return value
