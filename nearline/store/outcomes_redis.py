"""The outcomes log in Redis (:mod:`nearline.outcomes`): a sorted set per endpoint.

``nearline:outcomes:<endpoint>`` (score = when the job ended) holds one member per job ended
Completed or Failed: ``{"id", "deployment", "status", "created", "ended", "shadow_of"}`` as JSON.
The store's finish script (``nearline/store/redis_lua.py``) adds it in the step that ends the
job, drops the members older than :data:`~nearline.outcomes.MAX_WINDOW_S` and gives the key that
TTL, so the log needs no trimming of its own and an idle endpoint's key goes away.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis

from nearline.errors import BrokerError
from nearline.outcomes import Ended, Outcome, OutcomeLog

#: ``<prefix><endpoint>``: the endpoint's outcomes.
OUTCOMES_PREFIX = "nearline:outcomes:"


class RedisOutcomes(OutcomeLog):
    """Outcomes in ``client``'s database; job records are the hashes ``<job_prefix><id>``."""

    def __init__(self, client: redis.Redis, url: str, job_prefix: str) -> None:
        self._redis = client
        self.url = url
        self._job_prefix = job_prefix

    def read(self, endpoint: str, since: float) -> list[Outcome]:
        try:
            members: Any = self._redis.zrangebyscore(OUTCOMES_PREFIX + endpoint, since, "+inf")
        except redis.RedisError as exc:
            raise BrokerError(f"redis store {self.url}: {exc}") from exc
        return [_outcome(json.loads(m)) for m in members]

    def ended(self, job_ids: Sequence[str]) -> dict[str, Ended]:
        ids = list(dict.fromkeys(job_ids))
        try:
            pipe = self._redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(self._job_prefix + job_id, "status", "deployment", "output")
            rows = pipe.execute()
        except redis.RedisError as exc:
            raise BrokerError(f"redis store {self.url}: {exc}") from exc
        found: dict[str, Ended] = {}
        for job_id, (status, deployment, output) in zip(ids, rows, strict=True):
            if status is not None:
                found[job_id] = Ended(status.decode(), _json(deployment), _json(output))
        return found


def _json(raw: bytes | None) -> Any:
    return None if raw is None else json.loads(raw)


def _outcome(member: dict[str, Any]) -> Outcome:
    latency_ms = (float(member["ended"]) - float(member["created"])) * 1000.0
    return Outcome(
        member["id"], member["deployment"], member["status"] == "Completed", latency_ms, member["shadow_of"]
    )
