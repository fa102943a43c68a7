"""The Redis broker's names, in one place: the Kubernetes KEDA ``redis-streams`` triggers
(``k8s/``) and the operator's docs (docs/redis.md) name the same ones.

A queue's keys share the prefix ``<queue>``; the per-message keys (``<queue>:msg:<id>``,
``<queue>:blob:<id>``) and ``<queue>:expiry`` are derived from it inside the Lua scripts
(:mod:`nearline.brokers.redis_lua`).
"""

from __future__ import annotations

#: The consumer group on every lane stream (KEDA's ``consumerGroup``).
GROUP = "nearline"


def stream_key(queue: str, lane: str) -> str:
    """The stream of one lane of ``queue``, e.g. ``nearline-requests:normal``."""
    return f"{queue}:{lane}"


def bell_key(queue: str) -> str:
    """The list a send pushes a token to (one at most) and an idle receiver BLPOPs."""
    return f"{queue}:bell"


def dead_key(queue: str) -> str:
    """The dead-letter stream of ``queue``."""
    return f"{queue}:dead"
