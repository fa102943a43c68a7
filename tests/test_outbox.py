"""The callback outbox of every status store (nearline/store/base.py): a job's end writes its
delivery in the same transaction, claims lease deliveries, settles need the claim's token."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import require_server

from nearline.jobs import JobRecord, JobStatus, callback_status
from nearline.store import StatusStore
from nearline.store.memory import MemoryStore
from nearline.store.sqlite import SqliteStore

#: Redis database of this suite (issue #14's), emptied before and after each test.
REDIS_DB = 2
T0 = 1_800_000_000.0
URL = "https://hooks.example.test/done"


def _memory(tmp_path: Path) -> Callable[[], StatusStore]:
    store = MemoryStore()
    return lambda: store  # one process: "another replica" is the same store


def _sqlite(tmp_path: Path) -> Callable[[], StatusStore]:
    return lambda: SqliteStore(f"sqlite:///{tmp_path / 'nearline.db'}")


def _redis(tmp_path: Path) -> Callable[[], StatusStore]:
    require_server("Redis", "127.0.0.1", 6379)
    import redis

    from nearline.store.redis_hashes import RedisStore

    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    with redis.Redis.from_url(url) as r:
        r.flushdb()
    return lambda: RedisStore(url)


@pytest.fixture(
    params=[
        pytest.param(_memory, id="memory"),
        pytest.param(_sqlite, id="sqlite"),
        pytest.param(_redis, id="redis", marks=pytest.mark.redis),
    ]
)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], StatusStore]]:
    """Opens a store on the backend; each call is another replica's view of the same data."""
    opened: list[StatusStore] = []
    factory = request.param(tmp_path)

    def open_one() -> StatusStore:
        opened.append(factory())
        return opened[-1]

    yield open_one
    for s in opened:
        s.close()
    if request.param is _redis:
        import redis

        with redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB) as r:
            r.flushdb()


def ended(store: StatusStore, callback_url: str | None = URL, status: JobStatus = JobStatus.COMPLETED) -> str:
    job_id = uuid.uuid4().hex
    link = f"https://api.example.test/api/jobs/{job_id}"
    record = JobRecord(job_id, "identity", {"x": 1}, created=T0, updated=T0, callback_url=callback_url)
    store.create(replace(record, status_url=link if callback_url else None))
    assert store.finish(job_id, status, {"y": 2}, T0 + 1)
    return job_id


def test_a_job_with_a_callback_url_ends_with_its_delivery_due_and_pending(
    stores: Callable[[], StatusStore],
) -> None:
    store = stores()
    with_cb, without = ended(store), ended(store, callback_url=None)
    assert store.get(with_cb).custom_status == {"callback": callback_status("Pending")}  # type: ignore[union-attr]
    assert store.get(without).custom_status is None  # type: ignore[union-attr]
    assert store.claim_deliveries(T0, 60, 10) == []  # not due before the job's end
    (delivery,) = store.claim_deliveries(T0 + 1, 60, 10)
    assert (delivery.job_id, delivery.url, delivery.created, delivery.attempts) == (with_cb, URL, T0 + 1, 0)
    assert store.get(with_cb).status_url == f"https://api.example.test/api/jobs/{with_cb}"  # type: ignore[union-attr]


@pytest.mark.parametrize("status", [JobStatus.FAILED, JobStatus.TERMINATED])
def test_every_end_writes_a_delivery(stores: Callable[[], StatusStore], status: JobStatus) -> None:
    store = stores()
    job_id = ended(store, status=status)
    assert [d.job_id for d in store.claim_deliveries(T0 + 2, 60, 10)] == [job_id]


def test_a_duplicate_end_writes_no_second_delivery(stores: Callable[[], StatusStore]) -> None:
    store = stores()
    job_id = ended(store)
    assert not store.finish(job_id, JobStatus.FAILED, None, T0 + 2)
    assert len(store.claim_deliveries(T0 + 3, 60, 10)) == 1


def test_a_claimed_delivery_is_not_claimed_again_until_its_lease_ends(
    stores: Callable[[], StatusStore],
) -> None:
    one, other = stores(), stores()
    job_id = ended(one)
    (first,) = one.claim_deliveries(T0 + 1, 30, 10)
    assert other.claim_deliveries(T0 + 30, 30, 10) == []
    (again,) = other.claim_deliveries(T0 + 31, 30, 10)  # the first claimer died
    assert again.job_id == job_id and again.token != first.token
    # The first claimer's settle comes too late: the delivery is the other's now.
    assert not one.settle_delivery(first, callback_status("Delivered", 1, 204), None)
    assert other.settle_delivery(again, callback_status("Delivered", 1, 204), None)


def test_a_settled_retry_is_due_at_its_time_with_its_attempts_and_state_recorded(
    stores: Callable[[], StatusStore],
) -> None:
    store = stores()
    job_id = ended(store)
    (d,) = store.claim_deliveries(T0 + 1, 30, 10)
    state = callback_status("Pending", 1, 503, "503: busy", T0 + 6)
    assert store.settle_delivery(d, state, T0 + 6)
    assert not store.settle_delivery(d, state, T0 + 6)  # a settle ends the claim
    assert store.get(job_id).custom_status == {"callback": state}  # type: ignore[union-attr]
    assert store.claim_deliveries(T0 + 5.9, 30, 10) == []
    (d2,) = store.claim_deliveries(T0 + 6, 30, 10)
    assert d2.attempts == 1
    final = callback_status("Delivered", 2, 200)
    assert store.settle_delivery(d2, final, None)
    assert store.get(job_id).custom_status == {"callback": final}  # type: ignore[union-attr]
    assert store.claim_deliveries(T0 + 10_000, 30, 10) == []  # out of the outbox for good


def test_claims_are_oldest_first_and_limited(stores: Callable[[], StatusStore]) -> None:
    store = stores()
    ids = [ended(store) for _ in range(3)]
    first = store.claim_deliveries(T0 + 1, 30, 2)
    rest = store.claim_deliveries(T0 + 1, 30, 2)
    assert len(first) == 2 and len(rest) == 1
    assert {d.job_id for d in first + rest} == set(ids)


def test_replicas_claiming_at_once_never_get_the_same_delivery(stores: Callable[[], StatusStore]) -> None:
    replicas = [stores() for _ in range(4)]
    ids = {ended(replicas[0]) for _ in range(60)}
    got: list[list[Any]] = [[] for _ in replicas]
    start = threading.Barrier(len(replicas))

    def claim(i: int) -> None:
        start.wait()
        while batch := replicas[i].claim_deliveries(T0 + 1, 30, 5):
            got[i].extend(d.job_id for d in batch)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(replicas))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    claimed = [job_id for batch in got for job_id in batch]
    assert sorted(claimed) == sorted(ids)  # each exactly once


def test_a_purged_jobs_delivery_is_abandoned_not_an_error(stores: Callable[[], StatusStore]) -> None:
    store = stores()
    job_id = ended(store)
    assert store.delete(job_id)
    for d in store.claim_deliveries(T0 + 1, 30, 10):  # SQLite drops it with the row already
        assert store.settle_delivery(d, callback_status("GivenUp", 0), None)
    assert store.get(job_id) is None
    assert store.claim_deliveries(T0 + 100, 30, 10) == []
