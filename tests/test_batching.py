"""Micro-batching: a batch is released on size or on time, never later, never bigger."""

from __future__ import annotations

import threading
import time

import pytest

from nearline.batching import collect, group_by
from nearline.brokers.memory import MemoryBroker


class FakeClock:
    """A clock the fake receive advances, so time-based release is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_releases_on_size_without_waiting_for_time() -> None:
    items = list(range(100))
    calls: list[int] = []

    def receive(n: int, wait: float) -> list[int]:
        calls.append(n)
        out = items[: min(3, n)]
        del items[: len(out)]
        return out

    assert collect(receive, max_batch=8, max_wait_s=60.0, idle_wait_s=1.0) == list(range(8))
    assert calls == [8, 5, 2]  # asks only for what is missing, stops when full


def test_never_exceeds_max_batch() -> None:
    def receive(n: int, wait: float) -> list[int]:
        return list(range(n))

    assert len(collect(receive, max_batch=5, max_wait_s=1.0)) == 5


def test_releases_on_time_with_a_partial_batch() -> None:
    clock = FakeClock()
    first = True

    def receive(n: int, wait: float) -> list[str]:
        nonlocal first
        if first:
            first = False
            return ["a"]
        clock.now += wait  # nothing more arrives: the whole wait runs out
        return []

    assert collect(receive, max_batch=32, max_wait_s=0.005, clock=clock) == ["a"]
    assert clock.now == pytest.approx(0.005)


def test_idle_returns_empty_after_idle_wait() -> None:
    waits: list[float] = []

    def receive(n: int, wait: float) -> list[int]:
        waits.append(wait)
        return []

    assert collect(receive, max_batch=4, max_wait_s=0.01, idle_wait_s=0.25) == []
    assert waits == [0.25]


def test_fills_a_batch_from_a_real_broker_within_the_wait() -> None:
    broker = MemoryBroker()

    def producer() -> None:
        for i in range(6):
            broker.send("q", b"x", message_id=str(i))
            time.sleep(0.005)

    t = threading.Thread(target=producer)
    t.start()
    batch = collect(lambda n, w: broker.receive("q", n, w, 5.0), max_batch=6, max_wait_s=2.0, idle_wait_s=2.0)
    t.join()
    assert sorted(d.message_id for d in batch) == [str(i) for i in range(6)]


def test_rejects_a_zero_batch() -> None:
    with pytest.raises(ValueError):
        collect(lambda n, w: [], max_batch=0, max_wait_s=0.1)


def test_group_by_keeps_arrival_order() -> None:
    assert group_by(["a1", "b1", "a2", "b2", "c1"], lambda s: s[0]) == {
        "a": ["a1", "a2"],
        "b": ["b1", "b2"],
        "c": ["c1"],
    }
