"""In-process split store: ``memory://``. Nothing survives the process."""

from __future__ import annotations

import threading

from nearline.splits.base import HISTORY, Change, SplitStore


class MemorySplits(SplitStore):
    """Splits and their histories in dicts under one lock."""

    def __init__(self) -> None:
        self._history: dict[str, list[Change]] = {}  # newest first
        self._lock = threading.Lock()

    def load(self, endpoint: str) -> Change | None:
        with self._lock:
            changes = self._history.get(endpoint)
            return changes[0] if changes else None

    def save(self, change: Change) -> None:
        with self._lock:
            changes = self._history.setdefault(change.endpoint, [])
            changes.insert(0, change)
            del changes[HISTORY:]

    def history(self, endpoint: str) -> list[Change]:
        with self._lock:
            return list(self._history.get(endpoint, ()))
