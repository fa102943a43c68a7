"""Micro-batching: a free worker takes the open batch at once; it is never bigger than max_batch;
with a wait, a batch is released on size or on time, never later."""

from __future__ import annotations

import threading
import time

import pytest

from nearline.batching import BatchQueue, group_by
from nearline.brokers.memory import MemoryBroker
from nearline.windows import cut


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


def by(lane: int, length: int, due: float) -> tuple[int, int, float]:
    return (lane, length, due)


def test_cut_makes_batches_of_similar_length_of_even_sizes() -> None:
    lengths = [50, 3, 40, 7, 45, 5, 1, 60, 2, 55]
    batches = cut(lengths, 4, lambda n: (0, n, 0.0))
    assert sorted(n for b in batches for n in b) == sorted(lengths)  # every item, once
    assert [len(b) for b in batches] == [3, 3, 4]  # ten in as few batches of 4 as can be, even
    assert batches == [[1, 2, 3], [5, 7, 40], [45, 50, 55, 60]]


def test_cut_puts_lanes_first_then_the_earliest_deadline() -> None:
    items = [by(1, 10, 5.0), by(1, 90, 1.0), by(0, 50, 9.0), by(2, 1, 0.0), by(1, 20, 6.0), by(1, 95, 7.0)]
    batches = cut(items, 2, lambda it: it)
    assert batches == [
        [by(0, 50, 9.0)],  # the high lane, however late its deadline
        [by(1, 90, 1.0), by(1, 95, 7.0)],  # the long ones: they hold the lane's earliest deadline
        [by(1, 10, 5.0), by(1, 20, 6.0)],
        [by(2, 1, 0.0)],  # the low lane last, however early its deadline
    ]


def test_what_fits_one_batch_is_taken_whole_in_arrival_order() -> None:
    pending: BatchQueue[int] = BatchQueue(max_batch=4, window=12, measure=lambda n: (0, n, 0.0))
    pending.put([9, 1, 5])
    assert pending.take(timeout=1) == [9, 1, 5]


def test_a_window_is_taken_a_batch_of_similar_length_at_a_time() -> None:
    # due by n % 7: 70 is the most urgent, so the long batch goes first, then the short one
    pending: BatchQueue[int] = BatchQueue(max_batch=4, window=9, measure=lambda n: (0, n, float(n % 7)))
    assert pending.room(timeout=0) == 9
    pending.put([70, 1, 71, 2, 72, 3, 73])
    assert pending.room(timeout=0) == 2
    assert pending.take(timeout=1) == [70, 71, 72, 73]
    pending.put([4])  # arrived meanwhile: cut with what waits
    assert pending.take(timeout=1) == [1, 2, 3, 4]
    assert pending.take(timeout=0.01) == []


def test_without_a_measure_a_window_is_taken_in_arrival_order() -> None:
    pending: BatchQueue[int] = BatchQueue(max_batch=2, window=6)
    pending.put([5, 1, 4, 2])
    assert [pending.take(timeout=1), pending.take(timeout=1)] == [[5, 1], [4, 2]]


def test_set_window_shrinks_room_but_never_below_a_batch() -> None:
    pending: BatchQueue[int] = BatchQueue(max_batch=2, window=8)
    pending.set_window(1)
    assert pending.window == 2 and pending.room(timeout=0) == 2


def test_a_filling_batch_is_released_early_for_its_most_urgent_deadline() -> None:
    due = time.time() + 0.4
    pending: BatchQueue[float] = BatchQueue(
        max_batch=8, max_wait_s=30, measure=lambda d: (0, 0, d), service_s=lambda n: 0.2
    )
    pending.put([due + 60, due])
    started = time.monotonic()
    assert pending.take(timeout=30) == [due + 60, due]
    # released ~0.2 s before the item is due (its batch's service time), not after 30 s
    assert time.monotonic() - started < 15 and time.time() < due


def test_a_filling_batch_without_urgent_items_waits_its_max_wait() -> None:
    pending: BatchQueue[float] = BatchQueue(
        max_batch=8, max_wait_s=0.2, measure=lambda d: (0, 0, d), service_s=lambda n: 0.05
    )
    pending.put([time.time() + 60])
    started = time.monotonic()
    assert len(pending.take(timeout=5)) == 1
    assert time.monotonic() - started >= 0.2  # waited for company the full max_wait


def test_room_granted_before_the_window_shrinks_is_honoured() -> None:
    pending: BatchQueue[int] = BatchQueue(max_batch=2, window=8)
    assert pending.room(timeout=0) == 8
    pending.set_window(2)  # the worker measured a slow batch meanwhile
    pending.put(list(range(8)))  # what the receiver leased on the room it was given
    assert pending.room(timeout=0.01) == 0  # and no more until the window has room again
    with pytest.raises(ValueError):
        pending.put([9])
