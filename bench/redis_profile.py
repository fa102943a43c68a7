"""nearline on Redis (the self-hosted profile): ``nearline serve --no-workers`` on Redis Streams
plus N ``python -m workers`` processes, measured end to end through HTTP.

Uses Redis database :data:`~bench.settings.NEARLINE_REDIS_DB`, flushed before and after.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from bench.cases import Context
from bench.nearline_http import measure_url
from bench.processes import (
    flush_redis,
    redis_cpu_s,
    redis_url,
    running,
    session_cpu_s,
    start_serve,
    start_worker,
)
from bench.settings import NEARLINE_REDIS_DB
from bench.worker_drain import redis_unavailable


class RedisProfile:
    """API + lifecycle in one ``nearline serve --no-workers``, workers as separate processes.

    With several workers on this one box each gets ``OMP_NUM_THREADS=cores/workers``, as the
    torch backend's docs tell an operator to do for worker processes that share a node
    (torch's default, a thread per core in every process, oversubscribes the cores).
    """

    kind = "e2e"
    once = False

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.key = f"redis-{workers}w"
        threads = max((os.cpu_count() or 1) // workers, 1)
        self.env = {"OMP_NUM_THREADS": str(threads)} if workers > 1 else None
        plural = "s" if workers > 1 else ""
        note = f", OMP_NUM_THREADS={threads}" if self.env else ""
        self.title = f"nearline on Redis, {workers} worker{plural}{note}"

    def unavailable(self) -> str | None:
        return redis_unavailable()

    def run(self, ctx: Context) -> dict[str, Any]:
        workdir = ctx.workdir / f"{self.key}-r{ctx.round}"
        url = redis_url(NEARLINE_REDIS_DB)
        flush_redis(NEARLINE_REDIS_DB)
        try:
            with contextlib.ExitStack() as stack:
                ctx.progress.update("starting nearline serve --no-workers")
                proc, base = start_serve(workdir, ctx.models, "--no-workers", "--broker", url, name="serve")
                stack.enter_context(running(proc))
                sessions = [proc.popen.pid]
                for i in range(self.workers):
                    ctx.progress.update(f"starting worker {i + 1}/{self.workers}")
                    worker = start_worker(workdir, ctx.models, url, f"bench-redis-w{i}", env=self.env)
                    stack.enter_context(running(worker))
                    sessions.append(worker.popen.pid)

                def meter() -> dict[str, float]:
                    return {"system": session_cpu_s(sessions), "redis": redis_cpu_s()}

                return measure_url(base, ctx, meter, self.workers)
        finally:
            flush_redis(NEARLINE_REDIS_DB)
