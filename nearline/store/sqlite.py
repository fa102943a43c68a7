"""SQLite status store: job records in the broker's file (``sqlite:///nearline.db``).

Guarantees: everything in :mod:`nearline.store.base`, for several processes sharing the file.
Transitions are single ``UPDATE ... WHERE status IN (...)`` statements, so the compare-and-set
holds across processes. :attr:`waiters` hears only the transitions made through this process's
store; a long-poll served by another process than the one that finished the job falls back to
re-reading the record. Durability is the file's (see :mod:`nearline.sqlite_db`).

The callback outbox is the ``deliveries`` table: a trigger on ``jobs`` inserts a job's delivery
when ``finish`` ends it (one statement, one transaction) and deletes it with the job's row;
the statement returns whether the job had a callback, so ``on_callback`` hears only those ends.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeGuard

from nearline.brokers.base import Broker
from nearline.brokers.sqlite import SqliteBroker
from nearline.jobs import PENDING_CALLBACK, JobRecord, JobStatus
from nearline.sqlite_db import Database, parse_url
from nearline.store.base import CallbackDelivery, Enqueue, StatusStore
from nearline.store.outcomes_sqlite import SqliteOutcomes

#: Every JobRecord field is a column of ``jobs`` by the same name (a new field needs a
#: migration in sqlite_migrations.py); these hold JSON text, NULL for None.
_FIELDS = tuple(f.name for f in dataclasses.fields(JobRecord))
_JSON = frozenset({"input", "output", "custom_status", "timings"})
_COLUMNS = ", ".join(_FIELDS)
_SELECT = f"SELECT {_COLUMNS} FROM jobs"
_OPEN_SQL = ", ".join(f"'{s.value}'" for s in JobStatus if not s.terminal)
_PENDING = json.dumps(PENDING_CALLBACK, separators=(",", ":"))
_TERMINAL_SQL = ", ".join(f"'{s.value}'" for s in JobStatus if s.terminal)
#: Ids per ``IN (...)`` list: far below SQLite's variable limit, large enough for any batch.
_CHUNK = 500
#: Records deleted per purge transaction (a few milliseconds of holding the write lock).
_PURGE_CHUNK = 1000
_INSERT = f"INSERT OR IGNORE INTO jobs ({_COLUMNS}) VALUES ({', '.join('?' * len(_FIELDS))})"
_PURGE = f"""
DELETE FROM jobs WHERE rowid IN (
    SELECT rowid FROM jobs WHERE status IN ({_TERMINAL_SQL}) AND updated < ? LIMIT ?
)
"""


#: Ends an open job; returns one row, whether it had a callback (then the jobs_outbox trigger
#: wrote its delivery in the same statement) and the ended record's columns (handed over to a
#: waiter in this process: :mod:`nearline.waiters`), or none when the job is absent or already
#: ended. RETURNING needs SQLite 3.35 (2021), as the broker's lease does.
_FINISH = f"""
UPDATE jobs SET status = ?, output = ?, updated = ?, timings = ?,
    custom_status = CASE WHEN callback_url IS NULL THEN custom_status ELSE ? END
