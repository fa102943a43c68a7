"""The benchmark suite: ``python -m bench [--quick] [--only NAME,...]`` (``make bench``).

Every figure of one run comes from the same machine, models and request mix, measured
interleaved (round-robin over the systems, repeated), so that ratios between systems hold even
on a noisy box. What each case measures, and the method, are in ``docs/benchmarks.md``.

Modules: :mod:`bench.settings` (sizes and constants), :mod:`bench.workload` (the request mix),
:mod:`bench.load` (closed- and open-loop load generators), :mod:`bench.stats`,
:mod:`bench.processes` (servers, workers and Celery as subprocesses, always stopped),
the cases (:mod:`bench.limit`, :mod:`bench.worker_drain`, :mod:`bench.embedded`,
:mod:`bench.redis_profile`, :mod:`bench.celery_peer`, :mod:`bench.triton`), the schedule that
runs them (:mod:`bench.suite`) and :mod:`bench.report` (table, JSON, PNG).
"""
