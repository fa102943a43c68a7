"""In-process wake-ups for long-polls: an HTTP handler waits here, a store transition notifies.

Stores call :meth:`Waiters.notify` when a job reaches a terminal state in this process; the
Redis store also calls it for transitions other replicas publish. Handlers register *before*
re-reading the record, so a notification between the read and the wait is never missed.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nearline.jobs import JobRecord


class Waiters:
    """job id → futures of the coroutines waiting for that job to end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = defaultdict(
            list
        )

    def register(self, job_id: str) -> asyncio.Future[None]:
        """A future that resolves when ``job_id`` is notified. Call from a running loop."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._futures[job_id].append((loop, fut))
        return fut

    def discard(self, job_id: str, fut: asyncio.Future[None]) -> None:
        with self._lock:
            entries = self._futures.get(job_id, [])
            entries[:] = [(lp, f) for lp, f in entries if f is not fut]
            if not entries:
                self._futures.pop(job_id, None)

    def notify(self, job_id: str) -> None:
        """Wake everyone waiting on ``job_id``. Safe from any thread."""
        with self._lock:
            entries = self._futures.pop(job_id, [])
        for loop, fut in entries:
            loop.call_soon_threadsafe(_resolve, fut)

    def take(self, job_id: str) -> JobRecord | None:
        """The ended record of ``job_id`` if this process was handed it with the end (Redis:
        :mod:`nearline.store.redis_wakeups`), once; None: read the store. No I/O, so a waiter
        may call it on its event loop."""
        return None

    def waiting(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._futures.values())


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
