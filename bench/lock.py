"""One bench run at a time on a machine.

Two runs at once would share Redis databases 1 and 7 (each flushes them before and after a
case, and Celery workers of both would take each other's tasks) and the cores (each run's
figures would be the other's load). ``python -m bench`` holds an exclusive ``flock`` on
:data:`LOCK_FILE` for its whole run; a second run says who holds it and waits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = Path(tempfile.gettempdir()) / "nearline-bench.lock"


@contextlib.contextmanager
def one_run_at_a_time(path: Path = LOCK_FILE) -> Iterator[None]:
    """Hold the machine's bench lock while the block runs (wait for it if another run holds it)."""
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            print(f"bench: waiting for the bench run of pid {holder} to end ({path})", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
