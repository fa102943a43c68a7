"""How big a busy worker's window may be, and where a request goes in it.

The window (:class:`~nearline.batching.BatchQueue`'s, cut by :func:`nearline.windows.cut`)
holds several batches' worth when more waits than a batch; these decide its size from the
measured batch time and the lease, and each request's place: lane, pipeline and size, due by.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from nearline.brokers.base import Delivery
from nearline.constants import LANES
from nearline.messages import MessageError, RequestMessage

#: Where a request goes in a window: (lane rank, (pipeline, size), due by, epoch s).
Key = tuple[int, tuple[str, int], float]
#: Weight of the latest batch in the moving average of batch times.
SMOOTHING = 0.2


def request_key(
    delivery: Delivery, received: float, lease_s: float, length_field: Callable[[str], str | None]
) -> Key:
    """Its lane, then similar pipeline and size together, then the sooner due first: its
    deadline, or its lease's end (so no request waits forever behind later, more urgent ones).

    Size is the length of the input field the pipeline names (``length:``,
    ``length_field(pipeline)``) when the input has it, else the message's length in bytes (text
    inputs, the ones worth batching by length, grow with it). A message that does not parse
    goes first in its lane (the hooks fail it at once).
    """
    rank = LANES.index(delivery.lane) if delivery.lane in LANES else 0
    try:
        msg = RequestMessage.from_json(delivery.body)
    except MessageError:
        return (rank, ("", 0), received)
    due = received + lease_s if msg.deadline is None else min(received + lease_s, msg.deadline)
    return (rank, (msg.pipeline, _size(msg, len(delivery.body), length_field)), due)


def _size(msg: RequestMessage, body_size: int, length_field: Callable[[str], str | None]) -> int:
    name = length_field(msg.pipeline)
    value = msg.input.get(name) if name is not None and isinstance(msg.input, dict) else None
    return len(value) if isinstance(value, str | list | dict) else body_size


def window_batches(batch_window: int, lease_s: float, batch_s: float) -> int:
    """Batches' worth a worker may hold waiting (at most ``batch_window``), a batch taking ``batch_s``.

    A request in the window waits behind at most the batch computing and the window ahead of
    it; that must fit in a quarter of a lease, or its lease could run out and another worker
    compute it again. The margin is wide on purpose: ``batch_s`` is an average, and a batch of
    the longest texts, or a neighbour's load on the cores, can take several times as long.
    Until a batch is measured: one batch.
    """
    if batch_s <= 0:
        return 1
    fits = int(lease_s / 4 / batch_s) - 1
    return max(1, min(batch_window, fits))


class ServiceTimes:
    """A batch's measured compute time by size: a moving average per power-of-two size class.

    A size never measured is estimated from the nearest class measured, scaled by size (linear:
    right on a CPU, pessimistic on a GPU, where a batch costs little more than one item).
    """

    def __init__(self) -> None:
        self._by_class: dict[int, tuple[int, float]] = {}  # size class -> (size, seconds)
        self._lock = threading.Lock()

    def observe(self, size: int, seconds: float) -> None:
        """Record that a batch of ``size`` took ``seconds``."""
        if size < 1:
            return
        with self._lock:
            old = self._by_class.get(size.bit_length())
            average = seconds if old is None else (1 - SMOOTHING) * old[1] + SMOOTHING * seconds
            self._by_class[size.bit_length()] = (size, average)

    def estimate(self, size: int) -> float:
        """Expected seconds for a batch of ``size``; 0.0 while nothing is measured."""
        with self._lock:
            if not self._by_class:
                return 0.0
            near = min(self._by_class, key=lambda c: abs(c - size.bit_length()))
            measured_size, seconds = self._by_class[near]
        return seconds * max(size, 1) / measured_size
