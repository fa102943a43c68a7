"""SQLite broker: ``sqlite:///relative/file.db`` or ``sqlite:////abs/file.db``.

Guarantees: everything in :mod:`nearline.brokers.base`, for any number of processes and
threads on one machine sharing the file (not over a network filesystem: SQLite's locks are not
reliable there). A committed send or settle survives a process crash; see
:mod:`nearline.sqlite_db` for what survives a power loss (``synchronous=normal`` by default).
Sends (and dead-letters) are durable commits; leases and settles are not fsynced of their own
under ``synchronous=full`` (:meth:`nearline.sqlite_db.Database.write` says why that is safe).
A worker's results and its completions (``send_then_complete``) are one transaction, one commit.
Messages are rows; a lease is ``visible_at`` in the future plus a ``lease_token``; receive leases
a batch with one ``UPDATE ... RETURNING`` statement, which SQLite runs under its write lock, so
two receivers (in any process) never lease the same message. Expired messages (``ttl_s``) are
never delivered and are deleted in passing; one whose TTL passes while it is leased stays with
its receiver until settled or its lease ends.

A receive that waits sleeps on its bell (:mod:`nearline.wakeups`): a send or an abandon, in
this process or in any other on this machine, rings the bells of its queue once committed, so a
waiting receiver takes the message at once instead of finding it at its next poll. It looks
at the queue anyway every ``poll_ms`` and when the earliest lease on the queue ends (a message
whose lease ran out is delivered again without anyone sending it).

URL options (see :mod:`nearline.sqlite_db`): ``wakeups`` (default ``on``), ``poll_ms`` (longest
pause between looks while a receive waits: 1000 with wake-ups, 10 without),
``busy_timeout_ms``, ``synchronous``. The broker and the status store share the file.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from nearline import wakeups
from nearline.brokers.base import Broker, DeadLetter, Delivery, LeaseLost
from nearline.constants import DEFAULT_LANE, LANES, LEASE_S
from nearline.sqlite_db import Database, parse_url

_RANK = {lane: rank for rank, lane in enumerate(LANES)}

#: First pause between polls of an empty queue without wake-ups; doubled up to ``poll_ms``.
_POLL_MIN_S = 0.002
#: Expired messages are deleted at most this often per queue and broker (receive skips them
#: anyway, and depth does not count them, so this only bounds the table's garbage).
_PURGE_EVERY_S = 1.0

_LEASE = """
UPDATE messages SET visible_at = ?, lease_token = ?, delivery_count = delivery_count + 1
WHERE seq IN (
    SELECT seq FROM messages
    WHERE queue = ? AND visible_at <= ? AND (expires_at IS NULL OR expires_at > ?)
    ORDER BY lane, seq LIMIT ?
)
RETURNING seq, message_id, body, lane, delivery_count, enqueued_at
"""
_READY = """
SELECT 1 FROM messages
WHERE queue = ? AND visible_at <= ? AND (expires_at IS NULL OR expires_at > ?) LIMIT 1
"""
_NEXT_LEASE_END = "SELECT min(visible_at) FROM messages WHERE queue = ? AND visible_at > ?"
_DEPTH = """
SELECT (SELECT count(*) FROM messages WHERE queue = ?)
     - (SELECT count(*) FROM messages WHERE queue = ? AND expires_at <= ? AND visible_at <= ?)
