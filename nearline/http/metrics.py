"""The API's Prometheus metrics: requests by route and status, latency, submissions, long-polls.

Names follow Prometheus's conventions (docs/operations.md, Metrics); counters get ``_total``
from prometheus_client.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from nearline.hops import HopTimes


class ApiMetrics:
    """One registry per app, so several apps in one process (tests) never collide."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("nearline_api_requests", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram(
            "nearline_api_request_duration_seconds", "HTTP request latency", ["route"], registry=r
        )
        self.submitted = Counter("nearline_api_jobs_submitted", "Jobs accepted", ["pipeline"], registry=r)
        self.depth = Gauge("nearline_queue_depth", "Request queue depth", registry=r)
        self.waiting = Gauge("nearline_api_long_polls", "Long-polls waiting", registry=r)
        self.shed = Counter(
            "nearline_api_shed", "Submissions refused because the queue was full", ["pipeline"], registry=r
        )
        #: Each hop of a job's way (nearline/hops.py); the lifecycle of ``nearline serve`` counts here too.
        self.hops = HopTimes(r)
