"""The seams issue #19's fast path added, on every backend: ``StatusStore.start_jobs`` (the
worker's status read and mark-Running in one step), ``StatusStore.on_callback`` (the lifecycle
wakes the callback outbox only for ends that put a callback there) and
``Broker.send_then_complete`` (a worker's results, then its completions, in one call), and the
lifecycle's use of ``on_callback``; then what makes SQLite's and memory's ``send_then_complete``
atomic (one transaction; one hold of the lock).

Redis runs on database 9, flushed before each test.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from conftest import require_server

from nearline import wakeups
from nearline.brokers.base import Broker, Delivery
from nearline.brokers.memory import MemoryBroker
from nearline.brokers.sqlite import SqliteBroker
from nearline.callback_sender import CallbackSender
from nearline.callbacks import CallbackGuard
from nearline.deliveries import Dispatcher
from nearline.errors import Overloaded
from nearline.jobs import JobRecord, JobStatus
from nearline.lifecycle import Lifecycle
from nearline.messages import ResultMessage
from nearline.settings import WebhookSettings
from nearline.store.base import Enqueue, StatusStore
from nearline.store.memory import MemoryStore
from nearline.store.sqlite import SqliteStore

REDIS_URL = "redis://127.0.0.1:6379/9"
T0 = 1_800_000_000.0


def _flushed_redis() -> str:
    require_server("Redis", "127.0.0.1", 6379)
    import redis

    with redis.Redis.from_url(REDIS_URL) as r:
        r.flushdb()
    return REDIS_URL


def _redis_store(tmp_path: Path) -> StatusStore:
    from nearline.store.redis_hashes import RedisStore

    return RedisStore(_flushed_redis())


def _redis_broker(tmp_path: Path) -> Broker:
    from nearline.brokers.redis_streams import RedisBroker

    return RedisBroker(_flushed_redis())


@pytest.fixture(
    params=[
        pytest.param(lambda _: MemoryStore(), id="memory"),
        pytest.param(lambda p: SqliteStore(f"sqlite:///{p / 'nearline.db'}"), id="sqlite"),
        pytest.param(_redis_store, id="redis", marks=pytest.mark.redis),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StatusStore]:
    factory: Callable[[Path], StatusStore] = request.param
    s = factory(tmp_path)
    yield s
    s.close()


@pytest.fixture(
    params=[
        pytest.param(lambda _: MemoryBroker(), id="memory"),
        pytest.param(lambda p: SqliteBroker(f"sqlite:///{p / 'nearline.db'}"), id="sqlite"),
        pytest.param(_redis_broker, id="redis", marks=pytest.mark.redis),
    ]
)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    factory: Callable[[Path], Broker] = request.param
    b = factory(tmp_path)
    yield b
    b.close()


def _job(callback_url: str | None = None) -> JobRecord:
    return JobRecord(uuid.uuid4().hex, "digits", {"x": 1}, created=T0, updated=T0, callback_url=callback_url)


def test_start_jobs_reads_the_statuses_and_marks_the_pending_ones_running(store: StatusStore) -> None:
    pending, running, ended = _job(), _job(), _job()
    for j in (pending, running, ended):
        store.create(j)
    store.mark_running([running.id], T0 + 1)
    store.finish(ended.id, JobStatus.TERMINATED, "stop", T0 + 1)
    found = store.start_jobs(iter([pending.id, running.id, ended.id, "no-such-job"]), T0 + 2)
    # as they were when read: the worker skips the terminal one and the absent one
    assert found == {
        pending.id: JobStatus.PENDING,
        running.id: JobStatus.RUNNING,
        ended.id: JobStatus.TERMINATED,
    }
    after = {j.id: store.get(j.id) for j in (pending, running, ended)}
    assert {i: (r.status, r.updated) for i, r in after.items() if r is not None} == {
        pending.id: (JobStatus.RUNNING, T0 + 2),
        running.id: (JobStatus.RUNNING, T0 + 1),  # already Running: unchanged
        ended.id: (JobStatus.TERMINATED, T0 + 1),  # ended: never moved back
    }
    assert store.start_jobs([], T0 + 3) == {}


def test_on_callback_hears_ends_that_put_a_callback_in_the_outbox(store: StatusStore) -> None:
    with_callback, without, batch_with, batch_without = (
        _job("https://example.com/hook"),
        _job(),
        _job("https://example.com/hook"),
        _job(),
    )
    for j in (with_callback, without, batch_with, batch_without):
        store.create(j)
    heard: list[str] = []
    remove = store.on_callback(heard.append)
    assert store.finish(with_callback.id, JobStatus.COMPLETED, {}, T0 + 1)
    assert store.finish(without.id, JobStatus.COMPLETED, {}, T0 + 1)
    ends = [(batch_with.id, JobStatus.FAILED, None), (batch_without.id, JobStatus.COMPLETED, {})]
    assert store.finish_many(ends, T0 + 2) == [True, True]
    assert not store.finish(with_callback.id, JobStatus.FAILED, None, T0 + 3)  # already ended
    remove()
    assert heard == [with_callback.id, batch_with.id]  # finish and finish_many alike
    assert {d.job_id for d in store.claim_deliveries(T0 + 10, 30, 10)} == {with_callback.id, batch_with.id}


class _Woken(Dispatcher):
    """A dispatcher that is never started: it counts its wake-ups."""

    def __init__(self, store: StatusStore) -> None:
        super().__init__(store, CallbackSender(CallbackGuard()), WebhookSettings())
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1


def test_the_lifecycle_wakes_the_outbox_only_for_ends_with_a_callback(store: StatusStore) -> None:
    with_callback, without = _job("https://example.com/hook"), _job()
    for j in (with_callback, without):
        store.create(j)
    dispatcher = _Woken(store)
    life = Lifecycle(MemoryBroker(), store, deliveries=dispatcher)
    try:
        assert life.apply(ResultMessage.completed(without.id, {"y": 1}))
        woken_without = dispatcher.woken
        assert life.apply(ResultMessage.completed(with_callback.id, {"y": 2}))
    finally:
        life.stop()
    assert (woken_without, dispatcher.woken) == (0, 1)


def _stale_and_current(broker: Broker, queue: str) -> tuple[list[Delivery], list[Delivery]]:
    """Leases of "a" and "b" that ran out, and the current ones (delivered a second time)."""
    broker.send_many(queue, [("a", b"1"), ("b", b"2")])
    stale = broker.receive(queue, 10, wait_s=1, lease_s=0.2)
    current: list[Delivery] = []
    deadline = time.monotonic() + 3
    while len(current) < 2 and time.monotonic() < deadline:
        current += broker.receive(queue, 10, wait_s=1, lease_s=30)  # after the short lease
    assert [(d.message_id, d.delivery_count) for d in current] == [("a", 2), ("b", 2)]
    return stale, current


def test_send_then_complete_sends_every_message_and_completes_the_held_leases(broker: Broker) -> None:
    requests, responses = f"req-{uuid.uuid4().hex[:8]}", f"res-{uuid.uuid4().hex[:8]}"
    stale, current = _stale_and_current(broker, requests)
    results = [("a", b"result a"), ("b", b"result b")]
    assert broker.send_then_complete(responses, results, [stale[0], current[1]]) == [stale[0]]
    assert broker.depth(requests) == 1  # "a" is still leased by its current holder
    got = broker.receive(responses, 10, wait_s=1)
    assert [(d.message_id, d.body) for d in got] == results
    # again, as a retry after an outage would: nothing is sent twice while queued
    assert broker.send_then_complete(responses, results, [current[0]]) == []
    assert broker.depth(requests) == 0 and broker.depth(responses) == 2
    assert broker.send_then_complete(responses, [], []) == []


def _depths(broker: Broker, *queues: str) -> list[int]:
    return [broker.depth(q) for q in queues]


def test_send_then_complete_on_sqlite_is_one_transaction(tmp_path: Path) -> None:
    """A failure in the completions (a trigger refusing the request's delete: the real file
    failing between the two parts) rolls the results back too: neither part is applied. Two
    transactions (``send_many``, then ``complete_many``) would leave the results sent."""
    path = tmp_path / "nearline.db"
    broker = SqliteBroker(f"sqlite:///{path}")
    try:
        assert broker.settles_atomically
        broker.send_many("requests", [("a", b"1")])
        [held] = broker.receive("requests", 10, wait_s=1)
        with closing(sqlite3.connect(path)) as other:
            other.execute(
                "CREATE TRIGGER refuse BEFORE DELETE ON messages WHEN OLD.queue = 'requests'"
                " BEGIN SELECT RAISE(ABORT, 'injected'); END"
            )
        with pytest.raises(sqlite3.IntegrityError, match="injected"):
            broker.send_then_complete("responses", [("a", b"result")], [held])
        assert _depths(broker, "requests", "responses") == [1, 0]  # nothing sent, nothing completed
        with closing(sqlite3.connect(path)) as other:
            other.execute("DROP TRIGGER refuse")
        # the retry a worker makes of the whole call: both parts, the lease still held
        assert broker.send_then_complete("responses", [("a", b"result")], [held]) == []
        assert _depths(broker, "requests", "responses") == [0, 1]
    finally:
        broker.close()


def test_send_then_complete_on_sqlite_rings_the_bells_of_the_sent_to_queue(tmp_path: Path) -> None:
    """As ``send_many`` does: a waiting receiver, in any process, takes the results at once."""
    path = (tmp_path / "nearline.db").resolve()
    broker = SqliteBroker(f"sqlite:///{path}")
    bells = wakeups.acquire(path)  # this process's, which the broker shares
    try:
        broker.send_many("requests", [("a", b"1")])
        held = broker.receive("requests", 10, wait_s=0)
        responses, requests = bells.bell("responses"), bells.bell("requests")
        responses.arm()
        requests.arm()
        assert broker.send_then_complete("responses", [("a", b"result")], held) == []
        assert responses.wait(0) and not requests.wait(0)  # rung: its receivers look again
        responses.arm()
        assert broker.send_then_complete("responses", [], []) == []
        assert not responses.wait(0)  # nothing sent: nothing to ring for
    finally:
        wakeups.release(path)
        broker.close()


class _CountingCondition(threading.Condition):
    """The memory broker's condition variable, counting how often a thread takes it from
    outside: each is a moment another thread could see the queues."""

    def __init__(self) -> None:
        super().__init__(threading.RLock())
        self.taken = 0
        self._depth = 0

    def __enter__(self) -> bool:
        entered = super().__enter__()
        self._depth += 1
        self.taken += self._depth == 1
        return entered

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        super().__exit__(*exc)


def test_send_then_complete_on_memory_holds_the_lock_once() -> None:
    broker = MemoryBroker(f"memory://{uuid.uuid4().hex}")
    counting = _CountingCondition()
    broker._cond = counting  # before any use: every method takes it
    assert broker.settles_atomically
    broker.send_many("requests", [("a", b"1"), ("b", b"2")])
    held = broker.receive("requests", 10, wait_s=0)
    before = counting.taken
    assert broker.send_then_complete("responses", [("a", b"ra"), ("b", b"rb")], held) == []
    # one hold for both parts (the two-call default takes it 1 + one per completion)
    assert counting.taken - before == 1
    assert _depths(broker, "requests", "responses") == [0, 2]


def test_a_sqlite_receive_starts_its_jobs_in_the_leases_transaction(tmp_path: Path) -> None:
    """The store on the broker's file has the worker's lease start the jobs (one commit, not
    two): each delivery carries its job's status as it was, the Pending job is Running, and a
    refused start rolls the lease back with it (the message stays there for the next look)."""
    url = f"sqlite:///{tmp_path / 'nearline.db'}"
    broker, store = SqliteBroker(url), SqliteStore(url)
    other = SqliteStore(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        assert not other.start_on_receive(broker, "requests")  # another file: the worker calls start_jobs
        assert store.start_on_receive(broker, "requests")
        pending, ended = _job(), _job()
        for j in (pending, ended):
            store.create(j)
        store.finish(ended.id, JobStatus.TERMINATED, "stop", T0 + 1)
        broker.send_many("requests", [(pending.id, b"{}"), (ended.id, b"{}"), ("purged", b"{}")])
        got = {d.message_id: d.job_status for d in broker.receive("requests", 10, wait_s=1)}
        assert got == {pending.id: "Pending", ended.id: "Terminated", "purged": ""}
        started = store.get(pending.id)
        assert started is not None and started.status is JobStatus.RUNNING
        # the other queue (the lifecycle's results) leases as before
        broker.send_many("responses", [("r", b"{}")])
        assert [d.job_status for d in broker.receive("responses", 10, wait_s=1)] == [None]
        # one transaction: a start that fails leaves the message unleased
        again = _job()
        store.create(again)
        broker.send_many("requests", [(again.id, b"{}")])
        with closing(sqlite3.connect(tmp_path / "nearline.db")) as conn:
            conn.execute(
                "CREATE TRIGGER refuse BEFORE UPDATE ON jobs BEGIN SELECT RAISE(ABORT, 'injected'); END"
            )
        with pytest.raises(Exception, match="injected"):
            broker.receive("requests", 10, wait_s=0)
        with closing(sqlite3.connect(tmp_path / "nearline.db")) as conn:
            conn.execute("DROP TRIGGER refuse")
        [retried] = broker.receive("requests", 10, wait_s=0)
        assert (retried.message_id, retried.delivery_count, retried.job_status) == (again.id, 1, "Pending")
    finally:
        broker.close()
        store.close()
        other.close()


def test_a_sqlite_submit_writes_the_record_and_its_message_in_one_transaction(tmp_path: Path) -> None:
    """The store on the broker's file: record, depth check and request message, one commit. A
    full queue writes nothing; a repeat is answered before the depth is checked; a receiver
    blocked on the queue is woken once it is committed."""
    url = f"sqlite:///{tmp_path / 'nearline.db'}"
    broker, store = SqliteBroker(url), SqliteStore(url)
    elsewhere = SqliteBroker(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        first = _job()
        assert store.create_enqueued(first, Enqueue(elsewhere, "requests", b"{}", "normal", None, 10)) is None
        got: list[list[str]] = []
        receiver = threading.Thread(
            target=lambda: got.append([d.message_id for d in broker.receive("requests", 10, wait_s=5)])
        )
        receiver.start()
        time.sleep(0.2)  # blocked on its bell
        assert store.create_enqueued(first, Enqueue(broker, "requests", b'{"a": 1}', "high", 60, 1)) == (
            first,
            True,
        )
        receiver.join(timeout=5)
        assert got == [[first.id]]  # woken by the commit, not by a poll
        created = store.get(first.id)
        assert created is not None and created.enqueued and created.status is JobStatus.PENDING
        # full (the one above is leased, so still counted): nothing written
        second = _job()
        with pytest.raises(Overloaded, match=r"holds 1 messages \(limit 1\)"):
            store.create_enqueued(second, Enqueue(broker, "requests", b"{}", "normal", None, 1))
        assert store.get(second.id) is None and broker.depth("requests") == 1
        # a repeat of the id is answered first, full or not, and sends nothing
        assert store.create_enqueued(first, Enqueue(broker, "requests", b"{}", "normal", None, 1)) == (
            created,
            False,
        )
        assert broker.depth("requests") == 1
    finally:
        broker.close()
        store.close()
        elsewhere.close()