"""
_HELD = "queue = ? AND message_id = ? AND lease_token = ? AND visible_at > ?"
_COMPLETE = f"DELETE FROM messages WHERE {_HELD}"
_ABANDON = f"UPDATE messages SET visible_at = 0, lease_token = NULL WHERE {_HELD}"
_INSERT = """
INSERT OR IGNORE INTO messages (queue, message_id, lane, body, enqueued_at, expires_at)
VALUES (?, ?, ?, ?, ?, ?)
"""
# Expired and not leased: never to be delivered (a leased one stays with its receiver).
_EXPIRED = "DELETE FROM messages WHERE queue = ? AND expires_at <= ? AND visible_at <= ?"
_EXPIRED_ID = (
    "DELETE FROM messages WHERE queue = ? AND message_id = ? AND expires_at <= ? AND visible_at <= ?"
)


#: What :meth:`SqliteBroker.lease_with` runs in a lease's transaction: (connection, message ids,
#: now) → each id's job status as it was.
StartJobs = Callable[[sqlite3.Connection, list[str], float], dict[str, str]]


def _job_status(statuses: dict[str, str] | None, message_id: str) -> str | None:
    """A delivery's ``job_status``: None when the lease did not read it, "" for no record."""
    return None if statuses is None else statuses.get(message_id, "")


