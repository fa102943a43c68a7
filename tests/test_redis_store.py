"""The Redis status store beyond the contract: TTLs, the index sets, and wake-ups across replicas.

The contract (``tests/test_store.py``) runs on Redis too. Here: two store instances on one
database stand for two API replicas. Database 12, emptied before and after each test.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from conftest import redis_database

from nearline.jobs import JobRecord, JobStatus
from nearline.store import open_store
from nearline.store.redis_hashes import DEADLINES, FINISHED, JOB_PREFIX, RedisStore
from nearline.store.redis_wakeups import channel_for

pytestmark = pytest.mark.redis

DB = 12
URL = f"redis://127.0.0.1:6379/{DB}"
T0 = time.time()
CHANNEL = channel_for(DB)


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    with redis_database(DB) as client:
        yield client


@pytest.fixture
def stores(r: redis.Redis) -> Iterator[tuple[RedisStore, RedisStore]]:
    """Two instances on one database: replica A and replica B."""
    a, b = RedisStore(URL), RedisStore(URL)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def job(**fields: Any) -> JobRecord:
    values: dict[str, Any] = {"id": uuid.uuid4().hex, "pipeline": "digits", "input": {}, "created": T0}
    return JobRecord(**{**values, "updated": T0, **fields})


def test_retention_comes_from_the_argument_the_url_or_the_environment(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEARLINE_RETENTION_S", "77")
    for store, expected in [
        (RedisStore(URL), 77.0),
        (RedisStore(f"{URL}?retention_s=120"), 120.0),
        (RedisStore(f"{URL}?retention_s=120", retention_s=5), 5.0),
        (open_store(f"redis://:pw@127.0.0.1:6379/{DB}?retention_s=9"), 9.0),
    ]:
        try:
            assert isinstance(store, RedisStore) and store.retention_s == expected
            assert "pw" not in store.url
        finally:
            store.close()


def test_finish_sets_the_retention_ttl_and_moves_the_job_between_index_sets(r: redis.Redis) -> None:
    store = RedisStore(URL, retention_s=600)
    try:
        j = job(deadline=T0 + 30)
        store.create(j)
        key = JOB_PREFIX + j.id
        assert r.ttl(key) == -1  # unfinished records never expire
        assert r.zscore(DEADLINES, j.id) == T0 + 30 and r.zscore(FINISHED, j.id) is None
        store.mark_running([j.id], T0 + 1)
        assert r.ttl(key) == -1
        assert store.finish(j.id, JobStatus.COMPLETED, {"label": 1}, T0 + 2)
        assert 590 < r.ttl(key) <= 600
        assert r.zscore(DEADLINES, j.id) is None and r.zscore(FINISHED, j.id) == T0 + 2
        assert r.hget(key, "status") == b"Completed"
    finally:
        store.close()


def test_finish_only_from_pending_or_running_even_when_replicas_race(
    stores: tuple[RedisStore, RedisStore],
) -> None:
    jobs = [job() for _ in range(50)]
    for j in jobs:
        stores[0].create(j)
    wins: list[tuple[str, str]] = []
    lock = threading.Lock()

    def finish_all(store: RedisStore, status: JobStatus) -> None:
        for j in jobs:
            if store.finish(j.id, status, {"by": status.value}, time.time()):
                with lock:
                    wins.append((j.id, status.value))

    racers = [
        threading.Thread(target=finish_all, args=(stores[0], JobStatus.COMPLETED)),
        threading.Thread(target=finish_all, args=(stores[1], JobStatus.FAILED)),
    ]
    for t in racers:
        t.start()
    for t in racers:
        t.join(timeout=20)
    assert sorted(i for i, _ in wins) == sorted(j.id for j in jobs)  # exactly one winner each
    for job_id, status in wins:
        got = stores[1].get(job_id)
        assert got is not None and (got.status.value, got.output) == (status, {"by": status})
    stores[0].mark_running([j.id for j in jobs], time.time())  # terminal: unchanged
    assert set(stores[0].statuses(j.id for j in jobs).values()) <= {JobStatus.COMPLETED, JobStatus.FAILED}


def test_overdue_index_follows_finish_and_delete(
    r: redis.Redis, stores: tuple[RedisStore, RedisStore]
) -> None:
    a, _ = stores
    late, gone, done = job(deadline=T0 - 5), job(deadline=T0 - 5), job(deadline=T0 - 5)
    for j in (late, gone, done):
        a.create(j)
    a.delete(gone.id)
    a.finish(done.id, JobStatus.TERMINATED, None, T0)
    assert a.overdue(T0) == [late.id]
    assert r.zrange(DEADLINES, 0, -1) == [late.id.encode()]


def test_purge_cleans_ids_whose_records_expired_already(r: redis.Redis) -> None:
    store = RedisStore(URL, retention_s=0.05)
    try:
        j = job()
        store.create(j)
        store.finish(j.id, JobStatus.COMPLETED, {}, T0)
        time.sleep(0.1)  # the TTL must pass
        assert store.get(j.id) is None
        assert store.purge_terminal(T0 + 1) == 0  # nothing left to delete ...
        assert r.zcard(FINISHED) == 0  # ... but the index is clean
        assert store.create(j) == (j, True)  # and the id can be used again
    finally:
        store.close()


def test_a_long_poll_on_replica_a_wakes_when_replica_b_finishes(
    stores: tuple[RedisStore, RedisStore],
) -> None:
    a, b = stores
    j = job()
    a.create(j)

    async def main() -> float:
        fut = a.waiters.register(j.id)  # subscribes A before returning
        finished_at = 0.0

        def finish_on_b() -> None:
            nonlocal finished_at
            finished_at = time.monotonic()
            assert b.finish(j.id, JobStatus.COMPLETED, {"label": 7}, time.time())

        timer = threading.Timer(0.3, finish_on_b)
        timer.start()
        try:
            await asyncio.wait_for(fut, timeout=5)
        finally:
            timer.join()
        return time.monotonic() - finished_at

    latency = asyncio.run(main())
    assert latency < 0.5
    got = a.get(j.id)
    assert got is not None and got.output == {"label": 7}
    assert a.waiters.waiting() == 0


def test_a_replica_acts_on_announcements_from_others_only(
    r: redis.Redis, stores: tuple[RedisStore, RedisStore]
) -> None:
    a, _ = stores
    j = job()
    a.create(j)

    async def main() -> None:
        own = a.waiters.register(j.id)
        a.finish(j.id, JobStatus.COMPLETED, {}, time.time())  # wakes A's waiters directly
        await asyncio.wait_for(own, timeout=1)
        # An announcement with A's own origin reaches its subscriber: it must wake nobody (A
        # notifies its own ends directly; a finish that lost the compare-and-set announces
        # nothing). "other" is a job A did not end, so only the announcement could wake it.
        late = a.waiters.register("other")
        r.publish(CHANNEL, a.waiters.announcement("other"))
        # A barrier, not a sleep: A handles announcements in order and wakes futures in order,
        # so once another replica's announcement published after it has woken its waiter, A's
        # own has been handled.
        barrier = a.waiters.register("barrier")
        r.publish(CHANNEL, "barrier another-replica")
        await asyncio.wait_for(barrier, timeout=2)
        assert not late.done()
        r.publish(CHANNEL, "other another-replica")
        await asyncio.wait_for(late, timeout=2)

    asyncio.run(main())


def test_subscriber_starts_on_first_wait_and_stops_on_close(r: redis.Redis) -> None:
    def subscribers() -> int:
        return int(r.pubsub_numsub(CHANNEL)[0][1])

    def listening_threads() -> int:
        return sum(t.name == "redis-store-wakeups" for t in threading.enumerate())

    store = RedisStore(URL)
    try:
        store.finish("no-such-job", JobStatus.COMPLETED, None, T0)
        assert subscribers() == 0 and listening_threads() == 0  # workers never pay for it

        async def wait_once() -> None:
            fut = store.waiters.register("some-job")
            store.waiters.discard("some-job", fut)

        asyncio.run(wait_once())
        assert subscribers() == 1 and listening_threads() == 1
    finally:
        store.close()
    deadline = time.monotonic() + 2
    while subscribers() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert subscribers() == 0 and listening_threads() == 0


def test_a_dropped_subscription_reconnects_and_catches_up(
    r: redis.Redis, stores: tuple[RedisStore, RedisStore]
) -> None:
    a, b = stores
    j = job()
    a.create(j)

    async def main() -> None:
        fut = a.waiters.register(j.id)  # subscribes A
        # The job ends while A's connection is down, so A never hears of it (here: no
        # announcement at all). On re-subscribing, A looks up the jobs it waits for.
        r.hset(JOB_PREFIX + j.id, "status", "Completed")
        host, port = a.waiters._pubsub.connection._sock.getsockname()[:2]
        assert r.client_kill(f"{host}:{port}")  # this connection only: the server is shared
        await asyncio.wait_for(fut, timeout=5)
        # and announcements reach it again
        other = job()
        a.create(other)
        again = a.waiters.register(other.id)
        assert b.finish(other.id, JobStatus.COMPLETED, {}, time.time())
        await asyncio.wait_for(again, timeout=5)

    asyncio.run(main())


def test_a_loop_that_asks_hears_ends_on_the_loop_and_the_thread_hands_over(
    stores: tuple[RedisStore, RedisStore],
) -> None:
    a, b = stores

    def listening_threads() -> int:
        return sum(t.name == "redis-store-wakeups" and t.is_alive() for t in threading.enumerate())

    async def main() -> None:
        a.waiters.start()  # as the lifecycle does at start: a thread listens
        assert listening_threads() == 1
        a.waiters.read_on_loop()  # as nearline serve does once it listens
        await read_on_this_loop(a)
        assert listening_threads() == 0
        for _ in range(3):  # each end is heard on this loop
            await an_end_is_heard(a, b)

    asyncio.run(main())


def test_a_subscription_dropped_on_the_loop_goes_back_to_a_thread_and_returns(
    r: redis.Redis, stores: tuple[RedisStore, RedisStore]
) -> None:
    a, b = stores
    j = job()
    a.create(j)

    async def main() -> None:
        a.waiters.read_on_loop()
        await read_on_this_loop(a)
        fut = a.waiters.register(j.id)
        r.hset(JOB_PREFIX + j.id, "status", "Completed")  # ended while the connection is down
        host, port = a.waiters._pubsub.connection._sock.getsockname()[:2]
        assert r.client_kill(f"{host}:{port}")  # this connection only: the server is shared
        await asyncio.wait_for(fut, timeout=5)  # a thread reconnected and caught up
        await read_on_this_loop(a)  # and handed it back
        await an_end_is_heard(a, b)

    asyncio.run(main())


def test_when_the_loop_that_read_is_gone_a_thread_reads_again(stores: tuple[RedisStore, RedisStore]) -> None:
    a, b = stores

    async def on_a_loop_that_ends() -> None:
        a.waiters.read_on_loop()
        await read_on_this_loop(a)

    asyncio.run(on_a_loop_that_ends())  # that loop is closed now
    asyncio.run(an_end_is_heard(a, b))


async def read_on_this_loop(store: RedisStore) -> None:
    """Return once ``store``'s announcements are read on the running loop (the listener thread
    hands them over after its next read: within its 0.5 s poll)."""
    deadline = time.monotonic() + 3
    while store.waiters._reader is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert store.waiters._reader is asyncio.get_running_loop()


async def an_end_is_heard(a: RedisStore, b: RedisStore) -> None:
    """A job ended by replica ``b`` wakes its waiter on replica ``a``, record handed over."""
    j = job()
    a.create(j)
    fut = a.waiters.register(j.id)
    assert b.finish(j.id, JobStatus.COMPLETED, {"n": 1}, time.time())
    await asyncio.wait_for(fut, timeout=5)
    got = a.get(j.id)
    assert got is not None and got.output == {"n": 1}
