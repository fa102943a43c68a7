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

With a ``window`` above ``max_batch`` the open batch becomes a window of several batches' worth:
when more is waiting than one batch, :meth:`~BatchQueue.take` cuts the window into batches of
similar length (:func:`nearline.windows.cut`) and hands out the most urgent one; the rest wait
for the next take, with whatever arrives meanwhile. What is waiting fits in one batch
(the lone request, light load) is taken whole, as without a window.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

from nearline.windows import Measure, cut_positions

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


def group_by(items: Iterable[T], key: Callable[[T], K]) -> dict[K, list[T]]:
    """Items grouped by ``key``, each group in arrival order."""
    groups: dict[K, list[T]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return dict(groups)


class BatchQueue(Generic[T]):
    """The open batch between one receiving thread and one computing thread.

    Args:
        max_batch: The most items a batch holds.
        max_wait_s: How long a free worker waits after a batch's first item for it to fill.
        window: The most items waiting (at least ``max_batch``); :meth:`room` tells the
            receiver how many more. :meth:`set_window` changes it.
        measure: How :func:`~nearline.windows.cut` orders a window; None: by arrival.
        service_s: A batch of n items' expected compute time (s). With it, a batch waiting to
            fill is released early when waiting longer would make its most urgent item
            (``measure``'s due time) miss its deadline.
    """

    def __init__(
        self,
        max_batch: int,
        max_wait_s: float = 0.0,
        window: int = 0,
        measure: Measure[T] | None = None,
        service_s: Callable[[int], float] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self.max_wait_s = max(max_wait_s, 0.0)
        self.window = max(window, max_batch)
        self._granted = self.window  # the window when room() last answered
        self._measure = measure
        self._service_s = service_s
        self._items: list[T] = []
        self._first_at = 0.0
        self._closed = False
        self._cond = threading.Condition()

    def set_window(self, window: int) -> None:
        """Hold at most ``window`` items from now on (never fewer than ``max_batch``); room
        already granted is honoured (a receiver may be putting it right now)."""
        with self._cond:
            self.window = max(window, self.max_batch)
            self._cond.notify_all()

    def room(self, timeout: float) -> int:
        """How many more items the window takes, waiting up to ``timeout`` s while it is full."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._items) < self.window, timeout)
            self._granted = self.window
            return max(self.window - len(self._items), 0)

    def put(self, items: Sequence[T]) -> None:
        """Add received items; more than :meth:`room` allowed is a bug (ValueError)."""
        if not items:
            return
        with self._cond:
            if len(self._items) + len(items) > max(self.window, self._granted):
                raise ValueError(f"the window holds at most {self.window} items")
            if not self._items:
                self._first_at = time.monotonic()
            self._items.extend(items)
            self._cond.notify_all()

    def take(self, timeout: float | None = None) -> list[T]:
        """The next batch, once there is an item (and, with ``max_wait_s``, once a batch is full
        or that old): all that waits if it fits in one batch, else the first batch
        :func:`~nearline.windows.cut` makes of the window. ``[]`` when ``timeout`` passes
        first, or when closed and empty."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout) or not self._items:
                return []
            while len(self._items) < self.max_batch and not self._closed:
                remaining = self._release_at() - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = self._next_batch()
            self._cond.notify_all()  # room for the receiver
            return batch

    def _release_at(self) -> float:
        """When a filling batch goes (monotonic s): ``max_wait_s`` after its first item, or
        sooner if by then its most urgent item could not be computed before it is due."""
        release_at = self._first_at + self.max_wait_s
        if self.max_wait_s <= 0 or self._measure is None or self._service_s is None:
            return release_at
        due = min(self._measure(item)[2] for item in self._items)  # epoch s
        latest = due - self._service_s(len(self._items) + 1) - time.time() + time.monotonic()
        return min(release_at, latest)

    def _next_batch(self) -> list[T]:
        if len(self._items) <= self.max_batch:
            batch, self._items = self._items, []
        elif self._measure is None:
            batch, self._items = self._items[: self.max_batch], self._items[self.max_batch :]
        else:
            taken = set(cut_positions(self._items, self.max_batch, self._measure)[0])
            batch = [item for i, item in enumerate(self._items) if i in taken]
            self._items = [item for i, item in enumerate(self._items) if i not in taken]
        return batch

    def close(self) -> None:
        """No more puts: :meth:`take` hands out what is left, then returns ``[]`` at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