class SqliteBroker(Broker):
    """Queues in a SQLite file; safe for several processes and threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        config = parse_url(url)
        self._db = Database(config)
        self._poll_max_s = max(config.poll_ms / 1000.0, _POLL_MIN_S)
        self._wakeups = config.wakeups
        # Shared by every broker on this file in this process (an embedded server's API and
        # lifecycle each open their own).
        self._bells = wakeups.acquire(self._db.path, self._wakeups)
        self._released = False
        self._purged: dict[str, float] = {}
        self._starting: dict[str, StartJobs] = {}  # queue → lease_with's function

    @property
    def path(self) -> Path:
        """The database file."""
        return self._db.path

    def lease_with(self, queue: str, start: StartJobs) -> None:
        """Lease from ``queue`` with ``start`` from now on: in the lease's transaction it is
        given the connection, the leased message ids and the time, and answers each id's job
        status as it was ("" for none), kept as the delivery's ``job_status`` (the status store
        on this file, whose jobs the receive then starts: ``SqliteStore.start_on_receive``)."""
        self._starting[queue] = start

    def send_many(
        self,
        queue: str,
        messages: Sequence[tuple[str, bytes]],
        *,
        lane: str = DEFAULT_LANE,
        ttl_s: float | None = None,
    ) -> None:
        """All of ``messages`` in one transaction: every one of them is sent, or none is."""
        now = time.time()
        rows = _rows(queue, messages, lane, ttl_s, now)
        if not rows:
            return
        # One message whose id is free: one statement, no explicit transaction (the API's hot path).
        if len(rows) > 1 or self._db.execute_write(_INSERT, rows[0])[0] != 1:
            with self._db.write() as conn:
                _insert(conn, queue, rows, now)
        self._bells.ring(queue)

    def receive(
        self, queue: str, max_messages: int, wait_s: float, lease_s: float = LEASE_S
    ) -> list[Delivery]:
        if max_messages < 1:
            return []
        deadline = time.monotonic() + wait_s
        self._drop_expired(queue)
        bell = self._bells.bell(queue) if wait_s > 0 else None
        pause = _POLL_MIN_S
        while True:
            if bell is not None:
                bell.arm()  # before looking: a send committed after the look rings it
            # A read first: an empty poll then never takes the write lock, which would make
            # another process's send wait in SQLite's busy handler (it sleeps 1 ms or more).
            if self._ready(queue):
                got = self._lease(queue, max_messages, lease_s)
                if got:
                    return got
            remaining = deadline - time.monotonic()
            if bell is None or remaining <= 0:
                return []
            if bell.cross_process:
                bell.wait(min(remaining, self._poll_max_s, self._until_lease_ends(queue)))
            else:
                # Only this process's sends ring: poll, pausing 2 ms doubling up to poll_ms, so
                # that idle receivers cost little.
                woken = bell.wait(min(remaining, pause))
                pause = _POLL_MIN_S if woken else min(pause * 2, self._poll_max_s)

    def _ready(self, queue: str) -> bool:
        now = time.time()
        return bool(self._db.query(_READY, (queue, now, now)))

    def _until_lease_ends(self, queue: str) -> float:
        """Seconds until the earliest lease on ``queue`` ends (its message is due again)."""
        [(end,)] = self._db.query(_NEXT_LEASE_END, (queue, time.time()))
        return float("inf") if end is None else max(end - time.time(), 0.0)

    def _drop_expired(self, queue: str) -> None:
        now = time.time()
        if now - self._purged.get(queue, 0.0) >= _PURGE_EVERY_S:
            self._purged[queue] = now
            self._db.execute_write(_EXPIRED, (queue, now, now), durable=False)

    def _lease(self, queue: str, max_messages: int, lease_s: float) -> list[Delivery]:
        now = time.time()
        token = uuid.uuid4().hex
        args = (now + lease_s, token, queue, now, now, max_messages)
        start = self._starting.get(queue)
        statuses: dict[str, str] | None = None
        if start is None:
            _, rows = self._db.execute_write(_LEASE, args, durable=False)
        else:  # one transaction, one commit: the lease and the jobs' start
            with self._db.write(durable=False) as conn:
                rows = conn.execute(_LEASE, args).fetchall()
                statuses = start(conn, [r[1] for r in rows], now) if rows else {}
        rows.sort(key=lambda r: (r[3], r[0]))  # RETURNING has no ORDER BY
        return [
            Delivery(queue, mid, body, LANES[lane], count, token, at, _job_status(statuses, mid))
            for _, mid, body, lane, count, at in rows
        ]

    def complete(self, delivery: Delivery) -> None:
        count, _ = self._db.execute_write(_COMPLETE, _held_args(delivery, time.time()), durable=False)
        if count != 1:
            raise _lost(delivery)

    def complete_many(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        with self._db.write(durable=False) as conn:
            return _complete(conn, deliveries, time.time())

    #: :meth:`send_then_complete` is one transaction: all or nothing, so a worker retries it whole.
    settles_atomically = True

    def send_then_complete(
        self, queue: str, messages: Sequence[tuple[str, bytes]], deliveries: Sequence[Delivery]
    ) -> list[Delivery]:
        """The sends' inserts, then the completions' deletes, in ONE transaction, committed once.

        Atomic because SQLite commits a transaction whole or not at all, in every process that
        shares the file: an error part way (disk full, a lock held past ``busy_timeout_ms``, a
        crash before the commit) rolls the sends back with the completions, so the worker may
        retry the call whole. It also saves a commit per batch: one transaction instead of
        :meth:`send_many`'s and :meth:`complete_many`'s (under ``synchronous=full`` the one
        commit is durable, as a send's is; the completions' own commit was not fsynced anyway).
        A lost lease is no error: that delivery is left unchanged and returned.
        """
        now = time.time()
        rows = _rows(queue, messages, DEFAULT_LANE, None, now)
        if not rows and not deliveries:
            return []
        with self._db.write(durable=bool(rows)) as conn:
            if rows:
                _insert(conn, queue, rows, now)
            lost = _complete(conn, deliveries, now)
        if rows:
            self._bells.ring(queue)
        return lost

    def abandon(self, delivery: Delivery) -> None:
        count, _ = self._db.execute_write(_ABANDON, _held_args(delivery, time.time()), durable=False)
        if count != 1:
            raise _lost(delivery)
        self._bells.ring(delivery.queue)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        now = time.time()
        with self._db.write() as conn:
            rows = conn.execute(
                f"DELETE FROM messages WHERE {_HELD} RETURNING body, delivery_count",
                _held_args(delivery, now),
            ).fetchall()
            if not rows:
                raise _lost(delivery)
            [row] = rows
            conn.execute(
                "INSERT INTO dead_letters (queue, message_id, body, reason, delivery_count, dead_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (delivery.queue, delivery.message_id, row[0], reason, row[1], now),
            )

    def depth(self, queue: str) -> int:
        now = time.time()
        # Expired, unleased messages are gone as far as anyone can tell, deleted or not yet.
        [(count,)] = self._db.query(_DEPTH, (queue, queue, now, now))
        return int(count)

    # -- a send inside another's transaction (the status store's submit on this file) -----

    def depth_in(self, conn: sqlite3.Connection, queue: str, now: float) -> int:
        """:meth:`depth`, read in ``conn``'s open transaction."""
        [(count,)] = conn.execute(_DEPTH, (queue, queue, now, now)).fetchall()
        return int(count)

    def send_in(
        self,
        conn: sqlite3.Connection,
        queue: str,
        message_id: str,
        body: bytes,
        *,
        lane: str = DEFAULT_LANE,
        ttl_s: float | None = None,
        now: float,
    ) -> None:
        """:meth:`send` in ``conn``'s open transaction (a write transaction on this file), which
        the caller commits; then it calls :meth:`ring`."""
        _insert(conn, queue, _rows(queue, [(message_id, body)], lane, ttl_s, now), now)

    def ring(self, queue: str) -> None:
        """Wake ``queue``'s waiting receivers: after a commit of :meth:`send_in`."""
        self._bells.ring(queue)

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        rows = self._db.query(
            "SELECT message_id, body, reason, delivery_count, dead_at FROM dead_letters"
            " WHERE queue = ? ORDER BY id LIMIT ?",
            (queue, limit),
        )
        return [DeadLetter(queue, mid, b, why, n, _lane_of(b), at) for mid, b, why, n, at in rows]

    def purge_dead_letters(self, queue: str, message_ids: Sequence[str]) -> int:
        with self._db.write() as conn:
            sql = "DELETE FROM dead_letters WHERE queue = ? AND message_id = ?"
            return sum(conn.execute(sql, (queue, mid)).rowcount for mid in set(message_ids))

    def close(self) -> None:
        if not self._released:
            self._released = True
            wakeups.release(self._db.path, self._wakeups)
        self._db.close()


