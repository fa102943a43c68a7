"""The Redis broker beyond the contract: what it keeps in Redis and how it recovers.

The contract (``tests/test_brokers.py``) runs on Redis too; these tests look inside: the pending
list (XPENDING) as the source of delivery counts and leases, recovery with XAUTOCLAIM across
consumers, the dead-letter stream, trimming, the claim check and errors. Database 11, emptied
before and after each test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from conftest import redis_database

from nearline.brokers import open_broker
from nearline.brokers.base import Delivery, LeaseLost
from nearline.brokers.redis_keys import GROUP, bell_key, dead_key, stream_key
from nearline.brokers.redis_streams import LEASE_HORIZON_S, RedisBroker
from nearline.claim_check import DEFAULT_CLAIM_CHECK_BYTES, ClaimCheck
from nearline.errors import BrokerError, ConfigError

pytestmark = pytest.mark.redis

DB = 11
URL = f"redis://127.0.0.1:6379/{DB}"
Q = "q"


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    with redis_database(DB) as client:
        yield client


@pytest.fixture
def brokers(r: redis.Redis) -> Iterator[list[RedisBroker]]:
    """Two brokers on one database: two processes' worth of consumers."""
    opened = [RedisBroker(URL), RedisBroker(URL)]
    try:
        yield opened
    finally:
        for b in opened:
            b.close()


def pending(r: redis.Redis, lane: str = "normal") -> list[dict[str, object]]:
    return r.xpending_range(stream_key(Q, lane), GROUP, "-", "+", 100)  # type: ignore[return-value]


def receive_one(b: RedisBroker, lease_s: float = 30.0, wait_s: float = 3.0) -> Delivery:
    got = b.receive(Q, 1, wait_s=wait_s, lease_s=lease_s)
    assert len(got) == 1
    return got[0]


def test_open_broker_and_consumer_names(r: redis.Redis) -> None:
    b = open_broker(f"redis://:secret@127.0.0.1:6379/{DB}?claim_check_bytes=1024")
    try:
        assert isinstance(b, RedisBroker)
        assert "secret" not in b.url
        assert b.claim_check.threshold == 1024
        host, pid, tag = b.consumer.split(":")
        assert host and int(pid) > 0 and len(tag) == 8
    finally:
        b.close()


def test_expired_lease_is_recovered_by_another_consumer_with_xautoclaim(
    r: redis.Redis, brokers: list[RedisBroker]
) -> None:
    dead, alive = brokers
    dead.send(Q, b"x", message_id="m")
    first = receive_one(dead, lease_s=0.3)
    [entry] = pending(r)
    assert (entry["consumer"], entry["times_delivered"]) == (dead.consumer.encode(), 1)
    assert alive.receive(Q, 10, wait_s=0) == []  # leased: invisible to other consumers
    again = receive_one(alive)  # the lease runs out; XAUTOCLAIM hands it over
    assert (again.message_id, again.body, again.delivery_count) == ("m", b"x", 2)
    [entry] = pending(r)
    assert (entry["consumer"], entry["times_delivered"]) == (alive.consumer.encode(), 2)
    with pytest.raises(LeaseLost):
        dead.complete(first)
    alive.complete(again)
    assert pending(r) == [] and r.xlen(stream_key(Q, "normal")) == 0


def test_delivery_count_is_the_pending_lists_counter(r: redis.Redis, brokers: list[RedisBroker]) -> None:
    b = brokers[0]
    b.send(Q, b"x", message_id="m")
    counts = []
    for _ in range(3):
        d = receive_one(b, lease_s=0.2)
        counts.append(d.delivery_count)
        assert pending(r)[0]["times_delivered"] == d.delivery_count
    b.abandon(receive_one(b))  # abandon keeps the count ...
    assert pending(r)[0]["times_delivered"] == 4
    assert receive_one(b).delivery_count == 5  # ... and the next delivery adds one
    assert counts == [1, 2, 3]


def test_a_lease_that_ran_out_is_lost_even_if_nobody_took_the_message(
    r: redis.Redis, brokers: list[RedisBroker]
) -> None:
    b = brokers[0]
    b.send(Q, b"x", message_id="m")
    d = receive_one(b, lease_s=0.2)
    time.sleep(0.3)  # the lease must run out; nothing to poll for
    for settle in (b.complete, b.abandon, lambda x: b.dead_letter(x, "r")):
        with pytest.raises(LeaseLost):
            settle(d)
    assert b.depth(Q) == 1 and b.dead_letters(Q) == []
    assert receive_one(b).delivery_count == 2


