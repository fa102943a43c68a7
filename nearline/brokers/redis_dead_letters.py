"""The Redis broker's dead letters: the stream ``<queue>:dead``, read and purged by id.

The stream is capped (approximately) at ``DEAD_LETTER_MAXLEN`` entries by the ``settle``
script that writes it (:mod:`nearline.brokers.redis_lua`); each entry holds ``id`` (message
id), ``reason``, ``count`` (deliveries), ``lane`` and ``body``. The operator's tools
(:mod:`nearline.dead_letters`) read it through the broker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from nearline.brokers.base import DeadLetter
from nearline.brokers.redis_keys import dead_key
from nearline.constants import DEFAULT_LANE


def read_dead_letters(client: redis.Redis, queue: str, limit: int) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters of ``queue``."""
    rows: Any = client.xrange(dead_key(queue), count=limit)
    return [
        DeadLetter(
            queue=queue,
            message_id=f[b"id"].decode(),
            body=bytes(f.get(b"body", b"")),
            reason=f.get(b"reason", b"").decode(),
            delivery_count=int(f.get(b"count", 0)),
            lane=f.get(b"lane", DEFAULT_LANE.encode()).decode(),
            dead_at=int(entry.split(b"-")[0]) / 1000.0,  # the entry id: ms-seq
        )
        for entry, f in rows
    ]


def purge_dead_letters(client: redis.Redis, queue: str, message_ids: Sequence[str]) -> int:
    """XDEL the dead letters of ``queue`` with these message ids (a scan of the capped stream)."""
    wanted = {mid.encode() for mid in message_ids}
    if not wanted:
        return 0
    rows: Any = client.xrange(dead_key(queue))
    entries = [entry for entry, f in rows if f.get(b"id") in wanted]
    return int(client.xdel(dead_key(queue), *entries)) if entries else 0
