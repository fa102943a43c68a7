"""Parsing a submit request into a job: the validation every front door shares.

The local API (``nearline.api``) and the Azure HTTP functions (``orchestrations.http_api``) both call
:func:`parse_submission` and :func:`job_id_for`, so a request rejected by one is rejected by the
other with the same status and message. Nothing here touches a queue or a store.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

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

if TYPE_CHECKING:
    from nearline.pipelines.spec import Catalog

#: Namespace of idempotent job ids: uuid5(namespace, pipeline + "\n" + key). Deterministic, so
#: every API replica (and the Azure starter) maps one key to one job without a lookup table.
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1b7f43-5a51-4d0e-9a43-0c7d6c1e5a10")
MAX_IDEMPOTENCY_KEY = 200
_BODY_FIELDS = {"input", "timeout_s", "priority", "callback_url"}


@dataclass(frozen=True)
class Submission:
    """A validated submit request."""

    pipeline: str
    input: Any
    timeout_s: float
    priority: str
    callback_url: str | None


def parse_submission(
    catalog: Catalog, pipeline: str, body: bytes, *, max_body: int = MAX_BODY_BYTES
) -> Submission:
    """Check a submit body against the contract and the pipeline's input schema.

    Raises:
        UnknownPipeline: (404) no such pipeline.
        PayloadTooLarge: (413) ``body`` is over ``max_body`` bytes.
        RequestError / InvalidInput: (400) malformed JSON, unknown fields, a bad option, or an
            input that fails the pipeline's schema; the message names the field.
    """
    spec = catalog.get(pipeline)
    if len(body) > max_body:
        raise PayloadTooLarge(f"request body is {len(body)} bytes; the limit is {max_body}")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from None
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
        callback_url=_callback(doc.get("callback_url")),
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


def job_id_for(pipeline: str, idempotency_key: str | None) -> str:
    """A new random job id, or the one id an ``Idempotency-Key`` maps to for this pipeline."""
    if idempotency_key is None:
        return uuid.uuid4().hex
    if not idempotency_key or len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
        raise RequestError(f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY} characters")
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{pipeline}\n{idempotency_key}").hex


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


def _callback(value: Any) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise RequestError("request body: 'callback_url' must be an absolute http(s) URL")
    return str(value)
