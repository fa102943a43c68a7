"""The dashboard's live numbers, from the newest job records (the store every replica shares).

Throughput, latency (created → ended) and failures over the last :data:`WINDOW_S` seconds, in
:data:`BUCKET_S` buckets for the chart. Read from the status store rather than one process's
metrics, so every API replica shows the same figures; what the newest :data:`SAMPLE` records do
not reach (a busier minute) is marked ``sampled``.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nearline.jobs import JobRecord, JobStatus

#: The window the dashboard shows, and its buckets (a point every 10 s on the chart).
WINDOW_S = 300
BUCKET_S = 10
#: How many of the newest records the numbers are computed from.
SAMPLE = 2000


@dataclass(frozen=True)
class Stats:
    """What the live panel and the chart show."""

    completed: int
    failed: int
    per_s: float
    p50_ms: float | None
    p99_ms: float | None
    lanes: dict[str, dict[str, int]]
    sampled: bool
    series: dict[str, list[Any]]


def quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of ``values`` (nearest rank), or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def compute(jobs: Sequence[JobRecord], now: float | None = None) -> Stats:
    """The numbers for the jobs that ended (and the ones waiting) among ``jobs``."""
    now = time.time() if now is None else now
    since = now - WINDOW_S
    ended = [j for j in jobs if j.status.terminal and j.updated >= since]
    done = [j for j in ended if j.status is JobStatus.COMPLETED]
    latencies = [(j.updated - j.created) * 1000 for j in done]
    lanes: dict[str, dict[str, int]] = {
        lane: {"Pending": 0, "Running": 0} for lane in ("high", "normal", "low")
    }
    for job in jobs:
        if not job.status.terminal:
            lanes.setdefault(job.priority, {"Pending": 0, "Running": 0})[job.status.value] += 1
    return Stats(
        completed=len(done),
        failed=sum(1 for j in ended if j.status is JobStatus.FAILED),
        per_s=round(len(done) / WINDOW_S, 2),
        p50_ms=quantile(latencies, 0.5),
        p99_ms=quantile(latencies, 0.99),
        lanes=lanes,
        sampled=len(jobs) >= SAMPLE and bool(jobs) and jobs[-1].created > since,
        series=series(ended, now),
    )


def series(ended: Sequence[JobRecord], now: float) -> dict[str, list[Any]]:
    """Per bucket: its start (epoch s), jobs completed, jobs failed, p50 latency (ms)."""
    first = math.floor((now - WINDOW_S) / BUCKET_S) * BUCKET_S
    starts = list(range(int(first), int(now) + 1, BUCKET_S))
    completed: Counter[int] = Counter()
    failed: Counter[int] = Counter()
    latency: dict[int, list[float]] = {}
    for job in ended:
        bucket = int(math.floor(job.updated / BUCKET_S) * BUCKET_S)
        if job.status is JobStatus.COMPLETED:
            completed[bucket] += 1
            latency.setdefault(bucket, []).append((job.updated - job.created) * 1000)
        elif job.status is JobStatus.FAILED:
            failed[bucket] += 1
    return {
        "t": starts,
        "completed": [completed[s] for s in starts],
        "failed": [failed[s] for s in starts],
        "p50_ms": [quantile(latency.get(s, []), 0.5) for s in starts],
    }
