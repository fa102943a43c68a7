"""Outcomes of ended jobs, and the comparison of an endpoint's deployments built from them.

``GET /api/endpoints/{name}/compare`` (docs/deployments.md, "Comparing deployments") answers
from an :class:`OutcomeLog`: one entry per job that ended ``Completed`` or ``Failed`` (a worker's
result or a passed deadline; a terminated job is the caller's doing, not the deployment's),
written by the status store in the same step that ends the job, so every API replica reads the
same figures. The log keeps :data:`MAX_WINDOW_S`; backends: ``nearline/store/outcomes_sqlite.py``
(a table filled by a trigger), ``nearline/store/outcomes_redis.py`` (a sorted set per endpoint,
filled by the finish script).

Latency is submit → end of the job (the record's ``created`` → ``updated``), every ended job's.
A shadow job (``shadow_of``: the live job's id) counts under its own deployment and pairs with
its live job: the pair agrees when both completed with the same answer, the ``label`` of a
classifier's output (an object with a ``label`` key), else the whole output.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nearline.errors import NotSupported, RequestError

#: The default window of a comparison, in seconds.
WINDOW_S = 300
#: The longest window; the log keeps this much and no more (an hour of one entry per job).
MAX_WINDOW_S = 3600


@dataclass(frozen=True)
class Outcome:
    """One ended job in the log.

    Attributes:
        job_id: The job.
        deployment: The deployment that scored it (None on records from before deployments).
        succeeded: Completed (else Failed).
        latency_ms: Submit → end.
        shadow_of: The live job's id, for a shadow job.
    """

    job_id: str
    deployment: str | None
    succeeded: bool
    latency_ms: float
    shadow_of: str | None = None


@dataclass(frozen=True)
class Ended:
    """What a pair is judged by: a job's status, deployment and output, read from its record."""

    status: str
    deployment: str | None
    output: Any


class OutcomeLog(abc.ABC):
    """The outcomes a status store writes as jobs end. Thread-safe."""

    @abc.abstractmethod
    def read(self, endpoint: str, since: float) -> list[Outcome]:
        """The endpoint's outcomes of jobs that ended at or after ``since`` (epoch seconds)."""

    @abc.abstractmethod
    def ended(self, job_ids: Sequence[str]) -> dict[str, Ended]:
        """The records of those of ``job_ids`` still kept (a purged job is left out)."""

    def trim(self, before: float) -> int:
        """Drop outcomes of jobs that ended before ``before``; how many (0 where the backend
        trims as it writes)."""
        return 0


def parse_window(value: str | None) -> int:
    """``?window_s=``: whole seconds from 1 to :data:`MAX_WINDOW_S`; :data:`WINDOW_S` when absent.

    Raises:
        RequestError: (400) anything else, the message naming the parameter.
    """
    if value is None:
        return WINDOW_S
    text = value.strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_WINDOW_S:
        raise RequestError(
            f"query parameter 'window_s' must be whole seconds from 1 to {MAX_WINDOW_S}, not {value[:20]!r}"
        )
    return int(text)


def compare(
    log: OutcomeLog | None, endpoint: str, deployments: Sequence[str], window_s: int, now: float
) -> dict[str, Any]:
    """The ``/compare`` document of ``endpoint`` over the ``window_s`` seconds before ``now``.

    Every deployment in ``deployments`` is listed, those without jobs in the window too.

    Raises:
        NotSupported: (404) ``log`` is None: the status store keeps no outcomes (``memory://``).
    """
    if log is None:
        raise NotSupported("comparing deployments needs a SQLite or Redis store: memory:// keeps no outcomes")
    outcomes = log.read(endpoint, now - window_s)
    by_deployment: dict[str, list[Outcome]] = {name: [] for name in deployments}
    for outcome in outcomes:
        if outcome.deployment is not None:
            by_deployment.setdefault(outcome.deployment, []).append(outcome)
    return {
        "endpoint": endpoint,
        "window_s": window_s,
        "deployments": {name: _stats(found) for name, found in by_deployment.items()},
        "mirrors": _mirrors(log, [o for o in outcomes if o.shadow_of is not None]),
    }


def _stats(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    succeeded = sum(o.succeeded for o in outcomes)
    latencies = sorted(o.latency_ms for o in outcomes)
    return {
        "requests": len(outcomes),
        "succeeded": succeeded,
        "failed": len(outcomes) - succeeded,
        "failure_rate": round((len(outcomes) - succeeded) / len(outcomes), 6) if outcomes else None,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "shadow": sum(o.shadow_of is not None for o in outcomes),
    }


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile of ascending ``ordered`` (None when empty), in 0.1 ms."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return round(ordered[rank - 1], 1)


def _mirrors(log: OutcomeLog, shadows: Sequence[Outcome]) -> list[dict[str, Any]]:
    """Each (live deployment, shadow deployment) pair's count and agreement."""
    if not shadows:
        return []
    records = log.ended([o.job_id for o in shadows] + [o.shadow_of for o in shadows if o.shadow_of])
    tally: dict[tuple[str, str], list[int]] = {}
    for shadow in shadows:
        live = records.get(shadow.shadow_of or "")
        mine = records.get(shadow.job_id)
        if live is None or mine is None or live.deployment is None:
            continue  # the live job was purged: no pair
        counts = tally.setdefault((live.deployment, shadow.deployment or ""), [0, 0])
        if live.status in _ENDED:  # else not a pair yet: the live job has not ended
            counts[0] += 1
            counts[1] += agree(live, mine)
    return [
        {
            "live": live,
            "shadow": shadow,
            "pairs": pairs,
            "agreed": agreed,
            "agreement": round(agreed / pairs, 6) if pairs else None,
        }
        for (live, shadow), (pairs, agreed) in sorted(tally.items())
    ]


_ENDED = ("Completed", "Failed")


def agree(live: Ended, shadow: Ended) -> bool:
    """Both completed with the same answer: a classifier's ``label``, else the whole output."""
    if live.status != "Completed" or shadow.status != "Completed":
        return False
    return bool(answer(live.output) == answer(shadow.output))


def answer(output: Any) -> Any:
    """What two outputs are compared by: ``output["label"]`` for a classifier, else the output."""
    if isinstance(output, dict) and "label" in output:
        return output["label"]
    return output
