"""The job seam over a broker and a status store: the embedded and Redis profiles.

A job is a record in the store and a message on the request queue; the lifecycle
(:mod:`nearline.lifecycle`) ends it from the response queue. Blocking store and broker calls run
in a worker thread, so the event loop of the HTTP server never waits on a disk or a socket.

The record is always created before its message is sent, so a worker that finds no record for a
message knows it for what a purge left behind (:class:`nearline.worker.hooks.Liveness`). Keyed
jobs get random ids too: the store maps the key's slot to the job, and a purge frees the slot, so
a later request with the key is a new job with a new id.

The live traffic split (:meth:`split`) is ``pipelines.yaml``'s until it is changed
(:meth:`set_split`); a change is kept in the split store beside the status store
(:mod:`nearline.splits`) and read through a cache of at most half a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from nearline import tracing
from nearline.brokers.base import Broker
from nearline.callbacks import CallbackGuard
from nearline.constants import MAX_BODY_BYTES, MAX_QUEUE_DEPTH, REQUEST_QUEUE
from nearline.dead_letters import DeadLetterQueue
from nearline.errors import BrokerError, ConfigError, Conflict, JobGone, JobNotFound, RequestError
from nearline.jobs import JobRecord, JobStatus
from nearline.outcomes import compare as compare_outcomes
from nearline.pipelines.traffic import Split, check_split
from nearline.service import Jobs
from nearline.splits import splits_for
from nearline.splits.base import Change
from nearline.splits.live import LiveSplits
from nearline.store.base import Enqueue, StatusStore
from nearline.submissions import request_message

if TYPE_CHECKING:
    from nearline.pipelines.spec import Catalog


class StoreJobs(Jobs):
    """Jobs kept in ``store`` and queued on ``broker``.

    Args:
        catalog: The pipelines a client may call.
        broker: Where request messages go.
        store: Where job records live.
        max_queue_depth: Submissions are refused with 503 while the request queue holds more.
        max_body: Largest accepted request body in bytes.
        callbacks: Where a ``callback_url`` may point (see :class:`~nearline.service.Jobs`).
    """

    def __init__(
        self,
        catalog: Catalog,
        broker: Broker,
        store: StatusStore,
        *,
        max_queue_depth: int = MAX_QUEUE_DEPTH,
        max_body: int = MAX_BODY_BYTES,
        callbacks: CallbackGuard | None = None,
    ) -> None:
        super().__init__(max_body=max_body, callbacks=callbacks)
        self._catalog = catalog
        self.broker = broker
        self.store = store
        self.max_queue_depth = max_queue_depth
        self.splits = LiveSplits(splits_for(store))  # changed splits: kept beside the records

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def use_catalog(self, catalog: Catalog) -> None:
        """Answer with ``catalog`` from now on (``nearline serve --reload``, once its workers
        serve it)."""
        self._catalog = catalog

    async def create(self, job: JobRecord) -> tuple[JobRecord, bool]:
        """:meth:`create_now`, on a thread; where the store can (Redis, on the broker's
        database), its one atomic step awaited on the event loop instead (no thread hop:
        :mod:`nearline.brokers.redis_loop`)."""
        with tracing.span("nearline.enqueue", job):
            if self.store.creates_on_loop(self.broker):
                return await self.store.create_enqueued_on_loop(job, self._enqueue(job))
            return await asyncio.to_thread(self.create_now, job)

    def create_now(self, job: JobRecord) -> tuple[JobRecord, bool]:
        """:meth:`create`, blocking the calling thread (for callers without an event loop).

        A keyed job's record is created claimed (``enqueued=False``) and marked enqueued once its
        message is sent: until then a repeat of its key gets 409, never a job that may not run.
        A repeat is not refused for queue depth. Where the store can, all of it is one atomic
        step (:meth:`~nearline.store.base.StatusStore.create_enqueued`).
        """
        enqueue = self._enqueue(job)
        at_once = self.store.create_enqueued(job, enqueue)
        if at_once is not None:
            return at_once
        depth = self.broker.depth(REQUEST_QUEUE)
        if depth >= self.max_queue_depth:
            existing = self.store.keyed(job.idempotency_slot) if job.idempotency_slot else None
            if existing is not None:
                return existing, False
            raise enqueue.full(depth)
        keyed = job.idempotency_slot is not None
        found, created = self.store.create(replace(job, enqueued=False) if keyed else job)
        if not created:
            return found, False
        try:
            self.broker.send(
                REQUEST_QUEUE, enqueue.body, message_id=job.id, lane=job.priority, ttl_s=enqueue.ttl_s
            )
        except Exception as exc:
            # Nothing half-written: a job whose message never made it must not linger Pending.
            self.store.delete(job.id)
            raise BrokerError(f"could not enqueue job {job.id}: {exc}") from exc
        if keyed:
            self.store.mark_enqueued(job.id)
        return job, True

    def _enqueue(self, job: JobRecord) -> Enqueue:
        """``job``'s request message, stamped now (its ``enqueued_at``)."""
        body = tracing.stamped(request_message(job)).to_json()
        return Enqueue(self.broker, REQUEST_QUEUE, body, job.priority, _ttl(job), self.max_queue_depth)

    async def get(self, job_id: str) -> JobRecord:
        return await asyncio.to_thread(self._get, job_id)

    def _get(self, job_id: str) -> JobRecord:
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return job

    async def wait(self, job_id: str, timeout: float, known: JobRecord | None = None) -> JobRecord:
        """Wakes as soon as the store reports the job's end (no polling loop here).

        ``known``: the job as its submit just created it. Where the store hears every end
        since then (:meth:`~nearline.waiters.Waiters.hears_every_end`: Redis), the read before
        the wait is skipped: an end in between is remembered by the waiters. Elsewhere, and for
        any other job, the record is read after registering.
        """
        waiters = self.store.waiters
        fut = waiters.register(job_id)
        try:
            fresh = known is not None and known.id == job_id and waiters.hears_every_end(known.created)
            job = known if fresh and known is not None else await self.get(job_id)
            if job.status.terminal or timeout <= 0:
                return job
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, timeout)
            handed = self.store.waiters.take(job_id)  # the end came with its record: no read
            return handed if handed is not None else await self.get(job_id)
        finally:
            self.store.waiters.discard(job_id, fut)

    async def terminate(self, job_id: str, reason: str = "") -> JobRecord:
        return await asyncio.to_thread(self._terminate, job_id, reason)

    def _terminate(self, job_id: str, reason: str) -> JobRecord:
        job = self._get(job_id)
        if job.status.terminal or not self.store.finish(job_id, JobStatus.TERMINATED, reason, time.time()):
            raise JobGone(f"job {job_id} already ended ({self._get(job_id).status.value})")
        return job

    async def purge(self, job_id: str) -> int:
        return await asyncio.to_thread(self._purge, job_id)

    def _purge(self, job_id: str) -> int:
        # An ended job stays ended, so checking first and deleting after is safe.
        job = self._get(job_id)
        if not job.status.terminal:
            raise Conflict(f"job {job_id} is {job.status.value}: terminate it first, or wait for it to end")
        if not self.store.delete(job_id):
            raise JobNotFound(f"no job with id {job_id!r}")
        return 1

    async def split(self, endpoint: str) -> Split:
        pipeline = self.catalog.get(endpoint)
        cached = self.splits.fresh(pipeline)  # the common case: no thread, no I/O
        return cached if cached is not None else await asyncio.to_thread(self.splits.read, pipeline)

    async def set_split(self, endpoint: str, split: Split, reason: str = "") -> Split:
        pipeline = self.catalog.get(endpoint)
        where = f"endpoint '{endpoint}'"
        try:  # the one way in (HTTP, CLI, dashboard): checked here whoever calls
            checked = check_split(where, split.document(), [d.name for d in pipeline.deployments])
        except ConfigError as exc:
            raise RequestError(exc.message) from None
        await asyncio.to_thread(self.splits.save, Change(endpoint, checked, reason, time.time()))
        return checked

    async def split_history(self, endpoint: str) -> list[dict[str, Any]]:
        self.catalog.get(endpoint)
        changes = await asyncio.to_thread(self.splits.store.history, endpoint)
        return [change.document() for change in changes]

    async def health(self) -> dict[str, Any]:
        return {"queueDepth": await self.queue_depth()}

    async def queue_depth(self) -> int | None:
        return await asyncio.to_thread(self.broker.depth, REQUEST_QUEUE)

    async def compare(self, endpoint: str, window_s: int) -> dict[str, Any]:
        names = [d.name for d in self.catalog.get(endpoint).deployments]
        log = self.store.outcomes()
        return await asyncio.to_thread(compare_outcomes, log, endpoint, names, window_s, time.time())

    async def recent(self, limit: int = 50) -> list[JobRecord]:
        jobs = await asyncio.to_thread(self.store.recent, limit)
        return [j for j in jobs if j.shadow_of is None]  # a shadow's id is never handed out

    def dead_letters(self) -> DeadLetterQueue:
        return DeadLetterQueue(self.broker, self.store, REQUEST_QUEUE)


def _ttl(job: JobRecord) -> float | None:
    """Seconds the request message is worth keeping: until the deadline, plus a minute so the
    worker (not the broker) is the one that reports ``DeadlineExceeded``."""
    if job.deadline is None:
        return None
    return max(job.deadline - time.time(), 0.0) + 60.0