def test_abandon_sets_the_idle_clock_to_the_horizon_and_keeps_the_count(
    r: redis.Redis, brokers: list[RedisBroker]
) -> None:
    a, b = brokers
    a.send(Q, b"x", message_id="m")
    a.abandon(receive_one(a, lease_s=600))
    [entry] = pending(r)
    assert int(entry["time_since_delivered"]) >= LEASE_HORIZON_S * 1000  # type: ignore[call-overload]
    assert entry["times_delivered"] == 1
    again = receive_one(b, wait_s=1.0)  # the other consumer claims it at once
    assert again.delivery_count == 2
    b.complete(again)


def test_dead_letter_stream_keeps_body_reason_and_count(r: redis.Redis, brokers: list[RedisBroker]) -> None:
    b = brokers[0]
    b.send(Q, b"poison", message_id="p", lane="high")
    b.abandon(receive_one(b))
    b.dead_letter(receive_one(b), "PoisonMessage: delivered 2 times")
    rows: Any = r.xrange(dead_key(Q))
    [(_, fields)] = rows
    assert fields == {
        b"id": b"p",
        b"reason": b"PoisonMessage: delivered 2 times",
        b"count": b"2",
        b"lane": b"high",
        b"body": b"poison",
    }
    assert r.xlen(stream_key(Q, "high")) == 0 and pending(r, "high") == []
    b.send(Q, b"again", message_id="p")  # the id is free once the message is gone
    assert receive_one(b).body == b"again"


def _streams_and_bell(lanes: tuple[str, ...]) -> list[bytes]:
    """The keys a queue keeps when it holds nothing: its lane streams and its bell."""
    return sorted([*(stream_key(Q, lane).encode() for lane in lanes), bell_key(Q).encode()])


def test_completed_entries_do_not_accumulate(r: redis.Redis, brokers: list[RedisBroker]) -> None:
    b = brokers[0]
    lanes = ("high", "normal", "low")
    for i in range(300):
        b.send(Q, b"x" * 100, message_id=f"m{i}", lane=lanes[i % 3], ttl_s=60)
    assert b.depth(Q) == 300 and r.zcard(f"{Q}:expiry") == 300
    while batch := b.receive(Q, 64, wait_s=0):
        assert b.complete_many(batch) == []
    assert b.depth(Q) == 0
    assert all(r.xlen(stream_key(Q, lane)) == 0 for lane in lanes)
    assert all(r.xinfo_groups(stream_key(Q, lane))[0]["pending"] == 0 for lane in lanes)
    # Only the three (empty) lane streams and the bell (one token at most) are left: no id keys,
    # no expiry entries.
    assert sorted(r.keys()) == _streams_and_bell(lanes)
    assert r.llen(bell_key(Q)) == 1


def test_expired_messages_leave_no_keys_behind(r: redis.Redis, brokers: list[RedisBroker]) -> None:
    b = brokers[0]
    b.send(Q, b"a", message_id="a", ttl_s=0.1)
    b.send(Q, b"b" * 2000, message_id="b", ttl_s=0.1)
    b.claim_check = ClaimCheck(100)
    b.send(Q, b"c" * 2000, message_id="c", ttl_s=0.1)  # claim-checked
    time.sleep(0.2)  # the TTL must pass
    assert b.receive(Q, 10, wait_s=0) == []
    assert b.depth(Q) == 0
    assert sorted(r.keys()) == _streams_and_bell(("high", "normal", "low"))


def test_reclaimed_messages_still_come_in_lane_order(r: redis.Redis, brokers: list[RedisBroker]) -> None:
    b = brokers[0]
    b.send(Q, b"x", message_id="low-old", lane="low")
    receive_one(b, lease_s=0.2)  # leased, then left to expire
    b.send(Q, b"x", message_id="normal-new", lane="normal")
    b.send(Q, b"x", message_id="high-new", lane="high")
    time.sleep(0.3)
    got = b.receive(Q, 10, wait_s=1)
    assert [(d.message_id, d.delivery_count) for d in got] == [
        ("high-new", 1),
        ("normal-new", 1),
        ("low-old", 2),
    ]


def test_a_waiting_receiver_wakes_for_any_lane(brokers: list[RedisBroker]) -> None:
    receiver, sender = brokers
    for lane in ("low", "high"):
        timer = threading.Timer(0.2, sender.send, args=(Q, b"x"), kwargs={"message_id": lane, "lane": lane})
        start = time.monotonic()
        timer.start()
        try:
            got = receiver.receive(Q, 10, wait_s=5)
        finally:
            timer.join()
        assert [d.message_id for d in got] == [lane]
        assert time.monotonic() - start < 1.0


