"""Micro-batching: a free worker takes the open batch at once; it is never bigger than max_batch;
with a wait, a batch is released on size or on time, never later."""

from __future__ import annotations

import threading
import time

import pytest

from nearline.batching import BatchQueue, group_by
from nearline.brokers.memory import MemoryBroker


def test_a_free_worker_takes_a_lone_item_at_once() -> None:
    pending: BatchQueue[str] = BatchQueue(max_batch=32)
    pending.put(["a"])
    started = time.monotonic()
    assert pending.take(timeout=5) == ["a"]
    assert time.monotonic() - started < 1.0  # not the timeout: nothing waits for company


def test_what_arrives_while_the_worker_computes_is_the_next_batch() -> None:
    pending: BatchQueue[int] = BatchQueue(max_batch=8)
    pending.put([1])
    assert pending.take() == [1]
    pending.put([2, 3])  # the worker is busy with [1]: these gather
    pending.put([4])
    assert pending.take() == [2, 3, 4]


def test_room_never_lets_a_batch_pass_max_batch() -> None:
    pending: BatchQueue[int] = BatchQueue(max_batch=3)
    assert pending.room(timeout=0) == 3
    pending.put([1, 2])
    assert pending.room(timeout=0) == 1
    pending.put([3])
    assert pending.room(timeout=0.01) == 0  # full: waits the timeout, then says so
    with pytest.raises(ValueError):
        pending.put([4])
    assert pending.take() == [1, 2, 3]
    assert pending.room(timeout=0) == 3


def test_room_wakes_when_the_worker_takes_the_batch() -> None:
    pending: BatchQueue[int] = BatchQueue(max_batch=1)
    pending.put([1])
    taker = threading.Timer(0.05, pending.take)
    taker.start()
    try:
        assert pending.room(timeout=10) == 1
    finally:
        taker.join()


def test_take_times_out_empty() -> None:
    pending: BatchQueue[int] = BatchQueue(max_batch=4)
    assert pending.take(timeout=0.01) == []


def test_with_a_wait_a_batch_is_released_on_time_with_what_it_has() -> None:
    pending: BatchQueue[str] = BatchQueue(max_batch=32, max_wait_s=0.05)
    pending.put(["a"])
    started = time.monotonic()
    assert pending.take() == ["a"]
    assert time.monotonic() - started >= 0.04  # it waited (about) max_wait_s for company


def test_with_a_wait_a_full_batch_is_released_without_waiting() -> None:
    pending: BatchQueue[int] = BatchQueue(max_batch=4, max_wait_s=60.0)
    filler = threading.Timer(0.02, pending.put, args=([2, 3, 4],))
    pending.put([1])
    filler.start()
    try:
        assert pending.take(timeout=10) == [1, 2, 3, 4]
    finally:
        filler.join()


def test_close_hands_out_what_is_left_then_nothing() -> None:
    pending: BatchQueue[int] = BatchQueue(max_batch=4, max_wait_s=60.0)
    pending.put([1])
    pending.close()
    assert pending.take() == [1]  # not held for the wait: nothing more can come
    assert pending.take() == []  # and no blocking once closed and empty


def test_fills_from_a_real_broker_while_the_worker_is_busy() -> None:
    broker = MemoryBroker()
    pending: BatchQueue[str] = BatchQueue(max_batch=6)
    for i in range(6):
        broker.send("q", b"x", message_id=str(i))
    while room := pending.room(timeout=0):
        got = broker.receive("q", room, 0.1, 5.0)
        if not got:
            break
        pending.put([d.message_id for d in got])
    assert pending.take() == [str(i) for i in range(6)]
    assert broker.receive("q", 10, 0.0) == []  # it leased no more than a batch


def test_rejects_a_zero_batch() -> None:
    with pytest.raises(ValueError):
        BatchQueue(max_batch=0)


def test_group_by_keeps_arrival_order() -> None:
    assert group_by(["a1", "b1", "a2", "b2", "c1"], lambda s: s[0]) == {
        "a": ["a1", "a2"],
        "b": ["b1", "b2"],
        "c": ["c1"],
    }
