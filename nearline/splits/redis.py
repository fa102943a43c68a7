"""Redis split store: beside the job records, on the status store's connection
(``redis://host:6379/0``).

* An endpoint's split is the string ``nearline:split:<endpoint>`` (JSON: split, reason, at).
* Its history is the list ``nearline:split-history:<endpoint>``, newest first, trimmed to the
  last :data:`~nearline.splits.base.HISTORY` in the same ``MULTI`` as the change.

Neither expires: a split holds until it is changed again (``FLUSHDB`` restores the file's).
"""

from __future__ import annotations

import json
from typing import Any

import redis

from nearline.errors import BrokerError
from nearline.splits.base import HISTORY, Change, SplitStore, dump_split, load_split

SPLIT_PREFIX = "nearline:split:"
HISTORY_PREFIX = "nearline:split-history:"


def _dump(change: Change) -> str:
    return json.dumps({"split": dump_split(change.split), "reason": change.reason, "at": change.at})


def _load(endpoint: str, raw: Any) -> Change:
    doc = json.loads(raw)
    return Change(endpoint, load_split(doc["split"]), doc["reason"], float(doc["at"]))


class RedisSplits(SplitStore):
    """Splits in the Redis database of ``client`` (the status store's: same URL, same DB)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def load(self, endpoint: str) -> Change | None:
        try:
            raw = self._redis.get(SPLIT_PREFIX + endpoint)
        except redis.RedisError as exc:
            raise BrokerError(f"redis splits: {exc}") from exc
        return None if raw is None else _load(endpoint, raw)

    def save(self, change: Change) -> None:
        text = _dump(change)
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(SPLIT_PREFIX + change.endpoint, text)
                pipe.lpush(HISTORY_PREFIX + change.endpoint, text)
                pipe.ltrim(HISTORY_PREFIX + change.endpoint, 0, HISTORY - 1)
                pipe.execute()
        except redis.RedisError as exc:
            raise BrokerError(f"redis splits: {exc}") from exc

    def history(self, endpoint: str) -> list[Change]:
        try:
            raws = self._redis.lrange(HISTORY_PREFIX + endpoint, 0, HISTORY - 1)
        except redis.RedisError as exc:
            raise BrokerError(f"redis splits: {exc}") from exc
        return [_load(endpoint, raw) for raw in raws]
