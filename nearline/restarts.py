"""When to start a crashed worker again, and whether it is running normally.

:class:`Restarts` keeps one worker's exits: the delay before its next start grows with each
exit and resets once it has run a while, and :meth:`Restarts.problem` is the reason
``/api/health`` gives while the worker is down, restarting or crash-looping. The supervisor of
:mod:`nearline.worker_pool` keeps one per worker.
"""

from __future__ import annotations

import signal
import time
from collections import deque
from collections.abc import Callable

#: A worker process that exited is started again after this delay, doubled at each exit up to
#: MAX_RESTART_DELAY_S: one crash costs a second, and a worker that cannot run (a broker it
#: cannot reach, a GPU it cannot get) retries once a minute instead of spinning.
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 60.0
#: A worker ready this long is running normally again: its next exit restarts it after
#: RESTART_DELAY_S, not after the delay its earlier crashes built up.
STABLE_S = 30.0
#: ``/api/health`` is ``degraded`` while a worker is down or restarting, and while it has
#: exited CRASH_LIMIT times within CRASH_WINDOW_S (a crash loop with short ups between).
CRASH_WINDOW_S = 60.0
CRASH_LIMIT = 3


class Restarts:
    """One worker's exits: when to start it again, and whether it is running normally.

    Args:
        index: The worker's number, as messages name it.
        clock: Monotonic seconds (a test passes its own).
    """

    def __init__(self, index: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.index = index
        self.clock = clock
        self.delay = RESTART_DELAY_S
        self.exits: deque[float] = deque()  # when it exited, within the last CRASH_WINDOW_S
        self.last_exit = ""  # "exited with 1", "was killed by SIGKILL"; "" until it first exits
        self.last_error = ""
        self.restart_at: float | None = None
        self.ready_since: float | None = None

    @property
    def down(self) -> bool:
        """It exited and has not been started again yet."""
        return self.restart_at is not None

    def started(self) -> None:
        self.restart_at = self.ready_since = None

    def ready(self) -> None:
        self.ready_since = self.clock()

    def exited(self, code: int | None, error: str = "") -> float:
        """Note an exit (``code`` as ``Process.exitcode``); returns the seconds until the restart."""
        now = self.clock()
        if self.ready_since is not None and now - self.ready_since >= STABLE_S:
            self.delay = RESTART_DELAY_S
        delay, self.delay = self.delay, min(self.delay * 2, MAX_RESTART_DELAY_S)
        self.exits.append(now)
        self.last_exit, self.last_error = describe_exit(code), error
        self.restart_at, self.ready_since = now + delay, None
        return delay

    def due(self) -> bool:
        return self.restart_at is not None and self.clock() >= self.restart_at

    def problem(self) -> str | None:
        """Why this worker is not running normally (``/api/health``'s reason), or None."""
        now = self.clock()
        while self.exits and now - self.exits[0] > CRASH_WINDOW_S:
            self.exits.popleft()
        if not self.last_exit:
            return None  # never exited: starting for the first time, or running
        if self.ready_since is not None and len(self.exits) < CRASH_LIMIT:
            return None
        n = len(self.exits)
        reason = f"worker {self.index} {self.last_exit}"
        if n:
            reason += f" {n} time{'s' if n > 1 else ''} in the last {CRASH_WINDOW_S:g} s"
        if self.restart_at is not None:
            reason += f" (starting again in {max(0.0, self.restart_at - now):.0f} s)"
        elif self.ready_since is None:
            reason += " (started again, loading its pipelines)"
        return f"{reason}: {self.last_error}" if self.last_error else reason


def describe_exit(code: int | None) -> str:
    """How a process ended, from its ``exitcode``: ``exited with 2``, ``was killed by SIGKILL``."""
    if code is None:
        return "exited"
    if code >= 0:
        return f"exited with {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"
