"""The job seam: one interface for every front door, two implementations behind it.

:class:`Jobs` is what the HTTP handlers (:mod:`nearline.http.handlers`) call: submit, get, wait,
terminate, purge. It is implemented over a broker and a status store
(:class:`nearline.store_jobs.StoreJobs`: the embedded and Redis profiles) and over Durable
Functions instances (``orchestrations.durable_jobs.DurableJobs``: Azure). Validation and job ids
are decided here, once, in :meth:`Jobs.submit`; an implementation only records and starts a job
(:meth:`Jobs.create`) and reads, ends and deletes it.

Every method is a coroutine: the Durable client is asynchronous, and the store-backed
implementation moves its blocking calls off the event loop itself.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

from nearline.constants import MAX_BODY_BYTES
from nearline.jobs import JobRecord
from nearline.submissions import job_id_for, new_job, parse_submission

if TYPE_CHECKING:
    from nearline.pipelines.spec import Catalog


class Jobs(abc.ABC):
    """Job operations of one deployment of the HTTP contract (docs/api.md).

    Args:
        max_body: Largest accepted request body in bytes (413 above).
    """

    def __init__(self, *, max_body: int = MAX_BODY_BYTES) -> None:
        self.max_body = max_body

    @property
    @abc.abstractmethod
    def catalog(self) -> Catalog:
        """The pipelines a client may call (input schemas; no models loaded)."""

    async def submit(
        self, pipeline: str, body: bytes, idempotency_key: str | None = None
    ) -> tuple[JobRecord, bool]:
        """Validate a submit request, then record and start its job. Returns ``(job, created)``.

        A rejected request starts nothing. With an ``Idempotency-Key`` that was seen before,
        the existing job is returned and nothing new starts.

        Raises:
            RequestError: (4xx) the request can never succeed; the message names the problem.
            Unavailable: (503) the queue is full or unreachable; retry later.
        """
        sub = parse_submission(self.catalog, pipeline, body, max_body=self.max_body)
        job = new_job(sub, job_id_for(pipeline, idempotency_key), idempotency_key)
        return await self.create(job)

    @abc.abstractmethod
    async def create(self, job: JobRecord) -> tuple[JobRecord, bool]:
        """Record and start a validated job; a job with the same id is returned as it is."""

    @abc.abstractmethod
    async def get(self, job_id: str) -> JobRecord:
        """The job's record; raises :class:`~nearline.errors.JobNotFound`."""

    @abc.abstractmethod
    async def wait(self, job_id: str, timeout: float) -> JobRecord:
        """The job's record once it has ended, or as it is after ``timeout`` seconds."""

    @abc.abstractmethod
    async def terminate(self, job_id: str, reason: str = "") -> None:
        """End a job that has not ended; a job no worker has taken is never scored.

        Raises:
            JobNotFound: no such job.
            JobGone: the job has already ended (it is left as it is).
        """

    @abc.abstractmethod
    async def purge(self, job_id: str) -> int:
        """Delete a job's record; how many were deleted. Raises :class:`JobNotFound`."""

    async def health(self) -> dict[str, Any]:
        """Fields this implementation adds to ``GET /api/health`` (it may raise when broken)."""
        self.catalog  # noqa: B018 - a configuration that does not load is not healthy
        return {}

    async def queue_depth(self) -> int | None:
        """Messages in the request queue, where this implementation can count them cheaply."""
        return None
