"""Riding out broker outages: a failing broker call is retried until the broker answers.

Every broker call of the worker loop (receive, publish, settle, and the status store's reads in
the hooks) goes through one :class:`Outage`. A :class:`~nearline.errors.BrokerError` is
transient by definition (each backend raises it only for failures that pass: Redis down,
restarting or failing over, Service Bus busy or unreachable), so the call is retried after a
delay that doubles from ``first_s`` to ``max_s``, jittered so that a fleet of workers does not
reconnect in step. While calls fail the worker is in an outage: one warning when it starts,
one when it ends (not one per retry), and ``ready`` is cleared meanwhile (``/readyz`` answers
503). :class:`~nearline.brokers.base.LeaseLost` is an answer, not an outage: it passes through.

Once ``stop`` is set a failing call is not retried: the caller gives up its batch, whose leases
run out so that another worker receives the messages (a SIGTERM must end a worker even while
the broker is gone).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from nearline.brokers.base import LeaseLost
from nearline.errors import BrokerError

log = logging.getLogger("nearline.worker")

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Delays between retries: ``first_s``, doubling on each failure, capped at ``max_s``.

    The first retry comes soon (a dropped connection is often back at once); the cap keeps a
    worker probing a broker that is gone for minutes often enough to resume within seconds of
    its return, without hammering it while it loads its data.
    """

    first_s: float = 0.1
    max_s: float = 5.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (0 for the first): half to all of the ceiling."""
        ceiling = min(self.max_s, self.first_s * 2 ** min(attempt, 32))
        return (rng or random).uniform(ceiling / 2, ceiling)  # jitter, not secrecy


class Outage:
    """Retries broker calls through outages and tracks whether the broker answers.

    Args:
        ready: Cleared while the broker does not answer, set again when it does (if it was set
            when the outage began: a worker not yet running does not become ready by this).
        backoff: The delays between retries of one call.
    """

    def __init__(self, ready: threading.Event, backoff: Backoff | None = None) -> None:
        self.ready = ready
        self.backoff = backoff or Backoff()
        self._lock = threading.Lock()
        self._since: float | None = None  # time.monotonic() of the first failure
        self._failures = 0
        self._was_ready = False

    @property
    def down(self) -> bool:
        """True from a broker call's failure until a call succeeds."""
        return self._since is not None

    def call(self, what: str, fn: Callable[[], T], stop: threading.Event) -> T:
        """``fn()``, retried while it raises BrokerError (not LeaseLost) and ``stop`` is not set.

        Raises:
            BrokerError: ``fn``'s last error, once ``stop`` is set.
            LeaseLost: From ``fn``, at once: the broker answered.
        """
        attempt = 0
        while True:
            try:
                result = fn()
            except LeaseLost:
                self._answered()
                raise
            except BrokerError as exc:
                self._failed(what, exc)
                if stop.is_set():
                    raise
                stop.wait(self.backoff.delay(attempt))
                attempt += 1
                continue
            self._answered()
            return result

    def _failed(self, what: str, exc: BrokerError) -> None:
        with self._lock:
            self._failures += 1
            if self._since is not None:
                return
            self._since, self._was_ready = time.monotonic(), self.ready.is_set()
            self.ready.clear()
        log.warning(
            "broker unreachable (%s: %s); retrying every %g s at most, not ready until it answers",
            what,
            exc.message,
            self.backoff.max_s,
        )

    def _answered(self) -> None:
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            if self._since is None:
                return
            lasted, failures = time.monotonic() - self._since, self._failures
            self._since, self._failures = None, 0
            if self._was_ready:
                self.ready.set()
        log.warning("broker reachable again after %.1f s (%d failed calls); resuming", lasted, failures)
