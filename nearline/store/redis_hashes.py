"""Redis status store: ``redis://host:6379/0[?retention_s=86400]``, the broker's URL.

Guarantees: everything in :mod:`nearline.store.base`, shared by every API replica, worker and
lifecycle that opens the same URL; a long-poll on one replica wakes when another ends the job.

* A job is the hash ``nearline:job:<id>``. Transitions are Lua scripts, so the check and the
  change are one atomic step: ``mark_running`` only moves Pending → Running; ``finish`` only
  moves Pending/Running to a terminal state (the first result wins for good).
* A keyed job's idempotency slot is the string ``nearline:job-slot:<slot>`` (the job id),
  claimed in the ``create`` script; ``delete`` and ``purge_terminal`` free it, and ``finish``
  gives it the record's TTL.
* ``overdue`` reads the sorted set ``nearline:jobs:deadlines`` (unfinished jobs by deadline);
  ``finish`` and ``delete`` take a job out of it.
* Retention: ``finish`` gives the record a TTL of ``retention_s`` (URL option, else
  ``NEARLINE_RETENTION_S``, else :data:`~nearline.constants.RETENTION_S`), so Redis removes it
  even where no lifecycle runs. ``purge_terminal`` still deletes by ``updated`` (the lifecycle's
  own retention, the contract's semantics) via ``nearline:jobs:finished``, which it also cleans
  of ids whose records the TTL already removed.
* The callback outbox: ``finish`` of a job with a ``callback_url`` writes its delivery
  (``nearline:delivery:<id>``, the record's TTL) and puts it in ``nearline:deliveries`` (sorted by
  when it is due, or its lease ends) in the same script; ``claim_deliveries`` and
  ``settle_delivery`` are scripts too, so two replicas never hold one delivery.
* Wake-ups (:mod:`nearline.store.redis_wakeups`): ``finish`` publishes the job id on
  ``nearline:job-finished:<db>``; each instance subscribes on its first long-poll, so a job
  ended by any replica wakes the long-polls of every replica at once.

Memory (measured, Redis 7.0): a finished record takes ~1.5 KB for a digits or topics job
(inputs of 100-250 bytes); plan for submissions/s x retention_s records, e.g. 100 jobs/s kept
24 h is ~13 GB: shorten the retention rather than loosen the persistence settings described in
:mod:`nearline.brokers.redis_streams`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import redis

from nearline.brokers.base import Broker, Delivery
from nearline.brokers.redis_client import connect
from nearline.brokers.redis_loop import LoopCalls
from nearline.brokers.redis_streams import RedisBroker
from nearline.errors import BrokerError, ConfigError
from nearline.jobs import PENDING_CALLBACK, JobRecord, JobStatus
from nearline.settings import RedisSettings
from nearline.store.base import CallbackDelivery, Enqueue, Settle, StatusStore
from nearline.store.outcomes_redis import RedisOutcomes
from nearline.store.redis_lua import SCRIPTS
from nearline.store.redis_receive import RECEIVE_STARTED
from nearline.store.redis_records import (
    DEADLINES,
    FINISHED,
    JOB_PREFIX,
    SLOT_PREFIX,
    announced_record,
    create_args,
    holder,
    record,
    timings_arg,
)
from nearline.store.redis_settle import HANDOVER_BYTES, SETTLE_ENDED, settle_ended_args
from nearline.store.redis_submit import SUBMIT, submit_args
from nearline.store.redis_wakeups import Wakeups, channel_for

#: The callback outbox: job ids by when their delivery is next due (or its lease ends), and
#: ``nearline:delivery:<id>`` (url, created, attempts, token) for each.
OUTBOX = "nearline:deliveries"
DELIVERY_PREFIX = "nearline:delivery:"
_PENDING = json.dumps(PENDING_CALLBACK)
#: Ids per mark_running script call and per purge batch: bounds the time one script blocks Redis.
CHUNK = 500


class RedisStore(StatusStore):
    """Job records in Redis hashes; see the module docstring."""

    def __init__(self, url: str, retention_s: float | None = None) -> None:
        super().__init__()
        self._redis, own, self.url = connect(url, ("retention_s",))
        self.retention_s = _retention(retention_s, own.get("retention_s"))
        scripts = {**SCRIPTS, "submit": SUBMIT, "settle_ended": SETTLE_ENDED}
        self._scripts = {name: self._redis.register_script(src) for name, src in scripts.items()}
        self._on_loop = LoopCalls(self._redis)
        db = int(self._redis.connection_pool.connection_kwargs.get("db", 0))
        channel, origin = channel_for(db), uuid.uuid4().hex
        self.waiters: Wakeups = Wakeups(
            self._redis, channel, origin, self._ended, announced_record, self._callback_elsewhere
        )

    @property
    def client(self) -> redis.Redis:
        """The connection (the split store, :mod:`nearline.splits.redis`, keeps its keys here too)."""
        return self._redis

    def on_callback(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """As the base's, and this instance subscribes to ends at once: a worker's end of a job
        with a callback (announced, :meth:`settle_ended`) is then told to ``listener`` too. If
        Redis is down now, the subscription starts with the first long-poll, and until then the
        dispatcher's own poll finds those deliveries."""
        remove = super().on_callback(listener)
        with contextlib.suppress(BrokerError):
            self.waiters.start()
        return remove

    def _callback_elsewhere(self, job_id: str) -> None:
        """Another instance (a worker) ended ``job_id`` and wrote its callback delivery."""
        for listener in list(self._callback_listeners):
            listener(job_id)

    def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return self._scripts[name](keys=keys, args=args)
        except redis.RedisError as exc:
            raise BrokerError(f"redis store {self.url}: {exc}") from exc

    def create(self, job: JobRecord) -> tuple[JobRecord, bool]:
        existing = self._run("create", *create_args(job, self._retention_ms()))
        if existing is None:
            return job, True
        return holder(existing), False

    def create_enqueued(self, job: JobRecord, enqueue: Enqueue) -> tuple[JobRecord, bool] | None:
        return self._create_enqueued(job, enqueue) if self.settles_with(enqueue.broker) else None

    def _create_enqueued(self, job: JobRecord, enqueue: Enqueue) -> tuple[JobRecord, bool]:
        keys, args = self._submit_args(job, enqueue)
        try:
            answer = self._run("submit", keys, args)
        except BrokerError as exc:
            raise self._unsubmitted(job, exc) from exc
        return self._submitted(job, enqueue, answer)

    def creates_on_loop(self, broker: Broker) -> bool:
        return self.settles_with(broker)

    async def create_enqueued_on_loop(self, job: JobRecord, enqueue: Enqueue) -> tuple[JobRecord, bool]:
        """The submit script on this store's own connections (:mod:`nearline.brokers.redis_loop`);
        where Redis lost the script (a restart, ``SCRIPT FLUSH``), :meth:`create_enqueued`
        loads it again, on a thread."""
        keys, args = self._submit_args(job, enqueue)
        try:
            answer = await self._on_loop.call("EVALSHA", self._scripts["submit"].sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return await asyncio.to_thread(self._create_enqueued, job, enqueue)
        except redis.RedisError as exc:
            raise await asyncio.to_thread(self._unsubmitted, job, exc) from exc
        return self._submitted(job, enqueue, answer)

    def _submit_args(self, job: JobRecord, enqueue: Enqueue) -> tuple[list[str], list[Any]]:
        assert isinstance(enqueue.broker, RedisBroker)
        parts = enqueue.broker.send_parts(enqueue.queue, job.id, enqueue.body, enqueue.lane, enqueue.ttl_s)
        return submit_args(create_args(job, self._retention_ms()), parts, enqueue.max_depth)

    def _submitted(self, job: JobRecord, enqueue: Enqueue, answer: list[Any]) -> tuple[JobRecord, bool]:
        if answer[0] == b"found":
            return holder(answer[1]), False
        if answer[0] == b"full":
            raise enqueue.full(int(answer[1]))
        return job, True

    def _unsubmitted(self, job: JobRecord, exc: Exception) -> BrokerError:
        """The error of a failed submit script. One that failed part way keeps what it wrote: a
        record without its message must not linger Pending (the same clean-up as step by step)."""
        with contextlib.suppress(BrokerError):
            self.delete(job.id)
        return BrokerError(f"could not enqueue job {job.id}: {exc}")

    def keyed(self, slot: str) -> JobRecord | None:
        found = self._run("keyed", [SLOT_PREFIX + slot], [JOB_PREFIX])
        return None if found is None else holder(found)

    def mark_enqueued(self, job_id: str) -> bool:
        return bool(self._run("mark_enqueued", [JOB_PREFIX + job_id], []))

    def get(self, job_id: str) -> JobRecord | None:
        handed = self.waiters.take(job_id)
        if handed is not None:
            return handed
        try:
            raw = self._redis.hgetall(JOB_PREFIX + job_id)
        except redis.RedisError as exc:
            raise BrokerError(f"redis store {self.url}: {exc}") from exc
        return record(job_id, raw) if raw else None

    def statuses(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        ids = list(job_ids)
        if not ids:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(JOB_PREFIX + job_id, "status")
        try:
            values = pipe.execute()
        except redis.RedisError as exc:
            raise BrokerError(f"redis store {self.url}: {exc}") from exc
        return {i: JobStatus(v.decode()) for i, v in zip(ids, values, strict=True) if v is not None}

    def mark_running(self, job_ids: Iterable[str], now: float) -> None:
        keys = [JOB_PREFIX + job_id for job_id in job_ids]
        for start in range(0, len(keys), CHUNK):
            self._run("mark_running", keys[start : start + CHUNK], [repr(now)])

    def start_jobs(self, job_ids: Iterable[str], now: float) -> dict[str, JobStatus]:
        """One script per :data:`CHUNK` ids (one round trip for a worker's batch)."""
        ids = list(job_ids)
        found: dict[str, JobStatus] = {}
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            statuses = self._run("start_jobs", [JOB_PREFIX + job_id for job_id in chunk], [repr(now)])
            found.update((i, JobStatus(s.decode())) for i, s in zip(chunk, statuses, strict=True) if s)
        return found

    def finish(
        self, job_id: str, status: JobStatus, output: Any, now: float, timings: dict[str, float] | None = None
    ) -> bool:
        if not status.terminal:
            raise ValueError(f"finish needs a terminal status, not {status.value}")
        keys = [JOB_PREFIX + job_id, DEADLINES, FINISHED, OUTBOX]
        channel, message = self.waiters.channel, self.waiters.announcement(job_id)
        args = [job_id, status.value, json.dumps(output), repr(now), self._retention_ms(), channel, message]
        args += [SLOT_PREFIX, DELIVERY_PREFIX, _PENDING, timings_arg(timings)]
        ended = self._run("finish", keys, args)
        if not ended:
            return False
        self._finished(job_id, callback=ended == 2)  # 2: it wrote a callback delivery
        return True

    def finish_many(
        self,
        ends: Sequence[tuple[str, JobStatus, Any]],
        now: float,
        timings: Mapping[str, dict[str, float]] | None = None,
    ) -> list[bool]:
        """Every :meth:`finish` of a chunk of :data:`CHUNK` in one script (one round trip); the
        ended record of a job someone here waits for is handed over (:mod:`redis_wakeups`)."""
        found = timings or {}
        answers: list[Any] = []
        for start in range(0, len(ends), CHUNK):
            chunk = ends[start : start + CHUNK]
            keys, args = self._finish_parts(chunk, now)
            for job_id, status, output in chunk:
                args += [job_id, status.value, json.dumps(output), self.waiters.announcement(job_id)]
                args += ["1" if self.waiters.wanted(job_id) else "0", timings_arg(found.get(job_id))]
            answers += self._run("finish_many", keys, args)
        for (job_id, _, _), ended in zip(ends, answers, strict=True):
            callback = ended == 2  # it wrote a callback delivery
            if isinstance(ended, list):  # a waiter here: hand it the ended record
                handed = holder([job_id.encode(), ended])
                self.waiters.hand_over(job_id, handed)
                callback = handed.callback_url is not None
            if ended:
                self._finished(job_id, callback=callback)
        return [bool(ended) for ended in answers]

    def settles_with(self, broker: Broker) -> bool:
        return isinstance(broker, RedisBroker) and broker.same_database(self._redis)

    def start_on_receive(self, broker: Broker, queue: str) -> bool:
        if not self.settles_with(broker):
            return False
        assert isinstance(broker, RedisBroker)
        broker.lease_with(queue, RECEIVE_STARTED, [JOB_PREFIX])
        return True

    def settle_ended(self, settle: Settle) -> list[Delivery]:
        """A worker's batch in one script (:mod:`nearline.store.redis_settle`); each job's end
        is announced with its ended record."""
        broker = settle.broker
        if not self.settles_with(broker):
            raise NotImplementedError(f"redis store {self.url}: settle_ended needs its database's broker")
        assert isinstance(broker, RedisBroker)
        keys, shared = self._finish_parts(settle.ends, settle.now)
        sends, settles = broker.settle_parts(settle.queue, settle.results, settle.deliveries)
        announce, timings = self.waiters.announcement, settle.timings
        ends = [
            [job_id, status.value, json.dumps(output), announce(job_id), timings_arg(timings.get(job_id))]
            for job_id, status, output in settle.ends
        ]
        args = settle_ended_args(sends, keys, [*shared, HANDOVER_BYTES], ends, settles)
        ended, done = self._run("settle_ended", *args)
        for (job_id, _, _), answer in zip(settle.ends, ended, strict=True):
            if answer:
                self._finished(job_id, callback=answer == 2)
        return [d for d, ok in zip(settle.deliveries, done, strict=True) if not ok]

    def _finish_parts(
        self, ends: Sequence[tuple[str, JobStatus, Any]], now: float
    ) -> tuple[list[str], list[Any]]:
        """The KEYS (deadlines, finished, outbox, then each job's hash) and the shared ARGV of a
        script that ends ``ends`` with the ``finish`` function (:mod:`nearline.store.redis_lua`)."""
        for job_id, status, _ in ends:
            if not status.terminal:
                raise ValueError(f"finish needs a terminal status, not {status.value} (job {job_id})")
        keys = [DEADLINES, FINISHED, OUTBOX, *(JOB_PREFIX + job_id for job_id, _, _ in ends)]
        args: list[Any] = [
            repr(now),
            self._retention_ms(),
            self.waiters.channel,
            SLOT_PREFIX,
            DELIVERY_PREFIX,
        ]
        return keys, [*args, _PENDING]

    def delete(self, job_id: str) -> bool:
        self.waiters.take(job_id)
        return bool(self._run("delete", [JOB_PREFIX + job_id, DEADLINES, FINISHED], [job_id, SLOT_PREFIX]))

    def overdue(self, now: float, limit: int = 500) -> list[str]:
        try:
            ids: Any = self._redis.zrangebyscore(DEADLINES, "-inf", now, start=0, num=limit)
        except redis.RedisError as exc:
            raise BrokerError(f"redis store {self.url}: {exc}") from exc
        return [i.decode() for i in ids]

    def recent(self, limit: int = 50) -> list[JobRecord]:
        # The newest of each index: unfinished by latest deadline (created + timeout), ended by
        # latest update; jobs without a deadline that have not ended are in neither.
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.zrevrange(DEADLINES, 0, limit - 1)
            pipe.zrevrange(FINISHED, 0, limit - 1)
            ids = [i.decode() for found in pipe.execute() for i in found]
            pipe = self._redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(JOB_PREFIX + job_id)
            raws = pipe.execute()
        except redis.RedisError as exc:
            raise BrokerError(f"redis store {self.url}: {exc}") from exc
        jobs = [record(i, raw) for i, raw in zip(ids, raws, strict=True) if raw]
        return sorted(jobs, key=lambda j: j.created, reverse=True)[:limit]

    def purge_terminal(self, updated_before: float) -> int:
        deleted = 0
        while True:
            n, seen = self._run("purge", [FINISHED], [repr(updated_before), CHUNK, JOB_PREFIX, SLOT_PREFIX])
            deleted += int(n)
            if int(seen) < CHUNK:
                return deleted

    def claim_deliveries(self, now: float, lease_s: float, limit: int) -> list[CallbackDelivery]:
        token = uuid.uuid4().hex
        args = [repr(now), repr(now + lease_s), limit, token, DELIVERY_PREFIX]
        rows = self._run("claim_deliveries", [OUTBOX], args)
        return [
            CallbackDelivery(i.decode(), json.loads(url), float(created), int(attempts), token)
            for i, url, created, attempts in rows
        ]

    def settle_delivery(
        self, delivery: CallbackDelivery, callback: dict[str, Any], next_due: float | None
    ) -> bool:
        keys = [OUTBOX, DELIVERY_PREFIX + delivery.job_id, JOB_PREFIX + delivery.job_id]
        due = "" if next_due is None else repr(next_due)
        state = json.dumps({"callback": callback})
        args = [delivery.job_id, delivery.token, due, callback["attempts"], state]
        return bool(self._run("settle_delivery", keys, args))

    def _ended(self, job_ids: list[str]) -> list[str]:
        return [job_id for job_id, status in self.statuses(job_ids).items() if status.terminal]

    def _retention_ms(self) -> int:
        return max(int(self.retention_s * 1000), 1)

    def outcomes(self) -> RedisOutcomes:
        return RedisOutcomes(self._redis, self.url, JOB_PREFIX)

    def close(self) -> None:
        self.waiters.close()
        self._on_loop.close()
        self._redis.close()


def _retention(arg: float | None, url_option: str | None) -> float:
    if arg is None and not url_option:
        return float(RedisSettings.from_env().retention_s)  # validated when loaded
    raw: Any = arg if arg is not None else url_option
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"retention_s {raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ConfigError(f"retention_s must be > 0, not {value}")
    return value
