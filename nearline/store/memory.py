"""In-process status store: ``memory://``. Nothing survives the process.

:func:`nearline.store.open_store` hands every caller in a process the same store for one URL,
as :func:`nearline.brokers.open_broker` does the broker.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from nearline.jobs import JobRecord, JobStatus, callback_status
from nearline.store.base import CallbackDelivery, StatusStore


class MemoryStore(StatusStore):
    """Records in a dict under one lock."""

    def __init__(self, url: str = "memory://") -> None:
        super().__init__()
        self.url = url
        self._jobs: dict[str, JobRecord] = {}
        self._slots: dict[str, str] = {}  # idempotency slot -> job id
        # The outbox: job id -> (delivery as claimed last, due at); a claim's token in the first.
        self._outbox: dict[str, tuple[CallbackDelivery, float]] = {}
        self._lock = threading.Lock()

    def create(self, job: JobRecord) -> tuple[JobRecord, bool]:
        with self._lock:
            holder = self._holder(job.idempotency_slot) if job.idempotency_slot else None
            existing = holder or self._jobs.get(job.id)
            if existing is not None:
                return existing, False
            self._jobs[job.id] = job
            if job.idempotency_slot:
                self._slots[job.idempotency_slot] = job.id
            return job, True

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self._jobs.get(job_id)

    def keyed(self, slot: str) -> JobRecord | None:
        with self._lock:
            return self._holder(slot)

    def mark_enqueued(self, job_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return False
            self._jobs[job_id] = replace(job, enqueued=True)
            return True

    def _holder(self, slot: str) -> JobRecord | None:
        job_id = self._slots.get(slot)
        return None if job_id is None else self._jobs.get(job_id)

    def _remove(self, job_id: str) -> bool:
        job = self._jobs.pop(job_id, None)
        if job is not None and job.idempotency_slot and self._slots.get(job.idempotency_slot) == job_id:
            del self._slots[job.idempotency_slot]
        return job is not None

    def mark_running(self, job_ids: Iterable[str], now: float) -> None:
        with self._lock:
            for job_id in job_ids:
                job = self._jobs.get(job_id)
                if job is not None and job.status is JobStatus.PENDING:
                    self._jobs[job_id] = replace(job, status=JobStatus.RUNNING, updated=now)

    def start_jobs(self, job_ids: Iterable[str], now: float) -> dict[str, JobStatus]:
        with self._lock:
            found = {i: job.status for i in job_ids if (job := self._jobs.get(i)) is not None}
            for job_id, status in found.items():
                if status is JobStatus.PENDING:
                    self._jobs[job_id] = replace(self._jobs[job_id], status=JobStatus.RUNNING, updated=now)
            return found

    def finish(
        self, job_id: str, status: JobStatus, output: Any, now: float, timings: dict[str, float] | None = None
    ) -> bool:
        if not status.terminal:
            raise ValueError(f"finish needs a terminal status, not {status.value}")
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status.terminal:
                return False
            ended = replace(job.with_status(status, output, now), timings=timings)
            if job.callback_url:
                ended = replace(ended, custom_status={"callback": callback_status("Pending")})
                self._outbox[job_id] = (CallbackDelivery(job_id, job.callback_url, now, 0, ""), now)
            self._jobs[job_id] = ended
        self._finished(job_id, callback=bool(job.callback_url))
        return True

    def claim_deliveries(self, now: float, lease_s: float, limit: int) -> list[CallbackDelivery]:
        token = uuid.uuid4().hex
        with self._lock:
            due = sorted((at, d.job_id) for d, at in self._outbox.values() if at <= now)[:limit]
            claimed = [replace(self._outbox[job_id][0], token=token) for _, job_id in due]
            for d in claimed:
                self._outbox[d.job_id] = (d, now + lease_s)
            return claimed

    def settle_delivery(
        self, delivery: CallbackDelivery, callback: dict[str, Any], next_due: float | None
    ) -> bool:
        with self._lock:
            held = self._outbox.get(delivery.job_id)
            if held is None or held[0].token != delivery.token:
                return False
            if next_due is None:
                del self._outbox[delivery.job_id]
            else:
                waiting = replace(held[0], attempts=callback["attempts"], token="")
                self._outbox[delivery.job_id] = (waiting, next_due)
            job = self._jobs.get(delivery.job_id)
            if job is not None:
                self._jobs[job.id] = replace(job, custom_status={"callback": callback})
            return True

    def delete(self, job_id: str) -> bool:
        with self._lock:
            return self._remove(job_id)

    def overdue(self, now: float, limit: int = 500) -> list[str]:
        with self._lock:
            return [
                j.id
                for j in self._jobs.values()
                if not j.status.terminal and j.deadline is not None and j.deadline <= now
            ][:limit]

    def recent(self, limit: int = 50) -> list[JobRecord]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)[:limit]

    def purge_terminal(self, updated_before: float) -> int:
        with self._lock:
            old = [j.id for j in self._jobs.values() if j.status.terminal and j.updated < updated_before]
            for job_id in old:
                self._remove(job_id)
            return len(old)
