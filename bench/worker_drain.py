"""A worker draining a pre-loaded queue: the worker and broker alone, no HTTP, no lifecycle.

One ``python -m workers`` process is started on an empty queue and waits until it is
receiving (models loaded) and warmed up; then ``drain_jobs`` job records are created and their
request messages sent in one ``send_many`` (so the whole backlog appears at once), and the
clock runs from that send until every result is on the response queue (its depth, polled;
nobody consumes it). Afterwards the result messages tell how the worker spent its time: how
many batches, of what size, and the share of the wall time it was inside the pipeline.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import runtimes, workload
from bench.cases import Context
from bench.processes import (
    flush_redis,
    redis_cpu_s,
    redis_reachable,
    redis_url,
    running,
    session_cpu_s,
    start_worker,
)
from bench.settings import NEARLINE_REDIS_DB, PIPELINE, START_TIMEOUT_S
from nearline.brokers import Broker, open_broker
from nearline.constants import REQUEST_QUEUE, RESPONSE_QUEUE
from nearline.messages import RequestMessage, ResultMessage
from nearline.store import StatusStore, open_store
from nearline.submissions import Submission, new_job

#: The worker serves the bench's torch pipelines (bench/runtimes.py).
TORCH_ENV = runtimes.env(runtimes.TORCH)
#: Messages sent to warm the worker's models before the clock runs.
_WARMUP = 384
#: How often the response queue's depth is read while waiting (a read, never the write lock).
_POLL_S = 0.01


class WorkerDrain:
    """One worker process draining ``drain_jobs`` pre-loaded topics jobs on ``backend``."""

    kind = "drain"
    runtime = "torch"

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.once = backend != "sqlite"  # docs/benchmarks.md reports SQLite's; Redis's informs the analysis
        self.key = f"worker-{backend}"
        self.title = f"worker drain, {'SQLite' if backend == 'sqlite' else 'Redis'}, 1 worker"

    def unavailable(self, models: Path) -> str | None:
        if self.backend == "redis":
            return redis_unavailable()
        return None

    def run(self, ctx: Context) -> dict[str, Any]:
        workdir = ctx.workdir / f"{self.key}-r{ctx.round}"
        with self._broker(workdir) as url:
            broker, store = open_broker(url), open_store(url)
            try:
                ctx.progress.update("starting the worker")
                started = start_worker(workdir, ctx.models, url, f"bench-{self.key}", env=TORCH_ENV)
                with running(started) as worker:
                    ctx.progress.update("warm-up")
                    warm = workload.inputs(_WARMUP, seed=2, mix=ctx.mix)
                    _drain(broker, store, warm, ctx, "warm-up")
                    cpu_before = self._cpu(worker.popen.pid)
                    inputs = workload.inputs(ctx.sizes.drain_jobs, mix=ctx.mix)
                    figures = _drain(broker, store, inputs, ctx, "drain")
                    cpu_after = self._cpu(worker.popen.pid)
            finally:
                broker.close()
                store.close()
        figures["cpu_ms_per_job"] = {
            part: 1000 * (cpu_after[part] - cpu_before[part]) / figures["jobs"] for part in cpu_after
        }
        ctx.progress.note(
            f"{figures['throughput']:.1f} jobs/s, batches of {figures['batch_mean']:.1f}, "
            f"in the pipeline {100 * figures['busy_fraction']:.0f}% of the time"
        )
        return figures

    def _cpu(self, worker: int) -> dict[str, float]:
        used = {"system": session_cpu_s([worker])}
        if self.backend == "redis":
            used["redis"] = redis_cpu_s()
        return used

    @contextlib.contextmanager
    def _broker(self, workdir: Any) -> Iterator[str]:
        if self.backend == "sqlite":
            workdir.mkdir(parents=True, exist_ok=True)
            yield f"sqlite:///{(workdir / 'drain.db').resolve()}"
            return
        flush_redis(NEARLINE_REDIS_DB)
        try:
            yield redis_url(NEARLINE_REDIS_DB)
        finally:
            flush_redis(NEARLINE_REDIS_DB)


def redis_unavailable() -> str | None:
    """Why nearline's Redis profile cannot run here, or None."""
    if importlib.util.find_spec("nearline.brokers.redis_streams") is None:
        return "no Redis backend yet (nearline/brokers/redis_streams.py missing)"
    reason = redis_reachable()
    if reason:
        return reason
    try:
        broker = open_broker(redis_url(NEARLINE_REDIS_DB))
        try:
            broker.depth(REQUEST_QUEUE)
        finally:
            broker.close()
    except Exception as exc:  # a half-finished backend: report it, run the rest
        return f"Redis backend failing: {type(exc).__name__}: {exc}"
    return None


def _drain(
    broker: Broker, store: StatusStore, inputs: list[dict[str, Any]], ctx: Context, phase: str
) -> dict[str, Any]:
    before = broker.depth(RESPONSE_QUEUE)
    messages = []
    for value in inputs:  # records first, as the API would have made them; not timed
        job, _ = store.create(new_job(Submission(PIPELINE, value, 600.0, "normal", None), _job_id()))
        messages.append(
            (job.id, RequestMessage(job.id, PIPELINE, value, time.time(), job.deadline).to_json())
        )
    target = before + len(messages)
    started = time.perf_counter()
    broker.send_many(REQUEST_QUEUE, messages)
    while (done := broker.depth(RESPONSE_QUEUE)) < target:
        elapsed = time.perf_counter() - started
        if elapsed > START_TIMEOUT_S + len(inputs) / 5:
            raise RuntimeError(f"{phase}: {done - before}/{len(inputs)} results after {elapsed:.0f} s")
        ctx.progress.update(f"{phase} {done - before}/{len(inputs)} jobs")
        time.sleep(_POLL_S)
    elapsed = time.perf_counter() - started
    return {
        "throughput": len(inputs) / elapsed,
        "jobs": len(inputs),
        "elapsed_s": elapsed,
        **_batches(broker, elapsed),
    }


def _batches(broker: Broker, wall_s: float) -> dict[str, Any]:
    """Batch count, mean size and time inside the pipeline, from the result messages."""
    spans: dict[tuple[str, float], float] = {}
    steps: dict[str, float] = {}
    failed = total = 0
    while deliveries := broker.receive(RESPONSE_QUEUE, 1000, 0.0):
        for d in deliveries:
            result = ResultMessage.from_json(d.body)
            total += 1
            failed += result.status != "Completed"
            key = (result.worker, result.started_at or 0.0)
            if key not in spans:
                spans[key] = (result.finished_at or 0.0) - (result.started_at or 0.0)
                for step, ms in result.timings.items():
                    steps[step] = steps.get(step, 0.0) + ms
        broker.complete_many(deliveries)
    busy = sum(spans.values())
    return {
        "failed": failed,
        "batches": len(spans),
        "batch_mean": total / len(spans) if spans else 0.0,
        "busy_fraction": busy / wall_s if wall_s else 0.0,
        "step_ms_per_job": {step: ms / total for step, ms in steps.items()} if total else {},
    }


def _job_id() -> str:
    import uuid

    return uuid.uuid4().hex
