"""In-process broker: ``memory://[name]``.

Guarantees: everything in :mod:`nearline.brokers.base` within one process; nothing survives
the process. Brokers opened with the same URL in one process share their queues, so an API
thread and worker threads started by ``nearline serve --broker memory://`` see one queue.
It is both the embedded mode's fast option and the test double for the broker seam.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from nearline.brokers.base import Broker, DeadLetter, Delivery, LeaseLost
from nearline.constants import DEFAULT_LANE, LANES, LEASE_S


@dataclass
class _Message:
    message_id: str
    body: bytes
    lane: str
    enqueued_at: float
    expires_at: float | None
    seq: int
    delivery_count: int = 0
    visible_at: float = 0.0
    lease_token: str = ""


def _expired(m: _Message, now: float) -> bool:
    """Past its TTL and not leased (a leased message stays with its receiver)."""
    return m.expires_at is not None and m.expires_at <= now and m.visible_at <= now


@dataclass
class _Queue:
    messages: OrderedDict[str, _Message] = field(default_factory=OrderedDict)
    dead: list[DeadLetter] = field(default_factory=list)


class MemoryBroker(Broker):
    """Queues in a dict, guarded by one condition variable."""

    #: :meth:`send_then_complete` runs under the one lock: all or nothing for every other thread.
    settles_atomically = True

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._queues: dict[str, _Queue] = {}
        # Reentrant: send_then_complete holds it across send_many and complete.
        self._cond = threading.Condition(threading.RLock())
        self._seq = itertools.count()

    def _queue(self, name: str) -> _Queue:
        return self._queues.setdefault(name, _Queue())

    def send_many(
        self,
        queue: str,
        messages: Sequence[tuple[str, bytes]],
        *,
        lane: str = DEFAULT_LANE,
        ttl_s: float | None = None,
    ) -> None:
        if lane not in LANES:
            raise ValueError(f"unknown lane {lane!r}; expected one of {LANES}")
        now = time.time()
        expires_at = None if ttl_s is None else now + ttl_s
        with self._cond:
            q = self._queue(queue)
            for message_id, body in messages:
                old = q.messages.get(message_id)
                if old is not None:
                    if not _expired(old, now):
                        continue
                    del q.messages[message_id]  # expired: it must not swallow this send
                q.messages[message_id] = _Message(message_id, body, lane, now, expires_at, next(self._seq))
            self._cond.notify_all()

    def receive(
        self, queue: str, max_messages: int, wait_s: float, lease_s: float = LEASE_S
    ) -> list[Delivery]:
        deadline = time.monotonic() + wait_s
        with self._cond:
            while True:
                got = self._lease(queue, max_messages, lease_s)
                remaining = deadline - time.monotonic()
                if got or remaining <= 0:
                    return got
                # Wake on a send, or when the earliest lease could expire.
                self._cond.wait(min(remaining, 0.05 if self._queue(queue).messages else remaining))

    def _drop_expired(self, q: _Queue, now: float) -> None:
        expired = [m.message_id for m in q.messages.values() if _expired(m, now)]
        for mid in expired:
            del q.messages[mid]

    def _lease(self, queue: str, max_messages: int, lease_s: float) -> list[Delivery]:
        now = time.time()
        q = self._queue(queue)
        self._drop_expired(q, now)
        ready = [m for m in q.messages.values() if m.visible_at <= now]
        ready.sort(key=lambda m: (LANES.index(m.lane), m.seq))
        out = []
        for m in ready[:max_messages]:
            m.delivery_count += 1
            m.visible_at = now + lease_s
            m.lease_token = uuid.uuid4().hex
            out.append(
                Delivery(queue, m.message_id, m.body, m.lane, m.delivery_count, m.lease_token, m.enqueued_at)
            )
        return out

    def _held(self, d: Delivery) -> _Message:
        m = self._queue(d.queue).messages.get(d.message_id)
        if m is None or m.lease_token != d.lease_token or m.visible_at <= time.time():
            raise LeaseLost(f"lease on message {d.message_id} in {d.queue} is no longer held")
        return m

    def complete(self, delivery: Delivery) -> None:
        with self._cond:
            self._held(delivery)
            del self._queue(delivery.queue).messages[delivery.message_id]

    def send_then_complete(
        self, queue: str, messages: Sequence[tuple[str, bytes]], deliveries: Sequence[Delivery]
    ) -> list[Delivery]:
        """:meth:`send_many`, then :meth:`complete_many`, both under the broker's one lock.

        Atomic because every other method takes that lock too: no other thread sees the results
        sent and the requests not yet completed (a receiver woken by the sends runs once the
        lock is let go). Neither part fails part way once started: the lane is checked before
        anything changes, and a lost lease is no error (that delivery is returned, unchanged).
        """
        with self._cond:
            self.send_many(queue, messages)
            return self.complete_many(deliveries)

    def abandon(self, delivery: Delivery) -> None:
        with self._cond:
            m = self._held(delivery)
            m.visible_at = 0.0
            m.lease_token = ""
            self._cond.notify_all()

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        with self._cond:
            m = self._held(delivery)
            q = self._queue(delivery.queue)
            del q.messages[delivery.message_id]
            q.dead.append(
                DeadLetter(
                    delivery.queue, m.message_id, m.body, reason, m.delivery_count, m.lane, time.time()
                )
            )

    def depth(self, queue: str) -> int:
        with self._cond:
            q = self._queue(queue)
            self._drop_expired(q, time.time())
            return len(q.messages)

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        with self._cond:
            return list(self._queue(queue).dead[:limit])

    def purge_dead_letters(self, queue: str, message_ids: Sequence[str]) -> int:
        with self._cond:
            q, before = self._queue(queue), len(self._queue(queue).dead)
            q.dead = [d for d in q.dead if d.message_id not in message_ids]
            return before - len(q.dead)
