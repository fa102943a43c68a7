"""In-process wake-ups for long-polls: an HTTP handler waits here, a store transition notifies.

Stores call :meth:`Waiters.notify` when a job reaches a terminal state in this process; the
Redis store also calls it for transitions other replicas publish. Handlers register *before*
re-reading the record, so a notification between the read and the wait is never missed.

The ids notified in the last :data:`RECENT_S` are remembered: a register for one of them
resolves at once. Where the store's notifications cover every end (:meth:`Waiters.hears_every_end`:
Redis, once subscribed), a wait for a job just created needs no read before it at all: an end
between the create and the register is remembered (``StoreJobs.wait``'s ``known``).

The hand-over: a store that ends a job someone here waits for (:meth:`Waiters.wanted`), and
has its ended record in hand (SQLite's finish returns the row; Redis's scripts answer it, or
announce it), keeps it for the waiter (:meth:`Waiters.hand_over`), which answers from it
(:meth:`Waiters.take`) instead of reading the record back: a read, and a hop to a thread,
fewer on every answered wait.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nearline.jobs import JobRecord


#: How long a notified id is remembered (a register for it resolves at once): far longer than
#: the milliseconds between a job's create and its waiter's register.
RECENT_S = 5.0
#: A record handed over to a waiter (see :meth:`Waiters.take`) is read within milliseconds;
#: one nobody took (its waiter timed out at that instant) is dropped after this long, so a later
#: read sees the store, not an old copy.
HANDOVER_S = 1.0


class Waiters:
    """job id → futures of the coroutines waiting for that job to end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = defaultdict(
            list
        )
        self._recent: dict[str, float] = {}  # id → when notified (monotonic), oldest first
        self._handed: dict[str, tuple[float, JobRecord]] = {}

    def register(self, job_id: str) -> asyncio.Future[None]:
        """A future that resolves when ``job_id`` is notified, at once if it was notified in the
        last :data:`RECENT_S` (or before: expired ids go on the next notify; a job ends once, so
        an old one resolving at once is right too). Call from a running loop."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if job_id in self._recent:
                fut.set_result(None)
            else:
                self._futures[job_id].append((loop, fut))
        return fut

    def hears_every_end(self, since: float) -> bool:
        """Whether every end of a job since ``since`` (epoch seconds) was or will be notified
        here, so that a waiter registered after a job created at ``since`` needs no read of its
        record first. False here: a store that ends jobs in other processes (SQLite) tells
        waiters through re-reads."""
        return False

    def read_on_loop(self) -> None:
        """Where this process hears ends from elsewhere (Redis's pub/sub), hear them on the
        running event loop from now on (a server's loop, for its life); nothing here."""

    def discard(self, job_id: str, fut: asyncio.Future[None]) -> None:
        with self._lock:
            entries = self._futures.get(job_id, [])
            entries[:] = [(lp, f) for lp, f in entries if f is not fut]
            if not entries:
                self._futures.pop(job_id, None)

    def notify(self, job_id: str) -> None:
        """Wake everyone waiting on ``job_id``, and remember it for a while. Safe from any thread."""
        now = time.monotonic()
        with self._lock:
            entries = self._futures.pop(job_id, [])
            self._recent.pop(job_id, None)  # to the end: the dict is kept oldest first
            self._recent[job_id] = now
            while self._recent:  # drop the expired, oldest first
                oldest = next(iter(self._recent))
                if now - self._recent[oldest] <= RECENT_S:
                    break
                del self._recent[oldest]
        for loop, fut in entries:
            loop.call_soon_threadsafe(_resolve, fut)

    def wanted(self, job_id: str) -> bool:
        """Whether someone in this process waits for ``job_id`` (its ended record is handed over)."""
        with self._lock:
            return job_id in self._futures

    def hand_over(self, job_id: str, record: JobRecord) -> None:
        """Keep ``record``, just ended, for the waiter's next read (:meth:`take`). Call before
        :meth:`notify`."""
        now = time.monotonic()
        with self._lock:
            self._handed[job_id] = (now, record)
            for old in [i for i, (at, _) in self._handed.items() if now - at > HANDOVER_S]:
                del self._handed[old]

    def take(self, job_id: str) -> JobRecord | None:
        """The record handed over for ``job_id`` at most :data:`HANDOVER_S` ago, once; None: read
        the store. No I/O, so a waiter may call it on its event loop."""
        with self._lock:
            at, record = self._handed.pop(job_id, (0.0, None))
        return record if time.monotonic() - at <= HANDOVER_S else None

    def waiting(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._futures.values())


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
