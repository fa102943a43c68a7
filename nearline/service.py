"""The job service: submit, status, wait, terminate and purge over one broker and one store.

Every front door of the embedded and Redis profiles (the HTTP API, the CLI's in-process paths,
tests) goes through :class:`JobService`; none of them touches a broker or a store directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from nearline.brokers.base import Broker
from nearline.constants import MAX_QUEUE_DEPTH, REQUEST_QUEUE, RETRY_AFTER_S
from nearline.errors import BrokerError, JobGone, JobNotFound, Overloaded
from nearline.jobs import JobRecord, JobStatus
from nearline.store.base import StatusStore
from nearline.submissions import job_id_for, new_job, parse_submission, request_message

if TYPE_CHECKING:
    from nearline.pipelines.spec import Catalog


class JobService:
    """Job operations for one catalog, broker and store.

    Args:
        catalog: The pipelines a client may call (input schemas only; no models are loaded).
        broker: Where request messages go.
        store: Where job records live.
        max_queue_depth: Submissions are refused with 503 while the request queue holds more.
        max_body: Largest accepted request body in bytes.
    """

    def __init__(
        self,
        catalog: Catalog,
        broker: Broker,
        store: StatusStore,
        *,
        max_queue_depth: int = MAX_QUEUE_DEPTH,
        max_body: int = 1_048_576,
    ) -> None:
        self.catalog = catalog
        self.broker = broker
        self.store = store
        self.max_queue_depth = max_queue_depth
        self.max_body = max_body

    def submit(
        self, pipeline: str, body: bytes, idempotency_key: str | None = None
    ) -> tuple[JobRecord, bool]:
        """Validate, record and enqueue a job. Returns ``(job, created)``.

        A rejected request leaves no record and no message. With an idempotency key that was
        seen before, the existing job is returned and nothing is enqueued.
        """
        sub = parse_submission(self.catalog, pipeline, body, max_body=self.max_body)
        job_id = job_id_for(pipeline, idempotency_key)
        if idempotency_key is not None:
            existing = self.store.get(job_id)
            if existing is not None:
                return existing, False
        depth = self.broker.depth(REQUEST_QUEUE)
        if depth >= self.max_queue_depth:
            raise Overloaded(
                f"request queue holds {depth} messages (limit {self.max_queue_depth}); retry later",
                retry_after=RETRY_AFTER_S,
            )
        job, created = self.store.create(new_job(sub, job_id, idempotency_key))
        if not created:
            return job, False
        msg = request_message(job)
        try:
            self.broker.send(
                REQUEST_QUEUE, msg.to_json(), message_id=job.id, lane=job.priority, ttl_s=_ttl(job)
            )
        except Exception as exc:
            # Nothing half-written: a job whose message never made it must not linger Pending.
            self.store.delete(job.id)
            raise BrokerError(f"could not enqueue job {job.id}: {exc}") from exc
        return job, True

    def get(self, job_id: str) -> JobRecord:
        """The job's record; raises :class:`JobNotFound`."""
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return job

    async def wait(self, job_id: str, timeout: float) -> JobRecord:
        """The job's record once it is terminal, or as it is after ``timeout`` seconds.

        Wakes as soon as the store reports the job's end (no polling loop here).
        """
        fut = self.store.waiters.register(job_id)
        try:
            job = await asyncio.to_thread(self.get, job_id)
            if job.status.terminal or timeout <= 0:
                return job
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, timeout)
            return await asyncio.to_thread(self.get, job_id)
        finally:
            self.store.waiters.discard(job_id, fut)

    def terminate(self, job_id: str, reason: str = "") -> JobRecord:
        """End a job that has not ended; a job not yet taken by a worker is never scored.

        Raises:
            JobNotFound: no such job.
            JobGone: the job is already terminal (left as it is).
        """
        job = self.get(job_id)
        if job.status.terminal or not self.store.finish(job_id, JobStatus.TERMINATED, reason, time.time()):
            raise JobGone(f"job {job_id} already ended ({self.get(job_id).status.value})")
        return self.get(job_id)

    def purge(self, job_id: str) -> None:
        """Delete a job's record; raises :class:`JobNotFound`."""
        if not self.store.delete(job_id):
            raise JobNotFound(f"no job with id {job_id!r}")


def _ttl(job: JobRecord) -> float | None:
    """Seconds the request message is worth keeping: until the deadline, plus a minute so the
    worker (not the broker) is the one that reports ``DeadlineExceeded``."""
    if job.deadline is None:
        return None
    return max(job.deadline - time.time(), 0.0) + 60.0
