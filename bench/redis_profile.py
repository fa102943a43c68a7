"""nearline on Redis (the self-hosted profile): ``nearline serve --no-workers`` on Redis Streams
plus N ``python -m workers`` processes, measured end to end through HTTP.

Uses Redis database :data:`~bench.settings.NEARLINE_REDIS_DB`, flushed before and after.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from bench import runtimes
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

    With several workers on this one box each gets ``OMP_NUM_THREADS=cores/workers`` (and
    ``NEARLINE_ONNX_THREADS`` the same), as the backends' docs tell an operator to do for
    worker processes that share a node (the default, a thread per core in every process,
    oversubscribes the cores).
    """

    kind = "e2e"
    once = False

    def __init__(self, workers: int, runtime: str = runtimes.TORCH) -> None:
        self.workers, self.runtime = workers, runtime
        self.key = f"redis-{workers}w" + ("" if runtime == runtimes.TORCH else f"-{runtime}")
        threads = max((os.cpu_count() or 1) // workers, 1)
        self.env = runtimes.env(runtime, threads if workers > 1 else None)
        plural = "s" if workers > 1 else ""
        variable = "OMP_NUM_THREADS" if runtime == runtimes.TORCH else "NEARLINE_ONNX_THREADS"
        note = f", {variable}={threads}" if workers > 1 else ""
        on = "" if runtime == runtimes.TORCH else ", ONNX Runtime"
        self.title = f"nearline on Redis, {workers} worker{plural}{note}{on}"

    def unavailable(self, models: Path) -> str | None:
        return redis_unavailable() or runtimes.unavailable(self.runtime, models)

    def run(self, ctx: Context) -> dict[str, Any]:
        workdir = ctx.workdir / f"{self.key}-r{ctx.round}"
        url = redis_url(NEARLINE_REDIS_DB)
        flush_redis(NEARLINE_REDIS_DB)
        try:
            with contextlib.ExitStack() as stack:
                ctx.progress.update("starting nearline serve --no-workers")
                pipelines = str(runtimes.pipelines_file(self.runtime))
                args = ("--no-workers", "--broker", url, "--pipelines", pipelines)
                proc, base = start_serve(workdir, ctx.models, *args, name="serve")
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
