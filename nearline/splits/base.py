"""The split-store seam: where an endpoint's live traffic split is kept once it is changed.

Guarantees every backend gives (checked by ``tests/test_traffic_changes.py`` on each):

* ``load`` returns the last split ``save`` stored for the endpoint, or None if it was never
  changed at run time (then ``pipelines.yaml``'s split is the live one).
* ``save`` stores the split and appends the change to the endpoint's history in one step; the
  history keeps the last :data:`HISTORY` changes, and ``history`` returns them newest first.
* Every process that opens the same URL sees the same splits (``memory://``: one process).
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass
from typing import Any

from nearline.jobs import iso
from nearline.pipelines.traffic import Split

#: Changes kept per endpoint: enough to see a rollout's steps, small enough to read at once.
HISTORY = 50


@dataclass(frozen=True)
class Change:
    """One change of an endpoint's split: what it became, why, and when (epoch seconds)."""

    endpoint: str
    split: Split
    reason: str
    at: float

    def document(self) -> dict[str, Any]:
        """An entry of ``history`` in ``GET /api/endpoints/{name}``."""
        return {"at": iso(self.at), **self.split.document(), "reason": self.reason}


def dump_split(split: Split) -> str:
    """A split as the stores keep it: JSON text."""
    return json.dumps(split.document(), separators=(",", ":"), sort_keys=True)


def load_split(text: str | bytes) -> Split:
    """A split from :func:`dump_split`'s text (written by nearline, checked when it was saved)."""
    doc = json.loads(text)
    return Split(dict(doc["traffic"]), dict(doc.get("mirror", {})))


class SplitStore(abc.ABC):
    """Live splits by endpoint name, with their history."""

    @abc.abstractmethod
    def load(self, endpoint: str) -> Change | None:
        """The endpoint's stored split (its last change), or None: never changed."""

    @abc.abstractmethod
    def save(self, change: Change) -> None:
        """Store ``change.split`` as the endpoint's split and add ``change`` to its history."""

    @abc.abstractmethod
    def history(self, endpoint: str) -> list[Change]:
        """The endpoint's last :data:`HISTORY` changes, newest first."""
