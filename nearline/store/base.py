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
  :meth:`on_finish` listeners (the local lifecycle posts callbacks from there, so a job ended by
  a result, a deadline or a terminate request is announced the same way).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from typing import Any

from nearline.jobs import JobRecord, JobStatus
from nearline.waiters import Waiters


class StatusStore(abc.ABC):
    """Job records. Thread-safe."""

    url: str = ""

    def __init__(self) -> None:
        self.waiters = Waiters()
        self._listeners: list[Callable[[str], None]] = []

    def on_finish(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener(job_id)`` after each terminal transition this store instance makes.

        Returns a function that removes the listener. Listeners run on the finishing thread:
        keep them short (hand slow work to a pool).
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _finished(self, job_id: str) -> None:
        """Backends call this after a successful terminal transition."""
        self.waiters.notify(job_id)
        for listener in list(self._listeners):
            listener(job_id)

    @abc.abstractmethod
    def create(self, job: JobRecord) -> tuple[JobRecord, bool]:
        """Insert ``job``; when its slot is held or its id exists, return ``(holder, False)``."""

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
    def finish(self, job_id: str, status: JobStatus, output: Any, now: float) -> bool:
        """Move a non-terminal job to terminal ``status``; False if absent or already terminal."""

    @abc.abstractmethod
    def delete(self, job_id: str) -> bool:
        """Purge one record; False if there was none."""

    @abc.abstractmethod
    def overdue(self, now: float, limit: int = 500) -> list[str]:
        """Ids of non-terminal jobs whose deadline is at or before ``now``."""

    @abc.abstractmethod
    def purge_terminal(self, updated_before: float) -> int:
        """Delete terminal records last updated before ``updated_before``; how many."""

    def statuses(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        """Current status of each id that exists (workers skip Terminated jobs with this)."""
        out = {}
        for job_id in job_ids:
            job = self.get(job_id)
            if job is not None:
                out[job_id] = job.status
        return out

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