def test_two_consumers_share_the_work_without_duplicates(brokers: list[RedisBroker]) -> None:
    ids = {f"m{i}" for i in range(400)}
    brokers[0].send_many(Q, [(m, m.encode()) for m in sorted(ids)])
    seen: list[str] = []
    lock = threading.Lock()

    def work(b: RedisBroker) -> None:
        while batch := b.receive(Q, 16, wait_s=0.2):
            with lock:
                seen.extend(d.message_id for d in batch)
            assert b.complete_many(batch) == []

    threads = [threading.Thread(target=work, args=(b,)) for b in brokers for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(seen) == sorted(ids)


def test_claim_check_round_trip_and_blob_cleanup(r: redis.Redis) -> None:
    b = RedisBroker(f"{URL}?claim_check_bytes=65536")
    try:
        big = bytes(range(256)) * 4096  # 1 MiB
        b.send(Q, big, message_id="big", ttl_s=60)
        b.send(Q, b"other", message_id="big")  # idempotent: the blob is not overwritten
        b.send(Q, b"small", message_id="small")
        rows: Any = r.xrange(stream_key(Q, "normal"))
        entries = {f[b"id"]: f for _, f in rows}
        assert b"body" not in entries[b"big"] and entries[b"big"][b"blob"] == b"1"
        assert entries[b"small"][b"body"] == b"small"
        blob = ClaimCheck.blob_key(Q, "big")
        assert r.get(blob) == big
        assert 60 < r.ttl(blob) <= 60 + 3600
        got = {d.message_id: d for d in b.receive(Q, 10, wait_s=1)}
        assert got["big"].body == big and got["small"].body == b"small"
        b.complete(got["big"])
        assert not r.exists(blob)
        b.send(Q, big, message_id="doomed")
        b.dead_letter(receive_one(b), "test")
        assert not r.exists(ClaimCheck.blob_key(Q, "doomed"))
        assert [d.body for d in b.dead_letters(Q)] == [big]  # the dead letter keeps the body
    finally:
        b.close()


def test_claim_check_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEARLINE_CLAIM_CHECK_BYTES", raising=False)
    assert ClaimCheck.configured().threshold == DEFAULT_CLAIM_CHECK_BYTES
    monkeypatch.setenv("NEARLINE_CLAIM_CHECK_BYTES", "1000")
    assert ClaimCheck.configured().threshold == 1000
    assert ClaimCheck.configured("10").threshold == 10  # the URL option wins
    assert not ClaimCheck(0).needed(b"x" * 10_000_000)  # 0: off
    with pytest.raises(ConfigError, match="whole number"):
        ClaimCheck.configured("lots")


def test_streams_deleted_under_the_broker_are_recreated(r: redis.Redis, brokers: list[RedisBroker]) -> None:
    b = brokers[0]
    b.send(Q, b"x", message_id="a")
    r.flushdb()  # groups gone: the next call meets NOGROUP and recreates them
    b.send(Q, b"y", message_id="b")
    assert [d.message_id for d in b.receive(Q, 10, wait_s=1)] == ["b"]


def test_close_forgets_this_consumer_when_it_holds_nothing(r: redis.Redis) -> None:
    b = RedisBroker(URL)
    b.send(Q, b"x", message_id="m")
    b.complete(receive_one(b))
    assert [c["name"] for c in r.xinfo_consumers(stream_key(Q, "normal"), GROUP)] == [b.consumer.encode()]
    b.close()
    assert r.xinfo_consumers(stream_key(Q, "normal"), GROUP) == []


def test_an_unreachable_redis_is_a_broker_error() -> None:
    b = RedisBroker("redis://127.0.0.1:1/0?socket_connect_timeout=0.5")
    try:
        with pytest.raises(BrokerError, match="redis broker"):
            b.receive(Q, 1, wait_s=0)
        with pytest.raises(BrokerError):
            b.send(Q, b"x", message_id="m")
    finally:
        b.close()


def test_a_short_wait_is_not_rounded_up_to_the_servers_hz(brokers: list[RedisBroker]) -> None:
    # Redis times out a blocked XREAD only hz (10) times a second; the worker's 5 ms batch-fill
    # wait must not become ~100 ms. Median of several, so one scheduling hiccup cannot fail it.
    b = brokers[0]
    took = []
    for _ in range(5):
        started = time.monotonic()
        assert b.receive("short", 10, 0.02) == []
        took.append(time.monotonic() - started)
    assert sorted(took)[2] < 0.08, took
