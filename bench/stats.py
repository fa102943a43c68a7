"""Percentiles and medians, without numpy (the bench's own process need not import it)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

PERCENTILES = (50, 95, 99)


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (linear interpolation between closest ranks); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def latency_summary(latencies_s: Sequence[float], errors: int = 0) -> dict[str, Any]:
    """Count, errors, mean and the p50/p95/p99 of a run's latencies, in milliseconds."""
    summary: dict[str, Any] = {"count": len(latencies_s), "errors": errors}
    summary["mean_ms"] = 1000 * sum(latencies_s) / len(latencies_s) if latencies_s else math.nan
    for p in PERCENTILES:
        summary[f"p{p}_ms"] = 1000 * percentile(latencies_s, p)
    return summary


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and every value of repeated measurements."""
    return {
        "median": median(values),
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
        "runs": list(values),
    }
