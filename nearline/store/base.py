"""The status-store seam: where job records live between submit and purge.

Guarantees every backend gives (checked by ``tests/test_store.py`` on each):

* ``create`` is idempotent on the job id: a second create returns the existing record.
* One job per idempotency slot (``JobRecord.idempotency_slot``, :mod:`nearline.idempotency`):
  ``create`` of a job whose slot is held returns the holder, atomically with the check. Deleting
  a record (``delete``, ``purge_terminal``, a backend's own expiry) frees its slot.
* Transitions are compare-and-set: ``mark_running`` only moves Pending → Running;
  ``finish`` only moves a non-terminal job to a terminal state and returns False otherwise,
  so a job never has two different results.
* Every terminal transition made through this store notifies :attr:`waiters` and the
  :meth:`on_finish` listeners, and those of :meth:`on_callback` when it wrote a callback
  delivery (the local lifecycle wakes its callback dispatcher from there).
* The outbox: ``finish`` of a job with a ``callback_url`` writes its :class:`CallbackDelivery`
  in the same transaction (and sets ``customStatus.callback`` to Pending), so a job's end and
  its callback are never one without the other, whatever process dies when. ``claim_deliveries``
  leases due deliveries, so that dispatchers of several replicas never make the same attempt at
  once; ``settle_delivery`` (with the claim's token) reschedules one or ends it, and records its
  state in the job's ``customStatus.callback``. A delivery whose job record is gone is
  abandoned by the dispatcher.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nearline.brokers.base import Broker, Delivery
from nearline.constants import RETRY_AFTER_S
from nearline.errors import Overloaded
from nearline.jobs import JobRecord, JobStatus
from nearline.outcomes import OutcomeLog
from nearline.waiters import Waiters


@dataclass(frozen=True)
class CallbackDelivery:
    """A claimed entry of the outbox: one callback of one ended job.

    Attributes:
        job_id: The job (one delivery per job: a job ends once).
        url: Its ``callback_url``.
        created: When the job ended; the delivery's age counts from here.
        attempts: Attempts settled so far.
        token: The claim's; :meth:`StatusStore.settle_delivery` needs it.
    """

    job_id: str
    url: str
    created: float
    attempts: int
    token: str


@dataclass(frozen=True)
class Enqueue:
    """A new job's request message, for :meth:`StatusStore.create_enqueued`.

    Attributes:
        broker: Where it goes.
        queue: The request queue.
        body: The message (its id is the job's).
        lane: Its priority lane.
        ttl_s: How long it is worth keeping, or None.
        max_depth: The job is refused while the queue holds this many messages or more.
    """

    broker: Broker
    queue: str
    body: bytes
    lane: str
    ttl_s: float | None
    max_depth: int

    def full(self, depth: int) -> Overloaded:
        """The refusal of a job while the queue holds ``depth`` messages."""
        return Overloaded(
            f"request queue holds {depth} messages (limit {self.max_depth}); retry later",
            retry_after=RETRY_AFTER_S,
        )


@dataclass(frozen=True)
class Settle:
    """A worker's computed batch, for :meth:`StatusStore.settle_ended`.

    Attributes:
        broker: The broker the requests came from and the results go to.
        queue: The response queue.
        results: Each result message, ``(message id, body)``.
        ends: Each result's job end, ``(job id, status, output)``, in ``results``' order.
        timings: The per-step timings of the jobs that have them, by job id.
        deliveries: The request messages to complete.
        now: The jobs' end (their records' ``updated``).
    """

    broker: Broker
    queue: str
    results: Sequence[tuple[str, bytes]]
    ends: Sequence[tuple[str, JobStatus, Any]]
    timings: Mapping[str, dict[str, float]]
    deliveries: Sequence[Delivery]
    now: float


class StatusStore(abc.ABC):
    """Job records. Thread-safe."""

    url: str = ""

    def __init__(self) -> None:
        self.waiters = Waiters()
        self._listeners: list[Callable[[str], None]] = []
        self._callback_listeners: list[Callable[[str], None]] = []

    def on_finish(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener(job_id)`` after each terminal transition this store instance makes.

        Returns a function that removes the listener. Listeners run on the finishing thread:
        keep them short (hand slow work to a pool).
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def on_callback(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener(job_id)`` after each terminal transition this store instance makes
        that put the job's callback in the outbox (the local lifecycle wakes its callback
        dispatcher from here, so a job without a ``callback_url`` costs the outbox no look).

        Returns a function that removes the listener. As :meth:`on_finish`'s, on the finishing
        thread.
        """
        self._callback_listeners.append(listener)
        return lambda: self._callback_listeners.remove(listener)

    def _finished(self, job_id: str, callback: bool = True) -> None:
        """Backends call this after a successful terminal transition; ``callback``: whether it
        wrote a callback delivery (a backend that cannot tell leaves it True)."""
        self.waiters.notify(job_id)
        for listener in list(self._listeners):
            listener(job_id)
        if callback:
            for listener in list(self._callback_listeners):
                listener(job_id)

    @abc.abstractmethod
    def create(self, job: JobRecord) -> tuple[JobRecord, bool]:
        """Insert ``job``; when its slot is held or its id exists, return ``(holder, False)``."""

    def create_enqueued(self, job: JobRecord, enqueue: Enqueue) -> tuple[JobRecord, bool] | None:
        """:meth:`create` and send the job's request message in one atomic step, where this
        store can with ``enqueue.broker`` (Redis, on the broker's own database: one round trip
        instead of three, the depth check, the record, the message; SQLite, on the broker's
        file: one transaction). None where it cannot: the
        caller (``StoreJobs.create_now``) then takes the steps one by one.

        A held slot or id is answered as by :meth:`create`, before the depth is checked.

        Raises:
            Overloaded: The queue holds ``enqueue.max_depth`` messages or more (nothing written).
            BrokerError: Redis failed (nothing written).
        """
        return None

    def creates_on_loop(self, broker: Broker) -> bool:
        """Whether :meth:`create_enqueued_on_loop` can run with ``broker``: Redis, on the
        broker's own database. Elsewhere the caller runs :meth:`create_enqueued` on a thread."""
        return False

    async def create_enqueued_on_loop(self, job: JobRecord, enqueue: Enqueue) -> tuple[JobRecord, bool]:
        """:meth:`create_enqueued` awaited on the running event loop, with no hop to a thread
        (:mod:`nearline.brokers.redis_loop`), where :meth:`creates_on_loop` the broker."""
        raise NotImplementedError(f"{type(self).__name__} cannot create jobs on an event loop")

    def start_on_receive(self, broker: Broker, queue: str) -> bool:
        """Have ``broker``'s receives from ``queue`` (the request queue) also start the jobs
        they lease, where this store can (Redis, on the broker's own database:
        :mod:`nearline.store.redis_receive`; SQLite, on the broker's file: in the lease's
        transaction): each delivery then carries its job's status as it was
        (``Delivery.job_status``) and the job is Running, so the worker's liveness check needs
        no call of its own (one round trip, or one commit, fewer per batch). False where it
        cannot: the worker calls :meth:`start_jobs`."""
        return False

    def settles_with(self, broker: Broker) -> bool:
        """Whether :meth:`settle_ended` can run with ``broker``: Redis, on the broker's own
        database (:mod:`nearline.store.redis_settle`)."""
        return False

    def settle_ended(self, settle: Settle) -> list[Delivery]:
        """A worker's batch as one atomic step, where :meth:`settles_with` its broker: send the
        result messages, :meth:`finish_many` their jobs, then complete the request messages,
        in one round trip; the lifecycle then finds the jobs ended. A job's end reaches
        long-polls one hop sooner (the worker's, not the lifecycle's). Elsewhere the worker
        sends the results and the lifecycle ends the jobs.

        Returns the deliveries whose lease was lost (left unchanged), as
        ``Broker.complete_many``. Calling it again after a failure is harmless (sends are
        idempotent, ends compare-and-set).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot settle a worker's batch with its broker")

    @abc.abstractmethod
    def get(self, job_id: str) -> JobRecord | None:
        """The record, or None."""

    @abc.abstractmethod
    def keyed(self, slot: str) -> JobRecord | None:
        """The record of the job holding idempotency slot ``slot``, or None."""

    @abc.abstractmethod
    def mark_enqueued(self, job_id: str) -> bool:
        """Record that the job's request message was sent; False (and nothing created) if absent."""

    @abc.abstractmethod
    def mark_running(self, job_ids: Iterable[str], now: float) -> None:
        """Move those of ``job_ids`` that are Pending to Running."""

    @abc.abstractmethod
    def finish(
        self, job_id: str, status: JobStatus, output: Any, now: float, timings: dict[str, float] | None = None
    ) -> bool:
        """Move a non-terminal job to terminal ``status``; False if absent or already terminal.

        ``timings`` (a worker's per-step milliseconds) is kept on the ended record.
        """

    def finish_many(
        self,
        ends: Sequence[tuple[str, JobStatus, Any]],
        now: float,
        timings: Mapping[str, dict[str, float]] | None = None,
    ) -> list[bool]:
        """:meth:`finish` each ``(job_id, status, output)``; each one's answer, in order.
        ``timings``: the per-step timings of those jobs that have them, by job id.

        The lifecycle ends a received batch of results with one call; a backend that can do
        it in one transaction (or round trip) overrides this.
        """
        found = timings or {}
        return [
            self.finish(job_id, status, output, now, found.get(job_id)) for job_id, status, output in ends
        ]

    @abc.abstractmethod
    def delete(self, job_id: str) -> bool:
        """Purge one record; False if there was none."""

    @abc.abstractmethod
    def overdue(self, now: float, limit: int = 500) -> list[str]:
        """Ids of non-terminal jobs whose deadline is at or before ``now``."""

    @abc.abstractmethod
    def purge_terminal(self, updated_before: float) -> int:
        """Delete terminal records last updated before ``updated_before``; how many."""

    @abc.abstractmethod
    def claim_deliveries(self, now: float, lease_s: float, limit: int) -> list[CallbackDelivery]:
        """Lease up to ``limit`` deliveries due at ``now`` (oldest due first) for ``lease_s``.

        A leased delivery is not due again until its lease ends: a dispatcher that dies while
        sending leaves it to be claimed again then.
        """

    @abc.abstractmethod
    def settle_delivery(
        self, delivery: CallbackDelivery, callback: dict[str, Any], next_due: float | None
    ) -> bool:
        """End an attempt: due again at ``next_due``, or out of the outbox when None.

        Sets the job's ``custom_status`` to ``{"callback": callback}`` and the delivery's
        attempts to ``callback["attempts"]``. False (nothing changed) when the claim's lease
        was lost: another dispatcher has the delivery now.
        """

    @abc.abstractmethod
    def recent(self, limit: int = 50) -> list[JobRecord]:
        """The ``limit`` most recently created records, newest first (the dashboard's list)."""

    def outcomes(self) -> OutcomeLog | None:
        """The log of ended jobs' outcomes this store writes as it ends them
        (:mod:`nearline.outcomes`), or None where it keeps none."""
        return None

    def statuses(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        """Current status of each id that exists (workers skip Terminated jobs with this)."""
        out = {}
        for job_id in job_ids:
            job = self.get(job_id)
            if job is not None:
                out[job_id] = job.status
        return out

    def start_jobs(self, job_ids: Iterable[str], now: float) -> dict[str, JobStatus]:
        """:meth:`statuses` and :meth:`mark_running` of the Pending ones, as one step where the
        backend can (one script on Redis, one transaction on SQLite): the worker's liveness
        check before a batch. Returns each existing job's status as it was before the call
        (a Pending one is Running afterwards; a terminal one is left as it was).
        """
        found = self.statuses(job_ids)
        pending = [job_id for job_id, status in found.items() if status is JobStatus.PENDING]
        if pending:
            self.mark_running(pending, now)
        return found

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
