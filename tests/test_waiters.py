"""In-process long-poll wake-ups (nearline/waiters.py): a notified id is remembered for a while,
so a waiter registered just after the end is woken at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from nearline import waiters as waiters_module
from nearline.jobs import JobRecord, JobStatus
from nearline.store.sqlite import SqliteStore
from nearline.waiters import Waiters


def test_a_waiter_is_woken_by_the_notify_of_its_job() -> None:
    w = Waiters()

    async def go() -> tuple[bool, bool]:
        fut, other = w.register("a"), w.register("b")
        w.notify("a")
        await asyncio.wait_for(fut, 1)
        return fut.done(), other.done()

    assert asyncio.run(go()) == (True, False)


def test_an_id_notified_before_its_waiter_registered_wakes_it_at_once() -> None:
    w = Waiters()
    w.notify("a")  # the job ended between its create and the register

    async def go() -> bool:
        return w.register("a").done()

    assert asyncio.run(go())
    assert w.waiting() == 0  # nothing left registered for it


def test_a_notified_id_is_forgotten_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waiters_module, "RECENT_S", 0.05)
    w = Waiters()
    w.notify("a")
    time.sleep(0.1)
    w.notify("b")  # a notify drops what expired

    async def go() -> tuple[bool, bool]:
        fa, fb = w.register("a"), w.register("b")
        return fa.done(), fb.done()

    assert asyncio.run(go()) == (False, True)


def test_in_process_waiters_do_not_claim_to_hear_every_end() -> None:
    # a store whose jobs other processes end (SQLite) must read the record before waiting
    assert not Waiters().hears_every_end(time.time())


def test_a_sqlite_finish_hands_the_ended_record_to_a_waiter_here(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    now = time.time()
    for job_id in ("waited", "unwaited"):
        store.create(JobRecord(job_id, "identity", {"x": 1}, created=now, updated=now))

    async def go() -> JobRecord | None:
        fut = store.waiters.register("waited")
        assert store.finish_many(
            [("waited", JobStatus.COMPLETED, {"y": 1}), ("unwaited", JobStatus.COMPLETED, {"y": 2})], now + 1
        ) == [True, True]
        await asyncio.wait_for(fut, 1)
        return store.waiters.take("waited")

    handed = asyncio.run(go())
    assert handed is not None and handed == store.get("waited")  # the row as the finish left it
    assert handed.status is JobStatus.COMPLETED and handed.output == {"y": 1} and handed.updated == now + 1
    assert store.waiters.take("waited") is None  # once
    assert store.waiters.take("unwaited") is None  # nobody waited: nothing kept
    # a compare-and-set that changed nothing hands nothing over
    assert store.finish("waited", JobStatus.FAILED, "late", now + 2) is False
    assert store.waiters.take("waited") is None
    store.close()
