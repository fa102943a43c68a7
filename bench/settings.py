"""Sizes of a run (full and ``--quick``) and the constants every case shares, with the reasons."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_MODELS = Path(os.environ.get("NEARLINE_MODELS", ROOT / "models"))

#: The pipeline every system is measured on, and the trivial one that shows pure overhead.
PIPELINE = "topics"
IDENTITY = "identity"

#: Redis databases of our own: the test suite uses 6 and 8..15 (tests/test_hostile_input.py,
#: tests/test_redis_*.py, test_brokers.py, test_store.py, test_idempotency.py) and
#: bench/redis_throughput.py 8. Both are flushed before and after every case.
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
NEARLINE_REDIS_DB = 1
CELERY_REDIS_DB = 7

#: Batch size of the limit case: the workers' default ``max_batch`` (nearline.constants).
LIMIT_BATCH = 32

#: Requests in flight in a closed-loop saturation run. Enough to keep two workers' batches of
#: 32 full while the next two batches are being received (4 x 32), with room to spare.
CONCURRENCY = 160

#: Light load for the overhead case (identity pipeline), requests per second.
OVERHEAD_RATE = 20.0

#: Open-loop rate as a fraction of the peer's (Celery's) measured capacity; the same absolute
#: rate is offered to every system. Used when the peer is not part of the run: FALLBACK_RATE.
OPEN_LOOP_FRACTION = 0.5
FALLBACK_RATE = 50.0

#: Seed of the request mix and of the open-loop arrival schedule (Poisson): every system sees
#: the same texts in the same order at the same instants.
SEED = 20261130

#: How long a server, worker or Celery may take to come up (torch import + model load, on a
#: busy 2-core box), and to wind down before it is killed.
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
#: A request not answered within this long counts as an error (and stops nothing else).
REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Sizes:
    """How much each case does in one run.

    Attributes:
        rounds: Times every case is repeated, interleaved (round-robin over the cases).
        limit_jobs: Jobs per limit measurement (in batches of :data:`LIMIT_BATCH`).
        drain_jobs: Jobs pre-loaded for a worker to drain.
        warmup_jobs: Jobs sent per worker before a system is measured (TorchScript's profiling
            executor makes each worker's first ~7 batches 5-8x slower than the rest).
        saturation_s: Length of a closed-loop saturation run.
        settle_s: Start of a saturation run left out of its throughput (ramp-up).
        open_loop_s: Length of the open-loop run at the fixed offered rate.
        overhead_s: Length of the identity run at :data:`OVERHEAD_RATE`.
        idle_s: How long a warmed-up system is left idle while its CPU time is read.
    """

    rounds: int
    limit_jobs: int
    drain_jobs: int
    warmup_jobs: int
    saturation_s: float
    settle_s: float
    open_loop_s: float
    overhead_s: float
    idle_s: float


FULL = Sizes(
    rounds=3,
    limit_jobs=1024,
    drain_jobs=1024,
    warmup_jobs=256,
    saturation_s=5.0,
    settle_s=1.25,
    open_loop_s=4.0,
    overhead_s=4.0,
    idle_s=10.0,
)
#: One round of the systems the goals are about; the variants (``once``) only when named.
QUICK = Sizes(
    rounds=1,
    limit_jobs=384,
    drain_jobs=384,
    warmup_jobs=256,
    saturation_s=3.0,
    settle_s=0.75,
    open_loop_s=3.0,
    overhead_s=5.0,
    idle_s=5.0,
)