#: A ``messages`` row as ``_INSERT`` takes it: queue, message id, lane rank, body, enqueued, expires.
_Row = tuple[str, str, int, bytes, float, float | None]


def _rows(
    queue: str, messages: Sequence[tuple[str, bytes]], lane: str, ttl_s: float | None, now: float
) -> list[_Row]:
    if lane not in _RANK:
        raise ValueError(f"unknown lane {lane!r}; expected one of {LANES}")
    expires = None if ttl_s is None else now + ttl_s
    return [(queue, mid, _RANK[lane], bytes(body), now, expires) for mid, body in messages]


def _insert(conn: sqlite3.Connection, queue: str, rows: list[_Row], now: float) -> None:
    """Insert ``rows`` (``_rows``) in the open transaction of ``conn``, a queued id a no-op."""
    conn.execute("SAVEPOINT send")
    if conn.executemany(_INSERT, rows).rowcount < len(rows):
        # Some ids are taken: drop those taken by expired messages (they must not swallow this
        # send), then insert the whole batch again so that it keeps its order.
        conn.execute("ROLLBACK TO send")
        conn.executemany(_EXPIRED_ID, [(queue, row[1], now, now) for row in rows])
        conn.executemany(_INSERT, rows)
    conn.execute("RELEASE send")


def _complete(conn: sqlite3.Connection, deliveries: Sequence[Delivery], now: float) -> list[Delivery]:
    """Delete each held delivery in the open transaction of ``conn``; those whose lease was lost."""
    return [d for d in deliveries if conn.execute(_COMPLETE, _held_args(d, now)).rowcount != 1]


def _held_args(d: Delivery, now: float) -> tuple[str, str, str, float]:
    return (d.queue, d.message_id, d.lease_token, now)


def _lost(d: Delivery) -> LeaseLost:
    return LeaseLost(f"lease on message {d.message_id} in {d.queue} is no longer held")


def _lane_of(body: bytes) -> str:
    """The lane a request message asks for (its ``priority``): the dead-letter table keeps no lane."""
    try:
        lane = json.loads(body).get("priority", DEFAULT_LANE)
    except (ValueError, AttributeError):
        return DEFAULT_LANE
    return lane if lane in _RANK else DEFAULT_LANE
