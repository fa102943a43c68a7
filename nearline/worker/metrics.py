"""Worker metrics (Prometheus): batch size, queue wait, step latency, results by outcome, readiness.

Names follow Prometheus's conventions (docs/operations.md, Metrics): a unit suffix on every
histogram, ``_total`` on counters (prometheus_client adds it). Queue wait, results, failures and
dead letters are labelled by ``lane`` (high, normal, low); latency, results and failures by
pipeline and deployment (docs/deployments.md), so the deployments of one endpoint can be
compared. The ``deployment`` label is empty for a message from before deployments.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Queue waits run from milliseconds (a free worker) to minutes (a backlog).
_WAIT_BUCKETS = (*_LATENCY_BUCKETS, 60, 120, 300, 600)


class WorkerMetrics:
    """One registry per worker, so several in-process workers (threads) never collide."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.batch_size = Histogram(
            "nearline_worker_batch_size_messages",
            "Messages per batch (hooks included)",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.queue_wait = Histogram(
            "nearline_worker_queue_wait_seconds",
            "Enqueue to start of compute",
            ["pipeline", "deployment", "lane"],
            registry=r,
            buckets=_WAIT_BUCKETS,
        )
        self.step_latency = Histogram(
            "nearline_worker_step_seconds",
            "Time per pipeline step per batch",
            ["pipeline", "deployment", "step"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.compute_latency = Histogram(
            "nearline_worker_compute_seconds",
            "Time to compute one batch of one deployment (every step)",
            ["pipeline", "deployment"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.results = Counter(
            "nearline_worker_results",
            "Results published",
            ["pipeline", "deployment", "lane", "status"],
            registry=r,
        )
        self.failures = Counter(
            "nearline_worker_failures",
            "Failed jobs by error code",
            ["pipeline", "deployment", "lane", "code"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "nearline_worker_dead_lettered", "Request messages dead-lettered", ["lane"], registry=r
        )
        self.in_flight = Gauge("nearline_worker_in_flight", "Messages leased and not yet settled", registry=r)
        self.ready = Gauge(
            "nearline_worker_ready", "1 while the worker is ready (/readyz), else 0", registry=r
        )

    def watch_ready(self, is_ready: Callable[[], bool]) -> None:
        """Report ``is_ready()`` as ``nearline_worker_ready`` whenever the metrics are read."""
        self.ready.set_function(lambda: 1.0 if is_ready() else 0.0)
