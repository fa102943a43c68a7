"""Cross-cutting worker concerns as small hooks, each in one place.

A hook sees a batch of :class:`Work` items before the pipeline runs and settles the ones that
must not be computed (poison, expired, already ended) by giving them a result or a dead-letter
reason; the worker computes only what is left. Metrics observe batches from the outside.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from nearline.brokers.base import Delivery
from nearline.errors import DeadlineExceeded, PoisonMessage
from nearline.jobs import JobStatus
from nearline.messages import MessageError, RequestMessage, ResultMessage
from nearline.store.base import StatusStore

if TYPE_CHECKING:
    from nearline.tombstones import Tombstones


@dataclass
class Work:
    """One received request on its way through a batch.

    ``result`` set: publish it, then complete the delivery. ``dead_letter`` set: dead-letter the
    delivery (after publishing ``result`` if any). ``skip`` set: complete it without a result.
    """

    delivery: Delivery
    message: RequestMessage | None = None
    result: ResultMessage | None = None
    dead_letter: str | None = None
    skip: bool = False

    @property
    def settled(self) -> bool:
        return self.result is not None or self.dead_letter is not None or self.skip


class Hook(Protocol):
    """Settles some of a batch's items before the pipeline runs."""

    def before(self, batch: list[Work], worker: str) -> None: ...


class Poison:
    """Unparseable messages and ones delivered too often are dead-lettered, their jobs Failed."""

    def __init__(self, max_deliveries: int) -> None:
        self.max_deliveries = max_deliveries

    def before(self, batch: list[Work], worker: str) -> None:
        for w in batch:
            try:
                w.message = RequestMessage.from_json(w.delivery.body)
            except MessageError as exc:
                w.dead_letter = f"malformed request message: {exc.message}"
                w.result = ResultMessage.failed(
                    w.delivery.message_id, PoisonMessage.code, w.dead_letter, worker=worker
                )
                continue
            if w.delivery.delivery_count > self.max_deliveries:
                w.dead_letter = f"delivered {w.delivery.delivery_count - 1} times without being settled"
                w.result = ResultMessage.failed(
                    w.message.id,
                    PoisonMessage.code,
                    f"request {w.dead_letter}",
                    worker=worker,
                    traceparent=w.message.traceparent,
                )


class Deadlines:
    """A request past its deadline is not computed: its job ends DeadlineExceeded."""

    def before(self, batch: list[Work], worker: str) -> None:
        now = time.time()
        for w in batch:
            if not w.settled and w.message is not None and w.message.expired(now):
                w.result = ResultMessage.failed(
                    w.message.id,
                    DeadlineExceeded.code,
                    "the job's deadline passed before a worker could compute it",
                    worker=worker,
                    finished_at=now,
                    traceparent=w.message.traceparent,
                )


class Liveness:
    """Jobs already ended (terminated, or finished by an earlier delivery) are skipped, and so
    are jobs that no longer exist; the rest are marked Running, in the same store call
    (:meth:`StatusStore.start_jobs`). Needs the status store, so only where one is reachable.

    A job's record is created before its request message is sent (``StoreJobs.create``), so a
    message without a record is what a purge (or retention, or a failed submit) left behind:
    computing it would be for nobody. Keyed jobs get new random ids after a purge, so such a
    message never belongs to a later job either.
    """

    def __init__(self, store: StatusStore) -> None:
        self.store = store

    def before(self, batch: list[Work], worker: str) -> None:
        live = [w for w in batch if not w.settled and w.message is not None]
        if not live:
            return
        # One store call reads the statuses and marks the Pending ones Running (one round trip
        # on Redis): a terminal job is left as it was, and skipped here. Where the receive did
        # that already (StatusStore.start_on_receive), its reading is used.
        statuses: Mapping[str, JobStatus | None]
        if all(w.delivery.job_status is not None for w in live):
            statuses = {w.delivery.message_id: _status(w.delivery.job_status) for w in live}
        else:
            statuses = self.store.start_jobs((w.message.id for w in live if w.message), time.time())
        for w in live:
            assert w.message is not None
            status = statuses.get(w.message.id)
            if status is None or status.terminal:
                w.skip = True


class Tombstoned:
    """Azure: jobs terminated while queued are skipped, by their tombstones (no status store
    there; :mod:`nearline.tombstones`). Completed without a result: nothing waits for one."""

    def __init__(self, tombstones: Tombstones) -> None:
        self.tombstones = tombstones

    def before(self, batch: list[Work], worker: str) -> None:
        live = [w for w in batch if not w.settled and w.message is not None]
        if not live:
            return
        ended = self.tombstones.terminated([w.message for w in live if w.message is not None])
        for w in live:
            if w.message is not None and w.message.id in ended:
                w.skip = True


def default_hooks(
    max_deliveries: int, store: StatusStore | None, tombstones: Tombstones | None = None
) -> list[Hook]:
    """Poison and deadlines always; then what ended jobs look like where this worker runs: the
    status store's records, or (Azure) the tombstones of terminated jobs."""
    hooks: list[Hook] = [Poison(max_deliveries), Deadlines()]
    if store is not None:
        hooks.append(Liveness(store))
    if tombstones is not None:
        hooks.append(Tombstoned(tombstones))
    return hooks


__all__ = ["Deadlines", "Hook", "JobStatus", "Liveness", "Poison", "Tombstoned", "Work", "default_hooks"]


def _status(read: str | None) -> JobStatus | None:
    """A job status as a receive read it ("" or None: the record is gone)."""
    return JobStatus(read) if read else None
