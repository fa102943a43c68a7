"""Redis calls awaited on the event loop (nearline/brokers/redis_loop.py) and the submit that
uses them: answers, errors, and connections never reused with an answer pending."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest
import redis

from nearline.brokers.redis_loop import LoopCalls
from nearline.brokers.redis_streams import RedisBroker
from nearline.constants import REQUEST_QUEUE
from nearline.errors import BrokerError, Overloaded
from nearline.jobs import JobRecord
from nearline.store.base import Enqueue
from nearline.store.redis_hashes import RedisStore
from tests.conftest import redis_database

DB = 9
URL = f"redis://127.0.0.1:6379/{DB}"


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    with redis_database(DB) as client:
        yield client


def test_a_call_answers_on_the_loop_and_keeps_its_connection(r: redis.Redis) -> None:
    calls = LoopCalls(r)

    async def main() -> list[object]:
        await calls.call("SET", "k", "v")
        return await asyncio.gather(*(calls.call("GET", "k") for _ in range(5)))

    try:
        assert asyncio.run(main()) == [b"v"] * 5
        assert 1 <= len(calls._idle) <= 5  # opened as needed, kept for the next calls
    finally:
        calls.close()
    assert calls._idle == []


def test_an_error_answer_is_raised_and_the_connection_stays_usable(r: redis.Redis) -> None:
    calls = LoopCalls(r)

    async def main() -> object:
        with pytest.raises(redis.exceptions.NoScriptError):
            await calls.call("EVALSHA", "0" * 40, 0)
        return await calls.call("PING")

    try:
        assert asyncio.run(main()) == b"PONG"  # raw: no response callback
        assert len(calls._idle) == 1
    finally:
        calls.close()


def test_a_cancelled_call_closes_its_connection_so_no_later_call_reads_its_answer(r: redis.Redis) -> None:
    calls = LoopCalls(r)

    async def main() -> object:
        slow = asyncio.create_task(calls.call("BLPOP", "never", "0.5"))
        await asyncio.sleep(0.05)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert calls._idle == []  # not given back with BLPOP's answer still to come
        r.rpush("never", "late")  # were the connection reused, the next call would read this
        return await calls.call("ECHO", "mine")

    try:
        assert asyncio.run(main()) == b"mine"
    finally:
        calls.close()


def test_an_answer_that_does_not_come_times_out_without_blocking_the_loop(r: redis.Redis) -> None:
    calls = LoopCalls(redis.Redis(host="127.0.0.1", port=6379, db=DB, socket_timeout=0.3))

    async def main() -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        with pytest.raises(redis.TimeoutError, match=r"did not answer within 0\.3 s"):
            await calls.call("BLPOP", "never", "0")  # Redis holds the answer: as a hung server would
        ticker.cancel()
        return ticks

    try:
        assert asyncio.run(main()) >= 10  # the loop kept running while it waited
        assert calls._idle == []  # closed: its answer may still come
    finally:
        calls.close()


def _job(job_id: str) -> JobRecord:
    now = time.time()
    return JobRecord(job_id, "identity", {"x": 1}, created=now, updated=now, deadline=now + 60)


def test_the_submit_on_the_loop_writes_the_record_and_the_message(r: redis.Redis) -> None:
    store, broker = RedisStore(URL), RedisBroker(URL)
    enqueue = Enqueue(broker, REQUEST_QUEUE, b'{"id": "j1"}', "normal", None, 2)
    try:
        assert store.creates_on_loop(broker)
        job = _job("j1")
        assert asyncio.run(store.create_enqueued_on_loop(job, enqueue)) == (job, True)
        assert store.get("j1") is not None and broker.depth(REQUEST_QUEUE) == 1
        found, created = asyncio.run(store.create_enqueued_on_loop(_job("j1"), enqueue))
        assert (found.id, created) == ("j1", False)  # the id is held: nothing written
        assert broker.depth(REQUEST_QUEUE) == 1
        r.script_flush()  # Redis restarted without persistence: the script is loaded again
        _, created = asyncio.run(store.create_enqueued_on_loop(_job("j2"), enqueue))
        assert created and broker.depth(REQUEST_QUEUE) == 2
        with pytest.raises(Overloaded, match="queue holds 2"):  # full: max_depth 2
            asyncio.run(store.create_enqueued_on_loop(_job("j3"), enqueue))
        assert store.get("j3") is None
    finally:
        store.close()
        broker.close()


def test_a_submit_whose_redis_is_gone_fails_as_an_outage_and_leaves_nothing(r: redis.Redis) -> None:
    store, broker = RedisStore(URL), RedisBroker(URL)
    enqueue = Enqueue(broker, REQUEST_QUEUE, b'{"id": "j1"}', "normal", None, 100)
    try:
        store._on_loop = LoopCalls(redis.Redis(host="127.0.0.1", port=_closed_port()))
        with pytest.raises(BrokerError, match="could not enqueue job j1"):
            asyncio.run(store.create_enqueued_on_loop(_job("j1"), enqueue))
        assert store.get("j1") is None and broker.depth(REQUEST_QUEUE) == 0
    finally:
        store.close()
        broker.close()


def _closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])
