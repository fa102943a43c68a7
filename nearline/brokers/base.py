"""The broker seam: a handful of methods every queue backend implements.

Semantics every backend guarantees (the contract suite in ``tests/test_brokers.py`` checks them):

* ``send_many`` (and ``send``, the same for one message) is idempotent on ``message_id`` while
  a message with that id is queued or leased (Service Bus duplicate detection; the others keep
  the id unique).
* ``receive`` hands out up to ``max_messages`` messages, each leased for ``lease_s`` seconds:
  invisible to other receivers until completed, abandoned, dead-lettered or the lease expires,
  after which it is delivered again with ``delivery_count`` one higher. Lanes are drained in
  priority order: ``high`` before ``normal`` before ``low``.
* ``complete`` removes a leased message (``send_then_complete``: sends, then completes, in one
  round trip where the backend can); ``abandon`` makes it visible again at once;
  ``dead_letter`` moves it to the queue's dead-letter store. Settling with a stale lease
  (expired and re-leased elsewhere) raises :class:`LeaseLost` and changes nothing.
* ``depth`` counts messages waiting or leased (not dead-lettered).
* ``purge_dead_letters`` deletes dead letters by id (redrive: :mod:`nearline.dead_letters`).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from nearline.constants import DEFAULT_LANE, LEASE_S
from nearline.errors import BrokerError


class LeaseLost(BrokerError):
    """The message's lease expired and it was handed to another receiver."""

    code = "LeaseLost"


@dataclass(frozen=True)
class Delivery:
    """A received message, leased to this receiver until settled or ``lease_s`` passes."""

    queue: str
    message_id: str
    body: bytes
    lane: str
    delivery_count: int
    lease_token: str
    enqueued_at: float
    #: The status its job had when this receive leased it, where the receive also started the
    #: job (marked it Running: Redis with its status store, :mod:`nearline.store.redis_receive`;
    #: SQLite with the store on its file, ``SqliteStore.start_on_receive``);
    #: "" when the job's record was absent; None where the receive did not look.
    job_status: str | None = None


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered message and why it was dead-lettered."""

    queue: str
    message_id: str
    body: bytes
    reason: str
    delivery_count: int
    lane: str = DEFAULT_LANE  # the lane it was sent on: redrive sends it back there
    dead_at: float | None = None  # when it was dead-lettered (epoch s), where the backend says


class Broker(abc.ABC):
    """A queue backend. Thread-safe: one instance may be shared by a process's threads."""

    #: The URL this broker was opened with (credentials removed).
    url: str = ""

    def send(
        self,
        queue: str,
        body: bytes,
        *,
        message_id: str,
        lane: str = DEFAULT_LANE,
        ttl_s: float | None = None,
    ) -> None:
        """Enqueue ``body``: :meth:`send_many` of one message."""
        self.send_many(queue, [(message_id, body)], lane=lane, ttl_s=ttl_s)

    @abc.abstractmethod
    def send_many(
        self,
        queue: str,
        messages: Sequence[tuple[str, bytes]],
        *,
        lane: str = DEFAULT_LANE,
        ttl_s: float | None = None,
    ) -> None:
        """Enqueue each ``(message_id, body)``, in one round trip where the backend can.

        A message still queued with the same id makes its send a no-op. ``ttl_s``, when given,
        lets the broker drop a message unreceived after that long. A worker publishes a batch's
        results with this. Not atomic on every backend: after an error, some of the messages
        may have been sent (sending them again is harmless: send is idempotent).
        """

    @abc.abstractmethod
    def receive(
        self, queue: str, max_messages: int, wait_s: float, lease_s: float = LEASE_S
    ) -> list[Delivery]:
        """Lease up to ``max_messages``; block up to ``wait_s`` for the first one to arrive."""

    @abc.abstractmethod
    def complete(self, delivery: Delivery) -> None:
        """Remove a leased message for good."""

    def complete_many(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """:meth:`complete` each delivery, in one round trip where the backend can.

        Returns the deliveries whose lease was lost (left unchanged); the others are removed.
        """
        lost = []
        for delivery in deliveries:
            try:
                self.complete(delivery)
            except LeaseLost:
                lost.append(delivery)
        return lost

    #: Whether :meth:`send_then_complete` is one atomic call (all or nothing), so that a worker
    #: may retry it whole; the default (two calls) is not: a worker retries each part on its own.
    settles_atomically = False

    def send_then_complete(
        self, queue: str, messages: Sequence[tuple[str, bytes]], deliveries: Sequence[Delivery]
    ) -> list[Delivery]:
        """:meth:`send_many` of ``messages`` to ``queue`` (default lane), then :meth:`complete_many`
        of ``deliveries``: a worker publishes a batch's results and settles its requests with
        this, in one round trip where the backend can (Redis: one script). Every send comes
        before any completion, so a call that fails part way has completed nothing whose result
        was not sent (at-least-once); calling it again is harmless (sends are idempotent).

        Returns the deliveries whose lease was lost (left unchanged), as :meth:`complete_many`.
        """
        self.send_many(queue, messages)
        return self.complete_many(deliveries)

    @abc.abstractmethod
    def abandon(self, delivery: Delivery) -> None:
        """Give a leased message back: visible again at once, delivery count kept."""

    @abc.abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a leased message to the dead-letter store with ``reason``."""

    @abc.abstractmethod
    def depth(self, queue: str) -> int:
        """Messages waiting or leased on ``queue`` across all lanes."""

    @abc.abstractmethod
    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The oldest dead-lettered messages of ``queue``.

        Part of the contract although nothing in the scoring path reads it: it is how operator
        tools list what was dead-lettered and why (the tests check it too).
        """

    @abc.abstractmethod
    def purge_dead_letters(self, queue: str, message_ids: Sequence[str]) -> int:
        """Delete the dead letters of ``queue`` with these message ids; how many were deleted."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to close
        """Release connections. The broker is unusable afterwards."""
