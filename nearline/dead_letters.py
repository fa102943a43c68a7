"""Dead-letter tools: find, inspect, redrive and purge dead-lettered request messages.

Built on the broker seam (:meth:`~nearline.brokers.base.Broker.dead_letters`, ``send`` and
:meth:`~nearline.brokers.base.Broker.purge_dead_letters`), so it works on every broker;
``nearline dlq`` (:mod:`nearline.dlq_cli`) is its command line. Redrive puts a job's record back
to Pending (:func:`reopen`) *before* its request goes back on the queue: a worker that received
the request while the record still said Failed would skip it as already ended.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from nearline.brokers.base import Broker, DeadLetter
from nearline.jobs import JobRecord, JobStatus, iso
from nearline.store.base import StatusStore

#: How many dead letters a filtered listing looks through (oldest first).
SCAN_LIMIT = 10_000


@dataclass(frozen=True)
class Filter:
    """Which dead letters an operation applies to; every field set must match.

    Attributes:
        pipeline: The request's pipeline name.
        reason: A case-insensitive substring of the dead-letter reason.
        older_than_s: Dead-lettered at least this many seconds ago (backends that do not record
            when, Service Bus, never match an age filter).
    """

    pipeline: str | None = None
    reason: str | None = None
    older_than_s: float | None = None

    def matches(self, dead: DeadLetter, now: float) -> bool:
        if self.pipeline is not None and pipeline_of(dead) != self.pipeline:
            return False
        if self.reason is not None and self.reason.lower() not in dead.reason.lower():
            return False
        if self.older_than_s is not None:
            return dead.dead_at is not None and now - dead.dead_at >= self.older_than_s
        return True


def _request(dead: DeadLetter) -> dict[str, Any] | None:
    """The dead letter's body as a JSON object; None for a malformed message."""
    try:
        data = json.loads(dead.body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def pipeline_of(dead: DeadLetter) -> str | None:
    """The pipeline the dead-lettered request names, or None when its body is not a request."""
    pipeline = (_request(dead) or {}).get("pipeline")
    return pipeline if isinstance(pipeline, str) else None


def summary(dead: DeadLetter) -> dict[str, Any]:
    """A dead letter without its body, as listed (``nearline dlq list --json``)."""
    return {
        "id": dead.message_id,
        "queue": dead.queue,
        "pipeline": pipeline_of(dead),
        "lane": dead.lane,
        "reason": dead.reason,
        "deliveryCount": dead.delivery_count,
        "deadLetteredTime": iso(dead.dead_at),
    }


def detail(dead: DeadLetter) -> dict[str, Any]:
    """A dead letter with its request: the parsed message, or the raw body when it is not JSON."""
    request = _request(dead)
    body = request if request is not None else dead.body.decode("utf-8", "replace")
    return {**summary(dead), "message": body}


def matching(broker: Broker, queue: str, flt: Filter, limit: int = 100) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters of ``queue`` that ``flt`` matches."""
    now = time.time()
    return [d for d in broker.dead_letters(queue, SCAN_LIMIT) if flt.matches(d, now)][:limit]


def find(broker: Broker, queue: str, message_id: str) -> DeadLetter | None:
    """The dead letter with ``message_id`` (the job id), or None."""
    return next((d for d in broker.dead_letters(queue, SCAN_LIMIT) if d.message_id == message_id), None)


def reopen(store: StatusStore, job_id: str, now: float) -> JobRecord | None:
    """Put an ended job back to Pending (a redriven dead letter's job); None if absent.

    Output and ``custom_status`` are cleared; a job that has not ended is returned as it is.
    Made of the store's ``delete`` and ``create`` (so the callback outbox's entry goes with the
    old record, and the job gets a new one when it ends again), which is not atomic: a repeat of
    the job's idempotency key between the two would create a second job.
    """
    job = store.get(job_id)
    if job is None or not job.status.terminal:
        return job
    store.delete(job_id)
    fresh = replace(job, status=JobStatus.PENDING, output=None, custom_status=None, updated=now)
    return store.create(fresh)[0]


def redrive(broker: Broker, store: StatusStore | None, queue: str, message_ids: Sequence[str]) -> list[str]:
    """Send these dead letters back to ``queue``, their jobs back to Pending; the ids redriven.

    Each goes back with its message id and lane; its delivery count starts again at 1. At least
    once: sent, then purged, so an interruption in between leaves it queued and dead, and
    redriving it again is harmless (a queued id is not sent twice). ``store`` is None where no
    status store is beside the broker (Azure: the orchestration keeps job state).
    """
    wanted = set(message_ids)
    found = {d.message_id: d for d in broker.dead_letters(queue, SCAN_LIMIT) if d.message_id in wanted}
    ids = [mid for mid in dict.fromkeys(message_ids) if mid in found]
    now = time.time()
    for mid in ids:
        if store is not None:
            reopen(store, mid, now)
        dead = found[mid]
        broker.send(queue, dead.body, message_id=mid, lane=dead.lane)
    broker.purge_dead_letters(queue, ids)
    return ids


def purge(broker: Broker, queue: str, message_ids: Sequence[str]) -> int:
    """Delete these dead letters for good; how many there were. Their job records are kept."""
    return broker.purge_dead_letters(queue, list(dict.fromkeys(message_ids)))


class DeadLetterQueue:
    """The dead-letter tools of one queue, for an event loop (the admin API and the dashboard).

    The same functions as ``nearline dlq``, each run in a worker thread: one implementation,
    two callers. ``store`` is None where no status store is beside the broker.
    """

    def __init__(self, broker: Broker, store: StatusStore | None, queue: str) -> None:
        self.broker, self.store, self.queue = broker, store, queue

    async def select(self, flt: Filter, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters ``flt`` matches."""
        return await asyncio.to_thread(matching, self.broker, self.queue, flt, limit)

    async def count(self) -> int:
        """How many dead letters there are (up to :data:`SCAN_LIMIT`)."""
        return len(await asyncio.to_thread(self.broker.dead_letters, self.queue, SCAN_LIMIT))

    async def get(self, message_id: str) -> DeadLetter | None:
        """The dead letter with ``message_id``, or None."""
        return await asyncio.to_thread(find, self.broker, self.queue, message_id)

    async def redrive(self, message_ids: Sequence[str]) -> list[str]:
        """:func:`redrive` these; the ids redriven."""
        return await asyncio.to_thread(redrive, self.broker, self.store, self.queue, message_ids)

    async def purge(self, message_ids: Sequence[str]) -> int:
        """:func:`purge` these; how many were deleted."""
        return await asyncio.to_thread(purge, self.broker, self.queue, message_ids)
