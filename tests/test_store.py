"""The status-store contract (nearline/store/base.py), run on every backend.

A backend joins the suite with one entry in ``STORES``: a factory ``(tmp_path) -> StatusStore``.
A server-backed factory, like ``_redis``, calls ``require_server`` first (skip locally, fail
under ``CI=true``), uses a database or key prefix of its own and empties it, and its entry
carries the server's marker.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest
from conftest import require_server
from waiting import wait_until

from nearline.brokers import open_broker
from nearline.jobs import JobRecord, JobStatus, error_output
from nearline.store import StatusStore, open_store
from nearline.store.memory import MemoryStore
from nearline.store.sqlite import SqliteStore

#: Redis database of this suite (other suites use other numbers), emptied before each test.
REDIS_DB = 14
T0 = 1_800_000_000.0  # a fixed "now": the store never reads the clock itself


def _memory(tmp_path: Path) -> StatusStore:
    return MemoryStore()  # a fresh one: open_store("memory://") is shared in the process


def _sqlite(tmp_path: Path) -> StatusStore:
    return SqliteStore(f"sqlite:///{tmp_path / 'nearline.db'}")


def _redis(tmp_path: Path) -> StatusStore:
    require_server("Redis", "127.0.0.1", 6379)
    import redis

    from nearline.store.redis_hashes import RedisStore

    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    with redis.Redis.from_url(url) as r:
        r.flushdb()
    return RedisStore(url)


STORES = [
    pytest.param(_memory, id="memory"),
    pytest.param(_sqlite, id="sqlite"),
    pytest.param(_redis, id="redis", marks=pytest.mark.redis),
]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StatusStore]:
    factory: Callable[[Path], StatusStore] = request.param
    s = factory(tmp_path)
    try:
        yield s
    finally:
        s.close()


def job(**fields: Any) -> JobRecord:
    values: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "pipeline": "digits",
        "input": {"pixels": [0.0] * 64},
        "created": T0,
        "updated": T0,
    }
    values.update(fields)
    return JobRecord(**values)


def test_create_then_get_round_trips_every_field(store: StatusStore) -> None:
    j = job(
        status=JobStatus.RUNNING,
        output={"partial": [1]},
        custom_status={"step": "pre"},
        updated=T0 + 1,
        deadline=T0 + 60,
        priority="high",
        idempotency_key="key-1",
        callback_url="https://example.test/hook",
        idempotency_slot="slot-1",
        fingerprint="fingerprint-1",
        enqueued=False,
        status_url="https://api.example.test/api/jobs/x",
        deployment="v2",
        shadow_of="live-job-1",
        timings={"pre": 0.125, "model": 3.5},
    )
    unset = [
        f.name for f in fields(JobRecord) if f.default is not MISSING and getattr(j, f.name) == f.default
    ]
    assert not unset, f"give {unset} a value here: a field a store drops must fail this test"
    assert store.create(j) == (j, True)
    assert store.get(j.id) == j
    assert store.get("no-such-job") is None


def test_create_is_idempotent_on_the_id(store: StatusStore) -> None:
    first = job()
    store.create(first)
    existing, created = store.create(job(id=first.id, input={"other": True}, created=T0 + 5))
    assert (existing, created) == (first, False)
    assert store.get(first.id) == first


def test_json_fields_round_trip(store: StatusStore) -> None:
    value = {"text": "Zürich ¿qué? 東京 🙂", "nested": {"a": [1, 2.5, None, True, "x"]}, "empty": {}}
    j = job(input=value, custom_status=["a", 1])
    store.create(j)
    assert store.finish(j.id, JobStatus.COMPLETED, {"label": 3, "probabilities": [0.1] * 10}, T0 + 1)
    got = store.get(j.id)
    assert got is not None
    assert got.input == value
    assert got.output == {"label": 3, "probabilities": [0.1] * 10}
    assert got.custom_status == ["a", 1]
    for scalar in ("just a string", 42, None):
        s = job(input=scalar)
        store.create(s)
        assert store.get(s.id) == s


def test_mark_running_moves_only_pending_jobs(store: StatusStore) -> None:
    pending, done = job(), job()
    store.create(pending)
    store.create(done)
    store.finish(done.id, JobStatus.TERMINATED, None, T0 + 1)
    store.mark_running(iter([pending.id, done.id, "no-such-job"]), T0 + 2)
    got = store.get(pending.id)
    assert got is not None
    assert (got.status, got.updated) == (JobStatus.RUNNING, T0 + 2)
    assert store.statuses([done.id]) == {done.id: JobStatus.TERMINATED}
    store.mark_running([pending.id], T0 + 3)  # already Running: unchanged
    assert store.get(pending.id) == got
    store.mark_running([], T0 + 4)


def test_finish_is_compare_and_set(store: StatusStore) -> None:
    j = job()
    store.create(j)
    store.mark_running([j.id], T0 + 1)
    assert store.finish(j.id, JobStatus.COMPLETED, {"label": 1}, T0 + 2) is True
    assert store.finish(j.id, JobStatus.FAILED, error_output("ModelError", "late"), T0 + 3) is False
    got = store.get(j.id)
    assert got is not None
    assert (got.status, got.output, got.updated) == (JobStatus.COMPLETED, {"label": 1}, T0 + 2)
    assert store.finish("no-such-job", JobStatus.COMPLETED, None, T0) is False


def test_finish_many_ends_each_job_as_finish_would(store: StatusStore) -> None:
    # The lifecycle ends a received batch of results with one call (one transaction on SQLite).
    first, second, ended = job(), job(), job()
    for j in (first, second, ended):
        store.create(j)
    store.finish(ended.id, JobStatus.TERMINATED, "stop", T0 + 1)
    heard: list[str] = []
    remove = store.on_finish(heard.append)
    ends = [
        (first.id, JobStatus.COMPLETED, {"label": 1}),
        (ended.id, JobStatus.COMPLETED, {"label": 2}),  # already ended: kept as it was
        ("no-such-job", JobStatus.COMPLETED, None),
        (second.id, JobStatus.FAILED, error_output("ModelError", "boom")),
    ]
    assert store.finish_many(ends, T0 + 2) == [True, False, False, True]
    remove()
    assert heard == [first.id, second.id]
    got = {j.id: store.get(j.id) for j in (first, second, ended)}
    assert {i: (g.status, g.output) for i, g in got.items() if g is not None} == {
        first.id: (JobStatus.COMPLETED, {"label": 1}),
        second.id: (JobStatus.FAILED, error_output("ModelError", "boom")),
        ended.id: (JobStatus.TERMINATED, "stop"),
    }
    assert store.finish_many([], T0 + 3) == []


def test_a_workers_step_timings_are_kept_on_the_ended_record(store: StatusStore) -> None:
    # The dashboard's job page draws them; a job ended otherwise (terminate, deadline) has none.
    one, many, other, stopped = job(), job(), job(), job()
    for j in (one, many, other, stopped):
        store.create(j)
    steps = {"pre": 0.5, "model": 12.25, "post": 0.0}
    assert store.finish(one.id, JobStatus.COMPLETED, {"label": 1}, T0 + 1, steps)
    ends = [(many.id, JobStatus.COMPLETED, {}), (other.id, JobStatus.FAILED, None)]
    assert store.finish_many(ends, T0 + 1, {many.id: {"embed": 7.5}}) == [True, True]
    assert store.finish(stopped.id, JobStatus.TERMINATED, None, T0 + 1)
    got = {j.id: store.get(j.id) for j in (one, many, other, stopped)}
    assert {i: g.timings for i, g in got.items() if g is not None} == {
        one.id: steps,
        many.id: {"embed": 7.5},
        other.id: None,
        stopped.id: None,
    }
    assert list((got[one.id] or job()).timings or {}) == ["pre", "model", "post"]  # in step order
    assert not store.finish(one.id, JobStatus.FAILED, None, T0 + 2, {"late": 1.0})  # the first end stays
    assert (store.get(one.id) or job()).timings == steps


def test_finish_needs_a_terminal_status(store: StatusStore) -> None:
    j = job()
    store.create(j)
    with pytest.raises(ValueError, match="terminal"):
        store.finish(j.id, JobStatus.RUNNING, None, T0 + 1)
    assert store.get(j.id) == j


def test_finish_from_another_thread_wakes_a_waiter(store: StatusStore) -> None:
    j = job()
    store.create(j)

    async def main() -> None:
        fut = store.waiters.register(j.id)
        finisher = threading.Thread(target=store.finish, args=(j.id, JobStatus.COMPLETED, {}, T0 + 1))
        finisher.start()
        try:
            await asyncio.wait_for(fut, timeout=5)
        finally:
            finisher.join()
        # A waiter that comes after the end is woken at once (the end is remembered)...
        late = store.waiters.register(j.id)
        assert late.done()
        # ...and a finish that loses the compare-and-set notifies nobody.
        told: list[str] = []
        remove = store.on_finish(told.append)
        assert store.finish(j.id, JobStatus.FAILED, None, T0 + 2) is False
        remove()
        assert told == []

    asyncio.run(main())
    assert store.waiters.waiting() == 0


def test_delete(store: StatusStore) -> None:
    j = job()
    store.create(j)
    assert store.delete(j.id) is True
    assert store.get(j.id) is None
    assert store.delete(j.id) is False
    assert store.create(j) == (j, True)  # the id is free again


# --- idempotency slots (nearline/idempotency.py): one job per slot, freed with its record -------


def test_a_slot_is_held_by_one_job(store: StatusStore) -> None:
    first = job(idempotency_slot="s", fingerprint="f1")
    assert store.create(first) == (first, True)
    twin = job(idempotency_slot="s", fingerprint="f2")  # another id, the same slot
    assert store.create(twin) == (first, False)
    assert store.get(twin.id) is None
    assert store.keyed("s") == first
    assert store.keyed("no-such-slot") is None
    other = job(idempotency_slot="t")
    assert store.create(other) == (other, True)
    assert store.keyed("t") == other


def test_deleting_a_job_frees_its_slot_for_a_new_job(store: StatusStore) -> None:
    first = job(idempotency_slot="s")
    store.create(first)
    store.finish(first.id, JobStatus.TERMINATED, "", T0 + 1)
    assert store.delete(first.id)
    assert store.keyed("s") is None
    second = job(idempotency_slot="s")
    assert store.create(second) == (second, True)
    assert store.keyed("s") == second
    assert store.create(first) == (second, False)  # the purged job cannot take its slot back
    assert store.get(first.id) is None


def test_retention_frees_the_slots_of_the_records_it_purges(store: StatusStore) -> None:
    old, kept = job(idempotency_slot="old"), job(idempotency_slot="kept")
    store.create(old)
    store.create(kept)
    store.finish(old.id, JobStatus.COMPLETED, {}, T0 + 1)
    assert store.purge_terminal(T0 + 50) == 1
    assert store.keyed("old") is None and store.keyed("kept") == kept
    again = job(idempotency_slot="old")
    assert store.create(again) == (again, True)


def test_mark_enqueued(store: StatusStore) -> None:
    claimed = job(idempotency_slot="s", enqueued=False)
    store.create(claimed)
    assert store.mark_enqueued(claimed.id) is True
    got = store.get(claimed.id)
    assert got is not None and got.enqueued and store.keyed("s") == got
    assert store.mark_enqueued("no-such-job") is False
    assert store.get("no-such-job") is None  # never creates a record


def test_a_slot_expires_with_its_record_on_redis(tmp_path: Path) -> None:
    _redis(tmp_path)  # skips without a server; empties the database
    from nearline.store.redis_hashes import RedisStore

    store = RedisStore(f"redis://127.0.0.1:6379/{REDIS_DB}", retention_s=0.05)
    try:
        first = job(idempotency_slot="s")
        store.create(first)
        store.finish(first.id, JobStatus.COMPLETED, {}, T0 + 1)
        wait_until(lambda: store.get(first.id) is None, 5, "the record's TTL")
        assert store.keyed("s") is None
        second = job(idempotency_slot="s")
        assert store.create(second) == (second, True)
    finally:
        store.close()


def test_overdue_lists_open_jobs_past_their_deadline(store: StatusStore) -> None:
    late_pending = job(deadline=T0 - 10)
    late_running = job(deadline=T0)  # "at or before now"
    on_time = job(deadline=T0 + 10)
    no_deadline = job()
    late_but_done = job(deadline=T0 - 20)
    for j in (late_pending, late_running, on_time, no_deadline, late_but_done):
        store.create(j)
    store.mark_running([late_running.id], T0 - 1)
    store.finish(late_but_done.id, JobStatus.COMPLETED, {}, T0 - 1)
    assert sorted(store.overdue(T0)) == sorted([late_pending.id, late_running.id])
    assert len(store.overdue(T0, limit=1)) == 1
    assert store.overdue(T0 - 100) == []


def test_purge_terminal_deletes_old_terminal_records_only(store: StatusStore) -> None:
    old_done, old_failed, new_done, old_pending, old_running = (job() for _ in range(5))
    for j in (old_done, old_failed, new_done, old_pending, old_running):
        store.create(j)
    store.finish(old_done.id, JobStatus.COMPLETED, {}, T0 + 1)
    store.finish(old_failed.id, JobStatus.FAILED, error_output("DeadlineExceeded", "late"), T0 + 1)
    store.finish(new_done.id, JobStatus.TERMINATED, None, T0 + 100)
    store.mark_running([old_running.id], T0 + 1)
    assert store.purge_terminal(T0 + 50) == 2
    assert store.get(old_done.id) is None
    assert store.get(old_failed.id) is None
    assert {j.id for j in (new_done, old_pending, old_running)} == set(
        store.statuses([new_done.id, old_pending.id, old_running.id])
    )
    assert store.purge_terminal(T0 + 50) == 0


def test_purge_terminal_deletes_more_than_one_chunk(store: StatusStore) -> None:
    for _ in range(1100):  # SQLite deletes in chunks of 1000
        store.create(job(status=JobStatus.COMPLETED, updated=T0))
    keep = job(status=JobStatus.COMPLETED, updated=T0 + 100)
    store.create(keep)
    assert store.purge_terminal(T0 + 50) == 1100
    assert store.get(keep.id) == keep


def test_statuses_of_many_ids(store: StatusStore) -> None:
    jobs = [job() for _ in range(600)]  # more than one IN (...) chunk
    for j in jobs:
        store.create(j)
    store.mark_running([jobs[0].id], T0 + 1)
    store.finish(jobs[1].id, JobStatus.TERMINATED, None, T0 + 1)
    got = store.statuses([j.id for j in jobs] + ["no-such-job"])
    assert len(got) == 600
    assert (got[jobs[0].id], got[jobs[1].id], got[jobs[2].id]) == (
        JobStatus.RUNNING,
        JobStatus.TERMINATED,
        JobStatus.PENDING,
    )
    assert store.statuses([]) == {}


def test_finish_listeners_hear_each_end_once(store: StatusStore) -> None:
    heard: list[str] = []
    remove = store.on_finish(heard.append)
    store.create(JobRecord("l1", "p", None))
    assert store.finish("l1", JobStatus.TERMINATED, "bye", 1.0)
    assert not store.finish("l1", JobStatus.COMPLETED, {}, 2.0)  # already ended: nothing to hear
    remove()
    store.create(JobRecord("l2", "p", None))
    store.finish("l2", JobStatus.COMPLETED, {}, 3.0)
    assert heard == ["l1"]


def test_memory_urls_share_one_store_and_one_broker_per_process() -> None:
    url = f"memory://shared-{uuid.uuid4().hex}"
    store, broker = open_store(url), open_broker(url)
    assert open_store(url) is store and open_broker(url) is broker
    assert isinstance(store, MemoryStore) and store is not broker  # one of each per URL
    assert open_store(f"{url}-other") is not store
