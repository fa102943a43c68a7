"""Cross-request micro-batching: the next batch fills while the worker computes the last one.

A receiving thread :meth:`~BatchQueue.put`\\ s requests into the open batch as they arrive (never
more than ``max_batch``); the computing thread :meth:`~BatchQueue.take`\\ s all of it the moment
it is free. A free worker therefore starts on a lone request at once, and the requests that
arrive while it computes become the next batch: batches grow with the load by themselves, up to
``max_batch`` at saturation, without a request ever waiting for company while the worker idles.

``max_wait_s`` > 0 makes a free worker wait up to that long after the batch's first request for
the batch to fill (release on size or time, as Ray Serve's ``batch_wait_timeout_s`` or Triton's
``max_queue_delay``): fewer, fuller batches at moderate load, where a model's cost per batch
hardly depends on its size (a GPU), for that much latency.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


class BatchQueue(Generic[T]):
    """The open batch between one receiving thread and one computing thread.

    Args:
        max_batch: The most items a batch holds; :meth:`room` tells the receiver how many more.
        max_wait_s: How long a free worker waits after a batch's first item for it to fill.
    """

    def __init__(self, max_batch: int, max_wait_s: float = 0.0) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self.max_wait_s = max(max_wait_s, 0.0)
        self._items: list[T] = []
        self._first_at = 0.0
        self._closed = False
        self._cond = threading.Condition()

    def room(self, timeout: float) -> int:
        """How many more items the batch takes, waiting up to ``timeout`` s while it is full."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._items) < self.max_batch, timeout)
            return self.max_batch - len(self._items)

    def put(self, items: Sequence[T]) -> None:
        """Add received items; more than :meth:`room` allowed is a bug (ValueError)."""
        if not items:
            return
        with self._cond:
            if len(self._items) + len(items) > self.max_batch:
                raise ValueError(f"a batch holds at most {self.max_batch} items")
            if not self._items:
                self._first_at = time.monotonic()
            self._items.extend(items)
            self._cond.notify_all()

    def take(self, timeout: float | None = None) -> list[T]:
        """The whole open batch, once it has an item (and, with ``max_wait_s``, once it is full
        or that old). ``[]`` when ``timeout`` passes first, or when closed and empty."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout) or not self._items:
                return []
            release_at = self._first_at + self.max_wait_s
            while len(self._items) < self.max_batch and not self._closed:
                remaining = release_at - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch, self._items = self._items, []
            self._cond.notify_all()  # room for the receiver
            return batch

    def close(self) -> None:
        """No more puts: :meth:`take` hands out what is left, then returns ``[]`` at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def group_by(items: Iterable[T], key: Callable[[T], K]) -> dict[K, list[T]]:
    """Items grouped by ``key``, each group in arrival order."""
    groups: dict[K, list[T]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return dict(groups)
