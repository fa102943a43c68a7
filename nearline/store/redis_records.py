"""How the Redis store keeps a job record: the hash ``nearline:job:<id>``, field by field.

``status``, ``updated`` and a keyed job's ``idempotency_slot`` and ``fingerprint`` are plain
text (the scripts of :mod:`nearline.store.redis_lua` read and write them); every other field is
JSON. Records come back as a hash (``HGETALL``), as a script's ``{id, field/value pairs}``, or
as a worker's announcement (a JSON array of the pairs, :mod:`nearline.store.redis_settle`).
"""

from __future__ import annotations

import json
from typing import Any

from nearline.jobs import JobRecord, JobStatus

JOB_PREFIX = "nearline:job:"
#: A keyed job's idempotency slot: ``nearline:job-slot:<slot>`` holds the job id.
SLOT_PREFIX = "nearline:job-slot:"
DEADLINES = "nearline:jobs:deadlines"
FINISHED = "nearline:jobs:finished"
#: JSON-encoded fields (``status`` and ``updated`` are plain: the scripts read and write them).
JSON_FIELDS = (
    *("pipeline", "input", "output", "custom_status", "created", "deadline", "priority"),
    *("idempotency_key", "callback_url", "enqueued", "status_url", "deployment"),
    *("shadow_of", "timings"),
)
#: Text fields kept plain (the scripts read the slot), and left out when None.
TEXT_FIELDS = ("idempotency_slot", "fingerprint")


def create_args(job: JobRecord, retention_ms: int) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the create functions (:data:`~nearline.store.redis_lua.CREATE_FUNCTIONS`)."""
    fields: list[Any] = ["status", job.status.value, "updated", repr(job.updated)]
    for name in JSON_FIELDS:
        fields += [name, json.dumps(getattr(job, name))]
    for name in TEXT_FIELDS:
        if getattr(job, name) is not None:
            fields += [name, getattr(job, name)]
    deadline = "" if job.deadline is None else repr(job.deadline)
    keys = [JOB_PREFIX + job.id, DEADLINES, FINISHED]
    if job.idempotency_slot is not None:
        keys.append(SLOT_PREFIX + job.idempotency_slot)
    args = [job.id, job.status.value, repr(job.updated), deadline, retention_ms, JOB_PREFIX]
    return keys, [*args, *fields]


def timings_arg(timings: dict[str, float] | None) -> str:
    """The finish scripts' timings argument: JSON, or "" for none (the field keeps ``null``)."""
    return "" if timings is None else json.dumps(timings)


def record(job_id: str, raw: dict[Any, Any]) -> JobRecord:
    """The record of a job's hash as ``HGETALL`` answers it (bytes to bytes)."""
    f = {k.decode(): v for k, v in raw.items()}
    values = {name: json.loads(f[name]) for name in JSON_FIELDS if name in f}
    values.update((name, f[name].decode()) for name in TEXT_FIELDS if name in f)
    return JobRecord(id=job_id, status=JobStatus(f["status"].decode()), updated=float(f["updated"]), **values)


def announced_record(job_id: str, pairs: str) -> JobRecord:
    """The record of a worker's announcement (:mod:`nearline.store.redis_settle`): the hash's
    fields and values as a JSON array."""
    flat = [item.encode() for item in json.loads(pairs)]
    return record(job_id, dict(zip(flat[::2], flat[1::2], strict=True)))


def holder(found: list[Any]) -> JobRecord:
    """The record of a script's ``{id, hash as field/value pairs}``."""
    job_id, pairs = found
    return record(job_id.decode(), dict(zip(pairs[::2], pairs[1::2], strict=True)))
