"""The broker contract (nearline/brokers/base.py), run on every backend.

A backend joins the suite with one entry in ``BROKERS``: a factory ``(tmp_path) -> Broker``.
A server-backed factory, like ``_redis``, calls ``require_server`` first (the test skips on a
laptop without the server and fails under ``CI=true``), uses a database or namespace of its own
and empties it, and its entry carries the server's marker. Each test also uses a queue name of
its own, so a shared server never leaks messages from one test into another.

Leases are short (0.2-0.5 s) and every wait is a poll with a bound, so a backend that breaks
the contract fails fast instead of hanging.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import require_server

from nearline.brokers import Broker, Delivery, LeaseLost
from nearline.brokers.memory import MemoryBroker
from nearline.brokers.sqlite import SqliteBroker
from nearline.dead_letters import redrive

#: Redis database of this suite (other suites use other numbers), emptied before each test.
REDIS_DB = 13


def _memory(tmp_path: Path) -> Broker:
    return MemoryBroker()  # a fresh one: open_broker("memory://") would share queues between tests


def _sqlite(tmp_path: Path) -> Broker:
    return SqliteBroker(f"sqlite:///{tmp_path / 'nearline.db'}")


def _redis(tmp_path: Path) -> Broker:
    require_server("Redis", "127.0.0.1", 6379)
    import redis

    from nearline.brokers.redis_streams import RedisBroker

    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    with redis.Redis.from_url(url) as r:
        r.flushdb()
    return RedisBroker(url)


def _servicebus(tmp_path: Path) -> Broker:
    # Live only: no Service Bus is reachable from CI or these machines (docs/azure.md, testing), so a missing
    # namespace is a skip even under CI=true, reported as such. Throwaway queues, created with
    # duplicate detection, are deleted by Service Bus after 5 idle minutes.
    from nearline.brokers.servicebus import ServiceBusBroker

    namespace = os.environ.get("NEARLINE_SERVICEBUS_NAMESPACE")
    url = os.environ.get("NEARLINE_SERVICEBUS_CONNECTION") or (
        f"servicebus://{namespace}" if namespace else ""
    )
    if not url:
        pytest.skip(
            "no Service Bus namespace: set NEARLINE_SERVICEBUS_NAMESPACE or NEARLINE_SERVICEBUS_CONNECTION"
        )
    return ServiceBusBroker(url, create_queues=True, idle_delete_s=300)


BROKERS = [
    pytest.param(_memory, id="memory"),
    pytest.param(_sqlite, id="sqlite"),
    pytest.param(_redis, id="redis", marks=pytest.mark.redis),
    pytest.param(_servicebus, id="servicebus", marks=pytest.mark.slow),
]


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    factory: Callable[[Path], Broker] = request.param
    b = factory(tmp_path)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def queue() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def receive_one(broker: Broker, queue: str, wait_s: float = 3.0, lease_s: float = 5.0) -> Delivery:
    got = broker.receive(queue, 1, wait_s=wait_s, lease_s=lease_s)
    assert len(got) == 1, f"nothing received from {queue} within {wait_s} s"
    return got[0]


def test_send_receive_complete(broker: Broker, queue: str) -> None:
    before = time.time()
    broker.send(queue, b'{"x":1}', message_id="m1")
    d = receive_one(broker, queue)
    assert (d.queue, d.message_id, d.body, d.lane, d.delivery_count) == (queue, "m1", b'{"x":1}', "normal", 1)
    assert d.lease_token
    assert before - 1 <= d.enqueued_at <= time.time() + 1
    broker.complete(d)
    assert broker.depth(queue) == 0
    assert broker.receive(queue, 10, wait_s=0) == []


def test_receive_returns_at_most_max_messages(broker: Broker, queue: str) -> None:
    for i in range(5):
        broker.send(queue, b"x", message_id=f"m{i}")
    assert len(broker.receive(queue, 3, wait_s=1)) == 3
    assert len(broker.receive(queue, 10, wait_s=1)) == 2
    assert broker.receive(queue, 10, wait_s=0) == []


def test_receive_waits_then_returns_empty(broker: Broker, queue: str) -> None:
    start = time.monotonic()
    assert broker.receive(queue, 10, wait_s=0.3) == []
    assert 0.28 <= time.monotonic() - start < 1.3


def test_receive_wakes_promptly_on_send_from_another_thread(broker: Broker, queue: str) -> None:
    sender = threading.Timer(0.1, lambda: broker.send(queue, b"late", message_id="late"))
    start = time.monotonic()
    sender.start()
    try:
        got = broker.receive(queue, 10, wait_s=5)
    finally:
        sender.join()
    assert [d.body for d in got] == [b"late"]
    assert time.monotonic() - start < 1.0


def test_lanes_drained_high_then_normal_then_low(broker: Broker, queue: str) -> None:
    for mid, lane in [("l1", "low"), ("n1", "normal"), ("h1", "high"), ("l2", "low"), ("n2", "normal")]:
        broker.send(queue, mid.encode(), message_id=mid, lane=lane)
    broker.send(queue, b"h2", message_id="h2", lane="high")
    one_by_one = [receive_one(broker, queue) for _ in range(6)]
    assert [d.message_id for d in one_by_one] == ["h1", "h2", "n1", "n2", "l1", "l2"]
    assert [d.lane for d in one_by_one] == ["high", "high", "normal", "normal", "low", "low"]


def test_lanes_ordered_within_one_batch(broker: Broker, queue: str) -> None:
    for mid, lane in [("l1", "low"), ("n1", "normal"), ("h1", "high")]:
        broker.send(queue, b"x", message_id=mid, lane=lane)
    assert [d.message_id for d in broker.receive(queue, 10, wait_s=1)] == ["h1", "n1", "l1"]


def test_unknown_lane_is_refused(broker: Broker, queue: str) -> None:
    with pytest.raises(ValueError, match="lane"):
        broker.send(queue, b"x", message_id="m", lane="urgent")
    assert broker.depth(queue) == 0


def test_fifo_within_a_lane(broker: Broker, queue: str) -> None:
    ids = [f"m{i:02d}" for i in range(20)]
    for mid in ids:
        broker.send(queue, b"x", message_id=mid)
    got: list[str] = []
    while len(got) < len(ids):
        batch = broker.receive(queue, 7, wait_s=1)
        assert batch, "queue ran dry early"
        got += [d.message_id for d in batch]
    assert got == ids


def test_send_is_idempotent_while_queued_or_leased(broker: Broker, queue: str) -> None:
    broker.send(queue, b"first", message_id="dup")
    broker.send(queue, b"second", message_id="dup")
    assert broker.depth(queue) == 1
    d = receive_one(broker, queue)
    assert d.body == b"first"
    broker.send(queue, b"third", message_id="dup")  # while leased
    assert broker.depth(queue) == 1
    assert broker.receive(queue, 10, wait_s=0) == []
    broker.complete(d)
    assert broker.depth(queue) == 0


def test_lease_expiry_redelivers_with_count_plus_one(broker: Broker, queue: str) -> None:
    broker.send(queue, b"x", message_id="m")
    first = receive_one(broker, queue, lease_s=0.3)
    leased_at = time.monotonic()
    assert broker.receive(queue, 10, wait_s=0) == []  # hidden while leased
    again = receive_one(broker, queue, wait_s=3)
    assert time.monotonic() - leased_at >= 0.25
    assert (again.message_id, again.delivery_count) == ("m", 2)
    assert again.lease_token != first.lease_token
    broker.complete(again)
    assert broker.depth(queue) == 0


def test_abandon_redelivers_at_once_and_keeps_the_count(broker: Broker, queue: str) -> None:
    broker.send(queue, b"x", message_id="m")
    broker.abandon(receive_one(broker, queue, lease_s=30))
    again = broker.receive(queue, 10, wait_s=0.5, lease_s=30)
    assert [(d.message_id, d.delivery_count) for d in again] == [("m", 2)]


def test_dead_letter_moves_the_message_out_of_the_queue(broker: Broker, queue: str) -> None:
    broker.send(queue, b'{"bad":true}', message_id="poison")
    broker.send(queue, b"ok", message_id="fine")
    broker.abandon(receive_one(broker, queue))
    d = receive_one(broker, queue)
    broker.dead_letter(d, "PoisonMessage: delivered too often")
    assert broker.depth(queue) == 1
    assert [m.message_id for m in broker.receive(queue, 10, wait_s=0)] == ["fine"]
    [dead] = broker.dead_letters(queue)
    assert (dead.queue, dead.message_id, dead.body) == (queue, "poison", b'{"bad":true}')
    assert (dead.reason, dead.delivery_count) == ("PoisonMessage: delivered too often", 2)


def test_redrive_sends_a_dead_letter_back_to_its_lane_with_a_fresh_count(broker: Broker, queue: str) -> None:
    broker.send(queue, b'{"priority":"high"}', message_id="poison", lane="high")
    broker.send(queue, b"other", message_id="other")
    for _ in range(2):
        d = receive_one(broker, queue)
        broker.dead_letter(d, f"reason {d.message_id}")
    [first, second] = broker.dead_letters(queue)
    assert (first.message_id, first.lane, second.lane) == ("poison", "high", "normal")
    assert first.dead_at is None or abs(first.dead_at - time.time()) < 60
    assert redrive(broker, None, queue, ["poison", "never-dead"]) == ["poison"]
    assert [d.message_id for d in broker.dead_letters(queue)] == ["other"]
    broker.send(queue, b"later", message_id="later")  # normal lane: the redriven one goes first
    again = receive_one(broker, queue)
    assert (again.message_id, again.body, again.lane) == ("poison", b'{"priority":"high"}', "high")
    assert again.delivery_count == 1
    broker.complete(again)


def test_purge_dead_letters_deletes_only_those_named(broker: Broker, queue: str) -> None:
    broker.send_many(queue, [("a", b"1"), ("b", b"2"), ("c", b"3")])
    for d in broker.receive(queue, 3, wait_s=3):
        broker.dead_letter(d, "r")
    assert broker.purge_dead_letters(queue, ["a", "c", "missing"]) == 2
    assert [d.message_id for d in broker.dead_letters(queue)] == ["b"]
    assert broker.purge_dead_letters(queue, []) == 0
    assert broker.depth(queue) == 0


def test_settling_with_a_stale_lease_raises_lease_lost_and_changes_nothing(
    broker: Broker, queue: str
) -> None:
    broker.send(queue, b"x", message_id="m")
    stale = receive_one(broker, queue, lease_s=0.2)
    current = receive_one(broker, queue, wait_s=3, lease_s=30)
    assert current.delivery_count == 2
    for settle in (broker.complete, broker.abandon, lambda d: broker.dead_letter(d, "r")):
        with pytest.raises(LeaseLost):
            settle(stale)
    assert broker.depth(queue) == 1
    assert broker.dead_letters(queue) == []
    assert broker.receive(queue, 10, wait_s=0) == []  # still leased to `current`
    broker.complete(current)
    assert broker.depth(queue) == 0


def test_depth_counts_waiting_and_leased_not_dead_lettered(broker: Broker, queue: str) -> None:
    assert broker.depth(queue) == 0
    for i, lane in enumerate(["high", "normal", "low", "low"]):
        broker.send(queue, b"x", message_id=f"m{i}", lane=lane)
    assert broker.depth(queue) == 4
    leased = broker.receive(queue, 2, wait_s=1)
    assert broker.depth(queue) == 4
    broker.dead_letter(leased[0], "test")
    broker.complete(leased[1])
    assert broker.depth(queue) == 2
    assert broker.depth(f"{queue}-other") == 0


def test_expired_messages_are_dropped_not_delivered(broker: Broker, queue: str) -> None:
    broker.send(queue, b"held", message_id="held", ttl_s=0.2)
    held = receive_one(broker, queue, lease_s=30)
    broker.send(queue, b"short", message_id="short", ttl_s=0.2)
    broker.send(queue, b"long", message_id="long", ttl_s=60)
    broker.send(queue, b"forever", message_id="forever")
    time.sleep(0.3)  # the TTL must pass; nothing to poll for
    assert broker.depth(queue) == 3  # held (leased), long, forever
    got = broker.receive(queue, 10, wait_s=0.2)
    assert sorted(d.message_id for d in got) == ["forever", "long"]
    broker.complete(held)  # a TTL passing during a lease leaves the message to its receiver


def test_bodies_are_bytes_and_round_trip_exactly(broker: Broker, queue: str) -> None:
    bodies = {
        "json": json.dumps({"text": "Zürich ¿qué? 東京 🙂", "n": [1.5, None]}, ensure_ascii=False).encode(),
        "binary": bytes(range(256)),
        "empty": b"",
    }
    for mid, body in bodies.items():
        broker.send(queue, body, message_id=mid)
    got = broker.receive(queue, 10, wait_s=1)
    assert {d.message_id: d.body for d in got} == bodies
    assert all(type(d.body) is bytes for d in got)
    assert json.loads(got[0].body)["text"] == "Zürich ¿qué? 東京 🙂"


def test_send_many_and_complete_many(broker: Broker, queue: str) -> None:
    broker.send_many(queue, [("a", b"1"), ("b", b"2"), ("a", b"again")], lane="high")
    assert broker.depth(queue) == 2
    stale = broker.receive(queue, 10, wait_s=1, lease_s=0.2)
    current: list[Delivery] = []
    deadline = time.monotonic() + 3
    while len(current) < 2 and time.monotonic() < deadline:
        current += broker.receive(queue, 10, wait_s=1, lease_s=30)  # after the short lease
    assert [(d.message_id, d.delivery_count) for d in current] == [("a", 2), ("b", 2)]
    assert broker.complete_many([*stale, *current]) == stale
    assert broker.depth(queue) == 0


def test_send_many_skips_ids_already_queued_and_keeps_its_order(broker: Broker, queue: str) -> None:
    broker.send_many(queue, [], lane="low")  # nothing to send: no error, nothing queued
    broker.send(queue, b"old", message_id="b")
    broker.send_many(queue, [("a", b"1"), ("b", b"2"), ("c", b"3")])
    got = broker.receive(queue, 10, wait_s=1)
    assert [(d.message_id, d.body) for d in got] == [("b", b"old"), ("a", b"1"), ("c", b"3")]
    assert broker.complete_many(got) == []


def test_concurrent_receivers_get_each_message_exactly_once(broker: Broker, queue: str) -> None:
    ids = {f"m{i:03d}" for i in range(300)}
    broker.send_many(queue, [(mid, mid.encode()) for mid in sorted(ids)])
    seen: list[tuple[str, int]] = []
    seen_lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while broker.depth(queue):
                batch = broker.receive(queue, 16, wait_s=0.05, lease_s=30)
                with seen_lock:
                    seen.extend((d.message_id, d.delivery_count) for d in batch)
                for d in batch:
                    broker.complete(d)
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors
    assert not any(t.is_alive() for t in threads)
    assert sorted(mid for mid, _ in seen) == sorted(ids)
    assert {count for _, count in seen} == {1}
