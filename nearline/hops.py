"""Where a job's time goes: each hop of its way from request to answer, as a histogram.

``nearline_job_hop_seconds{hop=...}`` on the API's ``GET /metrics`` (embedded and Redis
profiles; the bench reads it for its per-hop breakdown, docs/benchmarks.md). Every hop runs
from one timestamp to the next; the stamps are wall-clock times (``time.time()``) taken by the
API, the worker (carried in the result message) and the lifecycle, so across machines the
hops between them carry the clocks' skew (a negative one counts as 0). On Redis, where the
worker ends its jobs, the lifecycle takes their results on its next look (at most 0.5 s after
the end, :mod:`nearline.store.redis_settle`): their worker hops are counted then, with the
same values.

======================  ===============================================  ==================
hop                     from → to                                        observed by
======================  ===============================================  ==================
``http_in``             the handler starts → the job record is made      API (submit)
                        (body read, parsed, validated)
``enqueue``             record made → record and request message        API (submit)
                        committed (``202`` can go out)
``queue_wait``          request message stamped ``enqueued_at`` (just    lifecycle
                        before the send, whose write ``enqueue`` counts
                        too) → a worker's receive returned
``batch_wait``          received → its batch's computation starts        lifecycle
                        (hooks: poison, deadline, status checks)
``compute``             the pipeline's run on the batch                  lifecycle
``publish``             computed → the result message is sent (the       lifecycle
                        broker's enqueue time of the result)
``result_applied``      result sent → the lifecycle ends the job (the    lifecycle
                        record's ``updated``, stamped as its finish
                        starts); none where the worker ended the
                        job in the step that sent the result (Redis)
``long_poll_answered``  job ended (``updated``; the finish's write       API (a ``wait``
                        included; on Redis the worker's whole settle)    that saw the end)
                        → the waiting request's answer is ready
======================  ===============================================  ==================
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram

from nearline.jobs import JobRecord
from nearline.messages import ResultMessage

#: The hops, in the order a job passes them.
HOPS = (
    "http_in",
    "enqueue",
    "queue_wait",
    "batch_wait",
    "compute",
    "publish",
    "result_applied",
    "long_poll_answered",
)
#: Fine at the bottom: most hops of a trivial pipeline take well under a millisecond.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class HopTimes:
    """The ``nearline_job_hop_seconds`` histogram in ``registry``, fed from the stamps."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            "nearline_job_hop_seconds",
            "Time jobs spent in each hop from request to answer (nearline/hops.py)",
            ["hop"],
            buckets=BUCKETS,
            registry=registry,
        )

    def observe(self, hop: str, start: float | None, end: float | None) -> None:
        """One job's time in ``hop``: ``end - start`` (nothing when either stamp is missing)."""
        if start is not None and end is not None:
            self.histogram.labels(hop).observe(max(end - start, 0.0))

    def submitted(self, job: JobRecord, handler_started: float) -> None:
        """A new job was accepted: its ``http_in`` and ``enqueue`` hops."""
        self.observe("http_in", handler_started, job.created)
        self.observe("enqueue", job.created, time.time())

    def applied(self, result: ResultMessage, published_at: float, applied_at: float | None) -> None:
        """A result reached the lifecycle: the worker's hops (from its stamps) and, when it
        ended the job (``applied_at``; None: the job had ended already), the lifecycle's."""
        self.observe("queue_wait", result.request_enqueued_at, result.received_at)
        self.observe("batch_wait", result.received_at, result.started_at)
        self.observe("compute", result.started_at, result.finished_at)
        self.observe("publish", result.finished_at, published_at)
        self.observe("result_applied", published_at, applied_at)

    def answered(self, job: JobRecord, handler_started: float) -> None:
        """A waiting request is being answered with its job's end, seen during the wait."""
        if job.status.terminal and job.updated >= handler_started:
            self.observe("long_poll_answered", job.updated, time.time())
