"""Triton: the topics models served by a local Triton server, called directly vs through nearline.

Both cases start ``nearline triton serve`` (pytriton's bundled ``tritonserver``; the models run
with torch in that server process, behind Triton's Python backend) on free loopback ports:

* ``triton-direct``: this process runs ``PipelineRunner(..., backend="triton")`` on batches of
  :data:`~bench.settings.LIMIT_BATCH` (tokenise here, ``minilm`` then ``topics`` over gRPC), no
  queue, no HTTP: the limit of the pipeline with its models on Triton;
* ``triton-nearline``: ``nearline serve --no-workers`` on SQLite plus one
  ``python -m workers --model-backend triton`` on the same file, measured end to end like every
  other system (:func:`bench.measure.measure`).

Skipped when ``nearline/models/triton_backend.py`` or ``nvidia-pytriton`` is missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench import runtimes, workload
from bench.cases import Context
from bench.nearline_http import measure_url
from bench.processes import running, session_cpu_s, spawn, start_serve, start_worker, wait_until
from bench.settings import LIMIT_BATCH, PIPELINE

#: Batches run through Triton before timing (first calls load and optimise the models).
_WARMUP_BATCHES = 12


def triton_unavailable() -> str | None:
    if importlib.util.find_spec("nearline.models.triton_backend") is None:
        return "no Triton backend yet (nearline/models/triton_backend.py missing)"
    if importlib.util.find_spec("pytriton") is None or importlib.util.find_spec("nearline.triton") is None:
        return "no local Triton server (nvidia-pytriton or nearline.triton missing)"
    return None


@contextlib.contextmanager
def triton_server(workdir: Path, models: Path) -> Iterator[tuple[str, int]]:
    """A local Triton server for the repository; yields (gRPC URL, its session id).

    Every model is served: a worker with ``--model-backend triton`` loads every pipeline's models.
    """
    from bench.processes import free_port

    http, grpc, metrics = free_port(), free_port(), free_port()
    cmd = [sys.executable, "-m", "nearline", "triton", "serve", "--models", str(models),
           "--http-port", str(http), "--grpc-port", str(grpc),
           "--metrics-port", str(metrics)]  # fmt: skip
    with running(spawn("triton", cmd, workdir)) as proc:
        ready = f"http://127.0.0.1:{http}/v2/health/ready"
        wait_until(proc, lambda: httpx.get(ready, timeout=1).status_code == 200, "Triton ready")
        yield f"grpc://127.0.0.1:{grpc}", proc.popen.pid


class TritonDirect:
    """The topics pipeline in this process with its models on Triton (no queue, no HTTP)."""

    key = "triton-direct"
    title = "Triton direct: topics, models on Triton, batches of 32"
    kind = "limit"
    runtime = "torch"  # the models are TorchScript, run by torch inside Triton
    once = True

    def unavailable(self, models: Path) -> str | None:
        return triton_unavailable()

    def run(self, ctx: Context) -> dict[str, Any]:
        from nearline.models.repository import ModelRepository
        from nearline.pipelines.runner import PipelineRunner
        from nearline.pipelines.spec import load_pipelines

        workdir = ctx.workdir / f"{self.key}-r{ctx.round}"
        ctx.progress.update("starting Triton")
        with triton_server(workdir, ctx.models) as (url, session):
            runner = PipelineRunner(
                load_pipelines(runtimes.pipelines_file(runtimes.TORCH)),
                ModelRepository(ctx.models),
                backend="triton",
                triton_url=url,
            )
            try:
                runner.warm()
                warm = workload.inputs(_WARMUP_BATCHES * LIMIT_BATCH, seed=1, mix=ctx.mix)
                for k in range(0, len(warm), LIMIT_BATCH):
                    runner.run(PIPELINE, warm[k : k + LIMIT_BATCH])
                inputs = workload.inputs(ctx.sizes.limit_jobs, mix=ctx.mix)
                cpu = session_cpu_s([session]), time.process_time()
                started, failed = time.perf_counter(), 0
                for k in range(0, len(inputs), LIMIT_BATCH):
                    outcome = runner.run(PIPELINE, inputs[k : k + LIMIT_BATCH])
                    failed += sum(isinstance(r, Exception) for r in outcome.results)
                    ctx.progress.update(f"{k + LIMIT_BATCH}/{len(inputs)} jobs")
                elapsed = time.perf_counter() - started
                server_cpu, client_cpu = session_cpu_s([session]) - cpu[0], time.process_time() - cpu[1]
            finally:
                runner.close()
        if failed:
            raise RuntimeError(f"{failed} of {len(inputs)} jobs failed through Triton")
        throughput = len(inputs) / elapsed
        ctx.progress.note(f"{throughput:.1f} jobs/s")
        return {
            "throughput": throughput,
            "jobs": len(inputs),
            "cpu_ms_per_job": {
                "system": 1000 * server_cpu / len(inputs),
                "client": 1000 * client_cpu / len(inputs),
            },
        }


class TritonNearline:
    """nearline (SQLite, 1 worker) whose worker runs every model step on Triton."""

    key = "triton-nearline"
    title = "nearline (SQLite) + Triton, 1 worker"
    kind = "e2e"
    runtime = "torch"
    once = True

    def unavailable(self, models: Path) -> str | None:
        return triton_unavailable()

    def run(self, ctx: Context) -> dict[str, Any]:
        workdir = ctx.workdir / f"{self.key}-r{ctx.round}"
        broker = f"sqlite:///{(workdir / 'data' / 'nearline.db').resolve()}"
        with contextlib.ExitStack() as stack:
            ctx.progress.update("starting Triton")
            url, triton = stack.enter_context(triton_server(workdir, ctx.models))
            ctx.progress.update("starting nearline serve --no-workers")
            env = runtimes.env(runtimes.TORCH)
            proc, base = start_serve(workdir, ctx.models, "--no-workers", "--broker", broker, env=env)
            stack.enter_context(running(proc))
            ctx.progress.update("starting the worker")
            args = ("--model-backend", "triton", "--triton-url", url)
            worker = stack.enter_context(
                running(start_worker(workdir, ctx.models, broker, "bench-triton", *args, env=env))
            )
            sessions = [triton, proc.popen.pid, worker.popen.pid]
            return measure_url(base, ctx, lambda: {"system": session_cpu_s(sessions)})
