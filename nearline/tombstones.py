"""Tombstones: jobs terminated on Azure, recorded where the workers look before computing.

On the embedded and Redis profiles a worker reads each job's record before it computes
(:class:`nearline.worker.hooks.Liveness`). On Azure a job's state is its Durable instance, which
workers on AKS cannot read cheaply (see docs/azure.md, Design notes, Cancellation). So the
terminate route records a *tombstone* before it terminates the instance: an empty blob in the
claim check's storage account (:data:`~nearline.constants.TOMBSTONES_CONTAINER`), named by the
hour of the job's deadline, the job id and the deadline itself (:func:`tombstone_name`). The
worker's :class:`~nearline.worker.hooks.Tombstoned` hook lists, per batch, the tombstones of the
deadline hours its messages fall in (one listing, two across an hour's turn, whatever the batch
size) and completes the terminated jobs' messages without computing them.

The name holds the deadline because a tombstone must name one job, not just an id: after a purge
an ``Idempotency-Key`` names the same instance id again (docs/azure.md, Purge), and the later
job, whose deadline differs, must not be fenced off by the earlier one's tombstone. The deadline
is fixed at submit and travels in the orchestrator input and the request message, so the route
and the worker name the same blob. The hour keeps each listing to the tombstones that can still
matter; the container's lifecycle rule deletes them after a day.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from nearline.constants import RETENTION_S
from nearline.messages import RequestMessage


class NamedBlobs(Protocol):
    """What tombstones need of a blob container (:class:`nearline.azure_blobs.AzureBlobs` has it)."""

    def put(self, key: str, body: bytes, ttl_s: float) -> None: ...

    def names(self, prefix: str) -> list[str]: ...


def tombstone_name(job_id: str, deadline: float | None) -> str:
    """``<deadline hour, UTC>/<job id>.<deadline in ms>``: the blob that says the job was terminated."""
    deadline = deadline or 0.0
    return f"{datetime.fromtimestamp(deadline, UTC):%Y%m%d%H}/{job_id}.{round(deadline * 1000)}"


class Tombstones:
    """Terminated jobs, kept in ``store`` (see the module docstring)."""

    def __init__(self, store: NamedBlobs) -> None:
        self.store = store

    def record(self, job_id: str, deadline: float | None) -> None:
        """Record that the job ``job_id`` with ``deadline`` was terminated.

        Raises:
            BrokerError: The store did not answer (the caller must not report the job ended).
        """
        self.store.put(tombstone_name(job_id, deadline), b"", RETENTION_S)

    def terminated(self, messages: Sequence[RequestMessage]) -> set[str]:
        """The ids among ``messages`` whose job was terminated: one listing per deadline hour.

        Raises:
            BrokerError: The store did not answer (a worker retries: computing a terminated job
                would break the contract, waiting a moment does not).
        """
        wanted = {tombstone_name(m.id, m.deadline): m.id for m in messages}
        hours = sorted({name.split("/", 1)[0] + "/" for name in wanted})
        found = {name for hour in hours for name in self.store.names(hour)}
        return {job_id for name, job_id in wanted.items() if name in found}
