"""The job seam: one interface for every front door, two implementations behind it.

:class:`Jobs` is what the HTTP handlers (:mod:`nearline.http.handlers`) call: submit, get, wait,
terminate, purge. It is implemented over a broker and a status store
(:class:`nearline.store_jobs.StoreJobs`: the embedded and Redis profiles) and over Durable
Functions instances (``orchestrations.durable_jobs.DurableJobs``: Azure). Validation, job ids and
the answer to a repeated ``Idempotency-Key`` (:mod:`nearline.idempotency`) are decided here, once,
in :meth:`Jobs.submit`; an implementation only records and starts a job (:meth:`Jobs.create`),
names keyed jobs (:meth:`Jobs.keyed_id`) and reads, ends and deletes them.

Every method is a coroutine: the Durable client is asynchronous, and the store-backed
implementation moves its blocking calls off the event loop itself.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from nearline import idempotency, tracing
from nearline.callbacks import SUBMIT_RESOLVE_S, CallbackGuard, CallbackRefused, configured_allow_list
from nearline.constants import MAX_BODY_BYTES
from nearline.errors import NotSupported
from nearline.jobs import JobRecord, job_urls
from nearline.pipelines import traffic
from nearline.pipelines.traffic import Split
from nearline.submissions import Submission, new_job, parse_submission, shadow_job

if TYPE_CHECKING:
    from nearline.dead_letters import DeadLetterQueue
    from nearline.pipelines.spec import Catalog

log = logging.getLogger("nearline.jobs")


def _linked(job: JobRecord, base_url: str | None) -> JobRecord:
    """``job`` with its status URL when it has a callback (never the caller's ``?code=``)."""
    if job.callback_url is None or base_url is None:
        return job
    return replace(job, status_url=job_urls(base_url, job.id)["statusQueryGetUri"])


class Jobs(abc.ABC):
    """Job operations of one deployment of the HTTP contract (docs/api.md).

    Args:
        max_body: Largest accepted request body in bytes (413 above).
        callbacks: Where a ``callback_url`` may point; default: ``NEARLINE_CALLBACK_ALLOW`` (read
            on first use, inside a request's error handling, so a bad value is that request's
            ``500 ConfigError``) and the system resolver.
    """

    def __init__(self, *, max_body: int = MAX_BODY_BYTES, callbacks: CallbackGuard | None = None) -> None:
        self.max_body = max_body
        self._callbacks = callbacks

    @property
    def callbacks(self) -> CallbackGuard:
        """Where a ``callback_url`` may point."""
        if self._callbacks is None:
            self._callbacks = CallbackGuard(configured_allow_list())
        return self._callbacks

    @property
    @abc.abstractmethod
    def catalog(self) -> Catalog:
        """The pipelines a client may call (input schemas; no models loaded)."""

    @tracing.traced("nearline.submit")
    async def submit(
        self,
        pipeline: str,
        body: bytes,
        idempotency_key: str | None = None,
        *,
        scope: str = "",
        base_url: str | None = None,
        deployment: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """Validate a submit request, then record and start its job. Returns ``(job, created)``.

        A rejected request starts nothing. An ``Idempotency-Key`` seen before from the same
        caller, for the same pipeline, gets the existing job back and starts nothing, if the
        request is the same (:func:`nearline.idempotency.reused`).

        Args:
            pipeline: The pipeline named in the path.
            body: The request body.
            idempotency_key: The ``Idempotency-Key`` header, if any.
            scope: The caller's scope (:func:`nearline.idempotency.caller_scope`): keys of two
                scopes never meet.
            base_url: The API's base URL as the caller sees it: a job with a callback keeps its
                status URL, which a large event links to.
            deployment: The deployment the caller targets (``nearline-deployment`` header), or
                None: one is drawn by the endpoint's live split (:meth:`split`), and the job may
                be mirrored to its ``mirror`` deployments (:meth:`mirror`). A repeated key keeps
                the first request's deployment.

        Raises:
            RequestError: (4xx) the request can never succeed; the message names the problem.
                Among them, for a repeated key: IdempotencyKeyReused (422), a different request;
                Conflict (409), the first request is still being created.
            Unavailable: (503) the queue is full or unreachable; retry later.
        """
        live = await self.split(pipeline) if deployment is None else None  # targeted: no draw
        sub = parse_submission(
            self.catalog,
            pipeline,
            body,
            max_body=self.max_body,
            allow=None if self._callbacks is None else self._callbacks.allow,  # None: read when needed
            deployment=deployment,
            split=None if live is None else live.traffic,
        )
        if sub.callback_url is not None:
            await self._check_callback_names(sub.callback_url)
        key = idempotency.check_key(idempotency_key)
        if key is None:
            job, created = await self.create(_linked(new_job(sub, uuid.uuid4().hex), base_url))
        else:
            slot = idempotency.slot(scope, pipeline, key)
            job, created = await self._create_keyed(sub, slot, key, base_url)
        if not created:
            return job, False
        if live is not None and live.mirror:
            await self.mirror(job, traffic.shadows(live.mirror))
        return job, True

    async def _create_keyed(
        self, sub: Submission, slot: str, key: str, base_url: str | None
    ) -> tuple[JobRecord, bool]:
        """Create a keyed job, or answer a repeat of its key (:func:`nearline.idempotency.reused`)."""
        job = replace(
            _linked(new_job(sub, self.keyed_id(slot), key), base_url),
            idempotency_slot=slot,
            fingerprint=idempotency.fingerprint(sub),
        )
        found, created = await self.create(job)
        return (found, True) if created else (idempotency.reused(found, job), False)

    async def _check_callback_names(self, url: str) -> None:
        """Refuse a ``callback_url`` whose name resolves to a refused address (400
        ``CallbackRefused``); a lookup that takes longer than :data:`SUBMIT_RESOLVE_S` is left
        to the delivery, which checks every attempt again."""
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.to_thread(self.callbacks.check_names, url), SUBMIT_RESOLVE_S)
        except CallbackRefused as exc:
            raise CallbackRefused(f"request body: 'callback_url' {exc.message}") from None

    async def mirror(self, job: JobRecord, deployments: list[str]) -> None:
        """Create a shadow job of the live ``job`` for each of ``deployments`` (after the live
        job is queued, on the low lane). A shadow that cannot be created is logged and left out:
        the live submit never fails for it."""
        for name in deployments:
            try:
                await self.create(shadow_job(job, name))
            except Exception as exc:
                log.warning("no shadow of job %s for deployment %s: %s", job.id, name, exc)

    def keyed_id(self, slot: str) -> str:
        """The id of a new keyed job: random, for implementations that keep the slot → job map
        (:meth:`create` then returns the slot's job); Azure's overrides it."""
        return uuid.uuid4().hex

    @abc.abstractmethod
    async def create(self, job: JobRecord) -> tuple[JobRecord, bool]:
        """Record and start a validated job. A keyed job whose slot is held (or a job whose id
        exists) is not created: ``(the job holding it, False)``."""

    @abc.abstractmethod
    async def get(self, job_id: str) -> JobRecord:
        """The job's record; raises :class:`~nearline.errors.JobNotFound`."""

    @abc.abstractmethod
    async def wait(self, job_id: str, timeout: float, known: JobRecord | None = None) -> JobRecord:
        """The job's record once it has ended, or as it is after ``timeout`` seconds.

        ``known``: the record :meth:`submit` just created, when the caller waits for the job it
        submitted; an implementation may then skip reading it first.
        """

    @abc.abstractmethod
    async def terminate(self, job_id: str, reason: str = "") -> JobRecord | None:
        """End a job that has not ended; a job no worker has taken is never scored. Returns the
        job's record as it was read before (for its deployment), or None where none was read.

        Raises:
            JobNotFound: no such job.
            JobGone: the job has already ended (it is left as it is).
        """

    @abc.abstractmethod
    async def purge(self, job_id: str) -> int:
        """Delete an ended job's record (and free its key); how many were deleted.

        Raises:
            JobNotFound: no such job.
            Conflict: the job has not ended (terminate it first): what a purge would leave behind
                (a queued message) must never meet a later job.
        """

    # -- the live traffic split (docs/deployments.md) ----------------------------------------

    async def split(self, endpoint: str) -> Split:
        """The endpoint's live split: what untargeted submits are drawn from and mirrored by.

        Default: the catalog's (``pipelines.yaml``); implementations that store changes override it.

        Raises:
            UnknownPipeline: (404) no such endpoint.
        """
        return self.catalog.get(endpoint).split

    async def set_split(self, endpoint: str, split: Split, reason: str = "") -> Split:
        """Make ``split`` (checked: :func:`nearline.pipelines.traffic.check_split`) the endpoint's
        live split, recording it in its history with ``reason``; returns it.

        Raises:
            UnknownPipeline: (404) no such endpoint.
            NotSupported: (404) this implementation cannot change traffic (the default).
        """
        raise NotSupported("changing traffic is not supported by this front door")

    async def split_history(self, endpoint: str) -> list[dict[str, Any]]:
        """The endpoint's split changes, newest first: ``{"at": iso8601, "traffic", "mirror",
        "reason"}`` each. Default: none."""
        return []

    async def compare(self, endpoint: str, window_s: int) -> dict[str, Any]:
        """The endpoint's deployments compared over the last ``window_s`` seconds
        (:func:`nearline.outcomes.compare`: ``GET /api/endpoints/{name}/compare``).

        Raises:
            UnknownPipeline: (404) no such endpoint.
            NotSupported: (404) this implementation keeps no outcomes (the default: memory://).
        """
        raise NotSupported(
            "comparing deployments needs a store that keeps outcomes (SQLite or Redis); this one keeps none"
        )

    async def health(self) -> dict[str, Any]:
        """Fields this implementation adds to ``GET /api/health`` (it may raise when broken)."""
        self.catalog  # noqa: B018 - a configuration that does not load is not healthy
        return {}

    async def queue_depth(self) -> int | None:
        """Messages in the request queue, where this implementation can count them cheaply."""
        return None

    async def recent(self, limit: int = 50) -> list[JobRecord]:
        """The ``limit`` most recently created jobs, newest first (the dashboard); default: none."""
        return []

    def dead_letters(self) -> DeadLetterQueue | None:
        """The request queue's dead-letter tools (the admin API, the dashboard), or None where
        this front door cannot reach them (Azure: Service Bus's dead-letter queue is out of reach
        of the Function app; use ``nearline dlq`` there)."""
        return None
