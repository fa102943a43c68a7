"""The live split an API replica submits with: the stored change, read through a short cache,
checked against the endpoint's deployments as they are now.

A stored split that names a deployment ``pipelines.yaml`` no longer has (a reload removed it)
is not used: the file's split is, and the mismatch is logged once per change, so submits keep
working. A store that cannot be read leaves the last split read in place (or the file's).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from nearline.errors import BrokerError
from nearline.pipelines.spec import Pipeline
from nearline.pipelines.traffic import Split
from nearline.splits.base import Change, SplitStore

log = logging.getLogger("nearline.splits")

#: How long a split read from the store is used before it is read again. Half a second keeps
#: the promise that every replica applies a change within a second, at two reads a second per
#: endpoint and replica (a Redis GET or an SQLite primary-key lookup: tens of microseconds).
MAX_AGE_S = 0.5


@dataclass(frozen=True)
class _Read:
    change: Change | None
    at: float  # monotonic


class LiveSplits:
    """Splits of ``store``, cached for at most ``max_age`` seconds."""

    def __init__(
        self, store: SplitStore, max_age: float = MAX_AGE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.max_age = max_age
        self._clock = clock
        self._reads: dict[str, _Read] = {}
        self._warned: set[tuple[str, float]] = set()
        self._lock = threading.Lock()

    def fresh(self, pipeline: Pipeline) -> Split | None:
        """The endpoint's live split if the cache holds a fresh read (no I/O), else None."""
        read = self._reads.get(pipeline.name)
        if read is None or self._clock() - read.at >= self.max_age:
            return None
        return self._usable(pipeline, read.change)

    def read(self, pipeline: Pipeline) -> Split:
        """The endpoint's live split, read from the store (blocking)."""
        try:
            change = self.store.load(pipeline.name)
        except BrokerError as exc:
            stale = self._reads.get(pipeline.name)
            log.warning("cannot read the split of %s (%s): using the last one read", pipeline.name, exc)
            return self._usable(pipeline, stale.change if stale else None)
        self._reads[pipeline.name] = _Read(change, self._clock())
        return self._usable(pipeline, change)

    def save(self, change: Change) -> None:
        """Store ``change`` and use it here at once (blocking)."""
        self.store.save(change)
        self._reads[change.endpoint] = _Read(change, self._clock())

    def _usable(self, pipeline: Pipeline, change: Change | None) -> Split:
        """``change``'s split over the endpoint's deployments now, or the file's split."""
        if change is None:
            return pipeline.split
        names = [d.name for d in pipeline.deployments]
        used = {n for n, w in change.split.traffic.items() if w} | set(change.split.mirror)
        gone = sorted(used - set(names))
        if gone:
            self._warn(pipeline.name, change, gone)
            return pipeline.split
        return Split({n: change.split.traffic.get(n, 0) for n in names}, dict(change.split.mirror))

    def _warn(self, endpoint: str, change: Change, gone: list[str]) -> None:
        with self._lock:
            if (endpoint, change.at) in self._warned:
                return
            self._warned.add((endpoint, change.at))
        log.warning(
            "the stored split of %s uses deployment(s) %s, which pipelines.yaml no longer has: "
            "using the file's split until the traffic is set again",
            endpoint,
            ", ".join(gone),
        )
