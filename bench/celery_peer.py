"""The peer: Celery + Redis (broker and result backend), one task per request.

The worker is what ``celery -A app worker`` gives a user on this box: the prefork pool with
one process per core (``--concurrency=2``, written out). Two variants:

* ``celery``: each pool process runs torch on one thread (``OMP_NUM_THREADS=1``), the usual
  advice for a process-per-core pool and the peer the goals are measured against (the stronger
  of the two here);
* ``celery-default``: torch's default, one thread per core in *each* pool process, i.e. four
  busy-waiting OpenMP threads on two cores; what a user who changes nothing gets;
* ``celery-onnx``: the same peer on ONNX Runtime (``bench/pipelines-onnx.yaml``: an
  ``InferenceSession`` per model in each pool process, one intra-op thread each): the peer on
  nearline's runtime, so that nearline ÷ it is the batching gain alone.

Clients call ``score.delay(...)`` then ``.get()``, blocking, from a thread pool (Celery's
client API is synchronous; its Redis result backend is per thread, so each client thread has
its own connection). The measurement is the same as nearline's (:func:`bench.measure.measure`).
Uses Redis database :data:`~bench.settings.CELERY_REDIS_DB`, flushed before and after.
"""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import runtimes
from bench.cases import Context
from bench.load import Call
from bench.measure import CpuMeter, measure
from bench.processes import (
    flush_redis,
    redis_cpu_s,
    redis_reachable,
    redis_url,
    running,
    session_cpu_s,
    spawn,
    wait_until,
)
from bench.settings import CELERY_REDIS_DB, CONCURRENCY, REQUEST_TIMEOUT_S

POOL = "prefork"
POOL_PROCESSES = 2


class CeleryPeer:
    """A Celery worker subprocess (prefork, 2 processes), fresh every round.

    Args:
        one_thread: Run the models on one thread per pool process (``OMP_NUM_THREADS=1``,
            ``NEARLINE_ONNX_THREADS=1``).
        runtime: ``torch`` or ``onnx`` (:mod:`bench.runtimes`).
    """

    kind = "e2e"

    def __init__(self, one_thread: bool = True, runtime: str = runtimes.TORCH) -> None:
        self.one_thread, self.runtime = one_thread, runtime
        self.once = not one_thread  # the default-threads variant shows a pitfall: one round
        self.key = ("celery" if one_thread else "celery-default") + (
            "" if runtime == runtimes.TORCH else f"-{runtime}"
        )
        engine = "torch" if runtime == runtimes.TORCH else "ONNX Runtime"
        threads = f"1 {engine} thread each" if one_thread else f"default {engine} threads"
        self.title = f"Celery + Redis ({POOL} x{POOL_PROCESSES}, {threads})"

    def unavailable(self, models: Path) -> str | None:
        try:
            import celery  # noqa: F401
        except ImportError:
            return "celery is not installed (requirements-dev.txt)"
        return redis_reachable() or runtimes.unavailable(self.runtime, models)

    def run(self, ctx: Context) -> dict[str, Any]:
        url = redis_url(CELERY_REDIS_DB)
        workdir = ctx.workdir / f"{self.key}-r{ctx.round}"
        flush_redis(CELERY_REDIS_DB)
        cmd = [
            sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker",
            f"--pool={POOL}", f"--concurrency={POOL_PROCESSES}", "--loglevel=WARNING",
            "--hostname", f"bench-{self.key}-{ctx.round}@%h",
        ]  # fmt: skip
        env = {
            "BENCH_CELERY_URL": url,
            "NEARLINE_MODELS": str(ctx.models),
            **runtimes.env(self.runtime, 1 if self.one_thread else None),
        }
        try:
            ctx.progress.update("starting the Celery worker")
            with running(spawn("celery", cmd, workdir, env)) as proc:
                from bench.celery_app import app

                wait_until(proc, lambda: bool(app.control.ping(timeout=0.5)), "reply to ping")
                return asyncio.run(
                    _measure(ctx, lambda: {"system": session_cpu_s([proc.popen.pid]), "redis": redis_cpu_s()})
                )
        finally:
            flush_redis(CELERY_REDIS_DB)


class CeleryClient:
    """``score.delay(pipeline, value).get()`` on a thread per request in flight."""

    def __init__(self, threads: int = CONCURRENCY) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="celery-client")

    def caller(self, pipeline: str) -> Call:
        from bench.celery_app import score

        def blocking(value: Any) -> None:
            score.delay(pipeline, value).get(timeout=REQUEST_TIMEOUT_S)

        async def call(value: Any) -> None:
            await asyncio.get_running_loop().run_in_executor(self._pool, blocking, value)

        return call

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


async def _measure(ctx: Context, cpu: CpuMeter) -> dict[str, Any]:
    client = CeleryClient()
    try:
        return await measure(client, ctx, cpu)
    finally:
        await client.close()
