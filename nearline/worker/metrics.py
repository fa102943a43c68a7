"""Worker metrics (Prometheus): batch size, queue wait, step latency, results by outcome.

Latency and results are labelled by pipeline and deployment (docs/deployments.md), so the
deployments of one endpoint can be compared: throughput and failures from
``nearline_worker_results_total``, latency from ``nearline_worker_compute_seconds``. The
``deployment`` label is empty for a message from before deployments.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class WorkerMetrics:
    """One registry per worker, so several in-process workers (threads) never collide."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.batch_size = Histogram(
            "nearline_worker_batch_size",
            "Messages per received batch",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.queue_wait = Histogram(
            "nearline_worker_queue_wait_seconds",
            "Enqueue to start of compute",
            registry=r,
            buckets=_LATENCY_BUCKETS,
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
            "nearline_worker_results", "Results published", ["pipeline", "deployment", "status"], registry=r
        )
        self.failures = Counter("nearline_worker_failures", "Failed jobs by error code", ["code"], registry=r)
        self.dead_lettered = Counter("nearline_worker_dead_lettered", "Messages dead-lettered", registry=r)
        self.in_flight = Gauge("nearline_worker_in_flight", "Messages leased and not yet settled", registry=r)
