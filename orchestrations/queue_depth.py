"""Load shedding on Azure: submissions refused with 503 while the request queues are too deep.

``nearline serve`` reads its queue's depth on every submit (a local call). Here the depth is the
request lanes' active message counts, a Service Bus *management* read (one call per lane, the
Manage right), so each Functions worker process keeps a reading and refreshes it at most every
:data:`~nearline.constants.DEPTH_READING_S` seconds: one submit per interval pays for the read,
the others compare with the reading, and no submit waits on a read another one is doing.
Service Bus's counts lag by seconds anyway; the price is that a burst may overshoot the limit
by what arrives within one interval.

When the depth cannot be read (no Manage right, the namespace unreachable), submissions are let
through and the failure is logged once per interval: shedding protects the queue, it must not
become an outage of its own. The limit is ``NEARLINE_MAX_QUEUE_DEPTH``, as for ``nearline serve``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable

from nearline.constants import DEPTH_READING_S, REQUEST_QUEUE, RETRY_AFTER_S
from nearline.errors import ConfigError, Overloaded
from nearline.settings import FunctionsSettings
from orchestrations.scoring import broker_url, request_broker

log = logging.getLogger("nearline.azure.shedding")


class QueueDepth:
    """A cached reading of the request queues' depth, and the limit submissions are held to.

    Args:
        read: Reads the depth (blocking; run off the event loop).
        limit: Submissions are refused while the reading is at least this.
        max_age_s: How old a reading may be before a submit refreshes it.
        clock: Monotonic seconds (tests move it).
    """

    def __init__(
        self,
        read: Callable[[], int],
        limit: int,
        *,
        max_age_s: float = DEPTH_READING_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.read, self.limit, self.max_age_s, self.clock = read, limit, max_age_s, clock
        self._value: int | None = None
        self._at: float | None = None
        self._refreshing = threading.Lock()

    async def current(self) -> int | None:
        """The reading, refreshed first if it is older than ``max_age_s`` and no other caller is
        refreshing it; None while there is none (never read, or the last read failed)."""
        fresh = self._at is not None and self.clock() - self._at < self.max_age_s
        if fresh or not self._refreshing.acquire(blocking=False):
            return self._value
        try:
            self._value = await asyncio.to_thread(self.read)
        except Exception as exc:  # anything: a reading that fails must not fail submissions
            self._value = None
            log.warning("could not read the request queues' depth; not shedding: %s", exc)
        finally:
            self._at = self.clock()
            self._refreshing.release()
        return self._value

    async def admit(self) -> None:
        """Raise :class:`Overloaded` (503 + ``Retry-After``) while the queues are at the limit."""
        depth = await self.current()
        if depth is not None and depth >= self.limit:
            raise Overloaded(
                f"request queue holds {depth} messages (limit {self.limit}); retry later",
                retry_after=RETRY_AFTER_S,
            )


_gate: QueueDepth | None = None
_gate_lock = threading.Lock()
_no_gate = False


def request_queue_depth() -> QueueDepth | None:
    """The process's reading of the request queues, made on first use; None without a broker
    (then ``enqueue`` fails anyway, and says why)."""
    global _gate, _no_gate
    with _gate_lock:
        if _gate is None and not _no_gate:
            try:
                broker_url(os.environ)
            except ConfigError:
                _no_gate = True
                return None
            limit = FunctionsSettings.from_env().max_queue_depth
            _gate = QueueDepth(lambda: request_broker().depth(REQUEST_QUEUE), limit)
        return _gate