WHERE id = ? AND status IN ({_OPEN_SQL})
RETURNING callback_url IS NOT NULL, {_COLUMNS}
"""
_CLAIM = """
UPDATE deliveries SET due = ?, token = ?
WHERE job_id IN (SELECT job_id FROM deliveries WHERE due <= ? ORDER BY due LIMIT ?)
RETURNING job_id, url, created, attempts
"""
_RESCHEDULE = "UPDATE deliveries SET due = ?, attempts = ?, token = NULL WHERE job_id = ? AND token = ?"


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _row(job: JobRecord) -> list[Any]:
    values = {name: getattr(job, name) for name in _FIELDS}
    values["status"] = job.status.value
    return [_dump(v) if name in _JSON else v for name, v in values.items()]


def _record(row: Sequence[Any]) -> JobRecord:
    values = dict(zip(_FIELDS, row, strict=True))
    for name in _JSON:
        values[name] = None if values[name] is None else json.loads(values[name])
    values["status"] = JobStatus(values["status"])
    values["enqueued"] = bool(values["enqueued"])
    return JobRecord(**values)


def _chunks(ids: Iterable[str]) -> Iterable[list[str]]:
    batch: list[str] = []
    for job_id in ids:
        batch.append(job_id)
        if len(batch) == _CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


class SqliteStore(StatusStore):
    """Job records in the ``jobs`` table of the SQLite file."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._db = Database(parse_url(url))

    def create(self, job: JobRecord) -> tuple[JobRecord, bool]:
        # One transaction: the row that made the insert a no-op (the slot's holder, or a record
        # of the same id) is read before any other writer can delete it.
        with self._db.write() as conn:
            if conn.execute(_INSERT, _row(job)).rowcount == 1:
                return job, True
            return self._holder(conn, job), False

    def _holder(self, conn: sqlite3.Connection, job: JobRecord) -> JobRecord:
        """The record that made ``job``'s insert a no-op: its slot's holder, or the record of
        its id (read in the insert's transaction, before any other writer can delete it)."""
        rows: list[Any] = []
        if job.idempotency_slot is not None:
            rows = conn.execute(f"{_SELECT} WHERE idempotency_slot = ?", (job.idempotency_slot,)).fetchall()
        rows = rows or conn.execute(f"{_SELECT} WHERE id = ?", (job.id,)).fetchall()
        return _record(rows[0])

    def create_enqueued(self, job: JobRecord, enqueue: Enqueue) -> tuple[JobRecord, bool] | None:
        """On the broker's file: the record, the depth check and the request message in one
        write transaction, one commit (two before, and a read): a repeat is answered before the
        depth is checked, a full queue writes nothing, and the record and its message are never
        one without the other (a keyed job is never seen claimed but unsent)."""
        broker = enqueue.broker
        if not self._on_file_of(broker):
            return None
        now = time.time()
        with self._db.write() as conn:
            if conn.execute(_INSERT, _row(job)).rowcount != 1:
                return self._holder(conn, job), False
            depth = broker.depth_in(conn, enqueue.queue, now)
            if depth >= enqueue.max_depth:
                raise enqueue.full(depth)  # rolls the record back
            broker.send_in(
                conn, enqueue.queue, job.id, enqueue.body, lane=enqueue.lane, ttl_s=enqueue.ttl_s, now=now
            )
        broker.ring(enqueue.queue)
        return job, True

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._db.query(f"{_SELECT} WHERE id = ?", (job_id,))
        return _record(rows[0]) if rows else None

    def keyed(self, slot: str) -> JobRecord | None:
        rows = self._db.query(f"{_SELECT} WHERE idempotency_slot = ?", (slot,))
        return _record(rows[0]) if rows else None

    def mark_enqueued(self, job_id: str) -> bool:
        count, _ = self._db.execute_write("UPDATE jobs SET enqueued = 1 WHERE id = ?", (job_id,))
        return count == 1

    def mark_running(self, job_ids: Iterable[str], now: float) -> None:
        ids = list(job_ids)
        if not ids:
            return
        with self._db.write(durable=False) as conn:  # Running is informative: Pending may come back
            for batch in _chunks(ids):
                conn.execute(
                    f"UPDATE jobs SET status = ?, updated = ? WHERE status = ? AND id IN ({_marks(batch)})",
                    (JobStatus.RUNNING.value, now, JobStatus.PENDING.value, *batch),
                )

    def finish(
        self, job_id: str, status: JobStatus, output: Any, now: float, timings: dict[str, float] | None = None
    ) -> bool:
        if not status.terminal:
            raise ValueError(f"finish needs a terminal status, not {status.value}")
        # One statement: the jobs_outbox trigger (sqlite_migrations.py) writes the callback's delivery
        # in its transaction, and RETURNING says whether it did.
        _, rows = self._db.execute_write(
            _FINISH, (status.value, _dump(output), now, _dump(timings), _PENDING, job_id)
        )
        if not rows:
            return False
        self._ended(job_id, rows[0])
        return True

    def finish_many(
        self,
        ends: Sequence[tuple[str, JobStatus, Any]],
        now: float,
        timings: Mapping[str, dict[str, float]] | None = None,
    ) -> list[bool]:
        # One transaction for the batch (one commit instead of one per job); waiters and
        # listeners hear of the ends once it is committed.
        if any(not status.terminal for _, status, _ in ends):
            raise ValueError("finish needs terminal statuses")
        found = timings or {}
        with self._db.write() as conn:
            # Per job: [] when not ended here, else [(whether it had a callback,)].
            ended = [
                conn.execute(
                    _FINISH, (status.value, _dump(output), now, _dump(found.get(job_id)), _PENDING, job_id)
                ).fetchall()
                for job_id, status, output in ends
            ]
        for (job_id, _, _), rows in zip(ends, ended, strict=True):
            if rows:
                self._ended(job_id, rows[0])
        return [bool(rows) for rows in ended]

    def _ended(self, job_id: str, row: Sequence[Any]) -> None:
        """``_FINISH`` ended ``job_id`` (``row``: its answer): a waiter here is handed the record."""
        if self.waiters.wanted(job_id):
            self.waiters.hand_over(job_id, _record(row[1:]))
        self._finished(job_id, callback=bool(row[0]))

    def delete(self, job_id: str) -> bool:
        count, _ = self._db.execute_write("DELETE FROM jobs WHERE id = ?", (job_id,))
        return count == 1

    def overdue(self, now: float, limit: int = 500) -> list[str]:
        rows = self._db.query(
            f"SELECT id FROM jobs WHERE status IN ({_OPEN_SQL}) AND deadline <= ? ORDER BY deadline LIMIT ?",
            (now, limit),
        )
        return [job_id for (job_id,) in rows]

    def recent(self, limit: int = 50) -> list[JobRecord]:
        return [_record(r) for r in self._db.query(f"{_SELECT} ORDER BY created DESC LIMIT ?", (limit,))]

    def purge_terminal(self, updated_before: float) -> int:
        # In chunks, each its own transaction: a day's records deleted at once would hold the
        # write lock for seconds, and every submit, settle and finish would wait behind it.
        total = 0
        while True:
            count, _ = self._db.execute_write(_PURGE, (updated_before, _PURGE_CHUNK), durable=False)
            total += count
            if count < _PURGE_CHUNK:
                return total

    def claim_deliveries(self, now: float, lease_s: float, limit: int) -> list[CallbackDelivery]:
        # A read first: most calls find nothing due, and a read takes no write lock.
        if not self._db.query("SELECT 1 FROM deliveries WHERE due <= ? LIMIT 1", (now,)):
            return []
        token = uuid.uuid4().hex
        _, rows = self._db.execute_write(_CLAIM, (now + lease_s, token, now, limit))
        return [
            CallbackDelivery(job_id, url, created, attempts, token) for job_id, url, created, attempts in rows
        ]

    def settle_delivery(
        self, delivery: CallbackDelivery, callback: dict[str, Any], next_due: float | None
    ) -> bool:
        key = (delivery.job_id, delivery.token)
        with self._db.write() as conn:
            if next_due is None:
                count = conn.execute("DELETE FROM deliveries WHERE job_id = ? AND token = ?", key).rowcount
            else:
                count = conn.execute(_RESCHEDULE, (next_due, callback["attempts"], *key)).rowcount
            if count != 1:
                return False
            conn.execute(
                "UPDATE jobs SET custom_status = ? WHERE id = ?",
                (_dump({"callback": callback}), delivery.job_id),
            )
        return True

    def statuses(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        out: dict[str, JobStatus] = {}
        for batch in _chunks(job_ids):
            rows = self._db.query(f"SELECT id, status FROM jobs WHERE id IN ({_marks(batch)})", batch)
            out.update((job_id, JobStatus(status)) for job_id, status in rows)
        return out

    def start_jobs(self, job_ids: Iterable[str], now: float) -> dict[str, JobStatus]:
        with self._db.write(durable=False) as conn:  # Running is informative, as in mark_running
            return {job_id: JobStatus(status) for job_id, status in _start(conn, job_ids, now).items()}

    def start_on_receive(self, broker: Broker, queue: str) -> bool:
        """On this file, the worker's lease also starts its jobs, in the lease's transaction:
        a commit fewer before each batch."""
        if not self._on_file_of(broker):
            return False
        broker.lease_with(queue, _start)
        return True

    def _on_file_of(self, broker: Broker) -> TypeGuard[SqliteBroker]:
        """Whether ``broker`` queues on this store's file: then one transaction can do both."""
        return isinstance(broker, SqliteBroker) and broker.path == self._db.path

    def outcomes(self) -> SqliteOutcomes:
        return SqliteOutcomes(self._db)

    def close(self) -> None:
        self._db.close()


def _start(conn: sqlite3.Connection, job_ids: Iterable[str], now: float) -> dict[str, str]:
    """Each job's status as it was, the Pending ones marked Running, in ``conn``'s transaction
    (the statuses read are the ones the update changes). Jobs without a record are left out."""
    out: dict[str, str] = {}
    for batch in _chunks(job_ids):
        rows = conn.execute(f"SELECT id, status FROM jobs WHERE id IN ({_marks(batch)})", batch)
        out.update(rows.fetchall())
        conn.execute(
            f"UPDATE jobs SET status = ?, updated = ? WHERE status = ? AND id IN ({_marks(batch)})",
            (JobStatus.RUNNING.value, now, JobStatus.PENDING.value, *batch),
        )
    return out


def _marks(batch: list[str]) -> str:
    return ", ".join("?" * len(batch))
