"""The job seam over Durable Functions instances: the Azure profile.

A job is a ``score_job`` orchestration instance whose id is the job id; Durable keeps its state,
so there is no status store. Reading a job is one ``get_status`` (one read of the task hub's
Instances table); waiting polls it, starting fast for short jobs and backing off to a bound that
keeps a long-poll's extra latency under a quarter second.

Queue depth: a new job is refused with 503 while the request queues hold
``NEARLINE_MAX_QUEUE_DEPTH`` messages, by a cached reading of their runtime properties
(:mod:`orchestrations.queue_depth`: no management call per submit).

Terminate: the job's tombstone is recorded (:mod:`nearline.tombstones`) before its instance is
terminated, so that workers drop its request if it is still queued: a job terminated before a
worker took it is never computed, as on every profile.

Idempotency: there is no store to map a key to a job, so a keyed job's instance id is an HMAC of
the key's slot under the app's secret (``NEARLINE_SECRET``, :func:`nearline.idempotency.keyed_id`),
and the request's fingerprint travels in the orchestrator input, where a repeat compares it.

Traffic: an endpoint's live split is its ``endpoint_split`` Durable Entity's state
(:mod:`orchestrations.split_entity`), read at most once a second per process
(:mod:`orchestrations.split_readings`); a change signals the entity. The deployment is drawn
here, in the HTTP starter, and travels in the orchestration's input: the orchestrator never reads
the entity, so its replays cannot draw differently. A mirrored call's shadow job is an instance of
its own whose input carries ``shadow_of`` and no callback (:func:`orchestrator_input`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from nearline.constants import MAX_BODY_BYTES
from nearline.errors import (
    BrokerError,
    ConfigError,
    Conflict,
    JobGone,
    JobNotFound,
    NearlineError,
    Unavailable,
)
from nearline.idempotency import MIN_SECRET_CHARS, keyed_id
from nearline.jobs import JobRecord
from nearline.pipelines.spec import Catalog
from nearline.pipelines.traffic import Split
from nearline.service import Jobs
from nearline.settings import SECRET, FunctionsSettings
from orchestrations.azure_status import (
    SCORING_ORCHESTRATOR,
    DurableClient,
    is_terminal,
    job_record,
    job_status,
    orchestrator_input,
)
from orchestrations.delivery import DELIVERY_ORCHESTRATOR, terminated_input
from orchestrations.split_readings import EntityClient, SplitReadings, entity_id
from orchestrations.split_state import changed, history, initial_state, state_split

if TYPE_CHECKING:
    from nearline.tombstones import Tombstones
    from orchestrations.queue_depth import QueueDepth

log = logging.getLogger("nearline.azure.jobs")
POLL_FIRST_S = 0.05
POLL_MAX_S = 0.25


class DurableJobs(Jobs):
    """Jobs as Durable orchestration instances, through one request's durable client.

    Args:
        client: The request's durable client (None on routes bound without one: they read only
            the catalog).
        catalog: Loads the pipelines catalog (on first use, inside the handler's error handling).
        secret: Reads the installation's secret (default: ``NEARLINE_SECRET``), on use.
        depth: The request queues' cached depth and limit (None: no shedding).
        tombstones: Opens where terminated jobs are recorded for the workers (None: nowhere).
        splits: The process's readings of the endpoints' live splits (default: this object's own).
    """

    def __init__(
        self,
        client: DurableClient | None,
        catalog: Callable[[], Catalog],
        *,
        max_body: int = MAX_BODY_BYTES,
        secret: Callable[[], str | None] = lambda: FunctionsSettings.from_env().secret,
        depth: QueueDepth | None = None,
        tombstones: Callable[[], Tombstones | None] = lambda: None,
        splits: SplitReadings | None = None,
    ) -> None:
        super().__init__(max_body=max_body)
        self._client = client
        self._catalog = catalog
        self._secret = secret
        self._depth = depth
        self._tombstones = tombstones
        self._splits = splits if splits is not None else SplitReadings()

    @property
    def client(self) -> DurableClient:
        if self._client is None:
            raise NearlineError("this function is bound without a durable client")
        return self._client

    @property
    def catalog(self) -> Catalog:
        return self._catalog()

    def keyed_id(self, slot: str) -> str:
        return keyed_id(self.secret(), slot)

    def secret(self) -> str:
        """The installation's secret.

        Raises:
            ConfigError: it is not set, or too short (the message never shows it).
        """
        secret = self._secret() or ""
        if len(secret) < MIN_SECRET_CHARS:
            state = "is not set" if not secret else f"is shorter than {MIN_SECRET_CHARS} characters"
            raise ConfigError(
                f"{SECRET.name} {state}: requests with an Idempotency-Key need it (the secret their"
                " job ids are made with; docs/azure.md, Settings)"
            )
        return secret

    async def health(self) -> dict[str, Any]:
        fields = await super().health()
        self.secret()  # keyed submissions would fail: not healthy
        depth = await self.queue_depth()
        return fields if depth is None else {**fields, "queueDepth": depth}

    async def create(self, job: JobRecord) -> tuple[JobRecord, bool]:
        # Durable's start_new silently replaces a finished instance with the same id: look first.
        if job.idempotency_slot is not None:
            existing = await self.client.get_status(job.id, show_input=True)
            if existing:
                return job_record(existing), False  # a repeat: never refused for depth
        if self._depth is not None:
            await self._depth.admit()
        try:
            await self.client.start_new(SCORING_ORCHESTRATOR, job.id, orchestrator_input(job))
        except Exception as exc:  # the durable client raises bare Exceptions with the host's message
            # With an Idempotency-Key, a concurrent twin request may have started the same
            # instance between our lookup and this call: the extension refuses to replace it.
            if job.idempotency_slot is not None:
                twin = await self.client.get_status(job.id, show_input=True)
                if twin:
                    return job_record(twin), False
            raise BrokerError(f"could not start job {job.id}: {exc}") from exc
        return job, True

    async def get(self, job_id: str) -> JobRecord:
        return await self.wait(job_id, 0.0)

    async def wait(self, job_id: str, timeout: float, known: JobRecord | None = None) -> JobRecord:
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        pause = POLL_FIRST_S
        while True:
            status = await self.client.get_status(job_id, show_input=True)
            if not status:
                raise JobNotFound(f"no job with id {job_id!r}")
            remaining = until - loop.time()
            if is_terminal(status) or remaining <= 0:
                return job_record(status)
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, POLL_MAX_S)

    async def terminate(self, job_id: str, reason: str = "") -> None:
        status = await self.client.get_status(job_id, show_input=True)
        if not status:
            raise JobNotFound(f"no job with id {job_id!r}")
        if is_terminal(status):
            raise JobGone(f"job {job_id} already ended ({job_record(status).status.value})")
        tombstones = self._tombstones()
        if tombstones is not None:  # first: a failure here leaves the job as it was (503, retry)
            await asyncio.to_thread(tombstones.record, job_id, job_record(status).deadline)
        await self.client.terminate(job_id, reason)
        await self._call_back_terminated(job_record(status), reason)

    async def _call_back_terminated(self, job: JobRecord, reason: str) -> None:
        """A terminated instance never runs again, so a terminated job's callback is delivered
        by an orchestration of its own (``orchestrations/delivery.py``)."""
        if not job.callback_url:
            return
        instance = f"{job.id}-callback"
        try:
            await self.client.start_new(
                DELIVERY_ORCHESTRATOR, instance, terminated_input(job, reason, time.time())
            )
        except Exception as exc:  # the job is terminated all the same; say what was lost
            log.error("job %s terminated, but its callback could not be started: %s", job.id, exc)

    async def split(self, endpoint: str) -> Split:
        pipeline = self.catalog.get(endpoint)  # UnknownPipeline (404) first
        if self._client is None:  # a route bound without a client: the file's split
            return pipeline.split
        state = await self._splits.state(self._entities, endpoint)
        return pipeline.split if state is None else state_split(state, pipeline)

    async def set_split(self, endpoint: str, split: Split, reason: str = "") -> Split:
        """Signal the endpoint's entity to hold ``split``; the entity checks it again and applies
        it (Durable runs its operations one at a time), and this process reads it at once."""
        pipeline = self.catalog.get(endpoint)
        current = await self._splits.state(self._entities, endpoint)
        try:
            await self._entities.signal_entity(
                entity_id(endpoint), "set", {**split.document(), "reason": reason}
            )
        except Exception as exc:  # the durable client raises bare Exceptions with the host's message
            raise Unavailable(f"could not change the traffic of endpoint '{endpoint}': {exc}") from exc
        state = current if current is not None else initial_state(pipeline)
        self._splits.remember(endpoint, changed(state, split, reason, datetime.now(UTC)))
        return split

    async def split_history(self, endpoint: str) -> list[dict[str, Any]]:
        self.catalog.get(endpoint)
        if self._client is None:
            return []
        return history(await self._splits.state(self._entities, endpoint))

    @property
    def _entities(self) -> EntityClient:
        # The host's DurableOrchestrationClient is both: the job and the entity operations.
        return cast("EntityClient", self.client)

    async def queue_depth(self) -> int | None:
        return await self._depth.current() if self._depth is not None else None

    async def purge(self, job_id: str) -> int:
        status = await self.client.get_status(job_id, show_input=True)
        if not status:
            raise JobNotFound(f"no job with id {job_id!r}")
        if is_terminal(status) and not job_status(status.runtime_status).terminal:
            raise Conflict(f"job {job_id} has ended and its callback is being delivered: purge it after")
        if not is_terminal(status):
            state = job_status(status.runtime_status).value
            raise Conflict(f"job {job_id} is {state}: terminate it first, or wait for it to end")
        result: Any = await self.client.purge_instance_history(job_id)
        deleted = int(getattr(result, "instances_deleted", 0) or 0)
        if not deleted:
            raise JobNotFound(f"no job with id {job_id!r}")
        return deleted
