"""Topics throughput on Redis with 1 and 2 worker processes, beside the in-process limit.

Usage::

    .venv/bin/python bench/redis_throughput.py [--jobs 1000] [--workers 1,2] \
        [--url redis://127.0.0.1:6379/8] [--models models]

For each worker count: empty the database, start that many ``python -m workers`` processes
(batch 32) and wait until they have loaded their models, then submit ``--jobs`` topics jobs
through :class:`~nearline.service.JobService` (what an API replica does: validate, record,
enqueue) while this process runs the lifecycle (what an API replica runs beside it), and time
the first submit to the last job ending. The limit is :meth:`PipelineRunner.run` on batches of
32 of the same texts in this process, with no queue, store or HTTP (docs/benchmarks.md, Method).

On a shared machine the limit itself drifts, so it is measured before and after every Redis
run and each run's ratio uses the mean of the two around it. CPU seconds per job are printed
too (workers' from /proc, the front's = this process: submit + lifecycle, Redis's from INFO):
unlike wall-clock rates they do not depend on what else the machine is doing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import redis

if TYPE_CHECKING:
    from nearline.store_jobs import StoreJobs

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ROOT / "nearline" / "examples" / "pipelines.yaml"
BATCH = 32
SENTENCES = (
    "The striker scored twice in the final.",
    "Markets fell after the central bank raised rates.",
    "The senate voted on the new budget.",
    "A new vaccine trial showed strong results.",
    "The startup shipped its first chip.",
    "The band announced a world tour.",
)
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    rate: float  # jobs/s
    cpu_per_job_ms: float  # where the model runs (the limit's process, or the workers)
    front_ms: float = 0.0  # this process: submit + lifecycle
    redis_ms: float = 0.0  # the Redis server


def texts(n: int, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.sample(SENTENCES, k=rng.randint(1, 4))) for _ in range(n)]


def limit(inputs: list[str], models: Path) -> Run:
    """The topics pipeline run in-process on batches of 32."""
    from nearline.models.repository import ModelRepository
    from nearline.pipelines.runner import PipelineRunner
    from nearline.pipelines.spec import load_pipelines

    runner = PipelineRunner(load_pipelines(PIPELINES), ModelRepository(models))
    runner.warm()
    items = [{"text": t} for t in inputs]
    runner.run("topics", items[:BATCH])  # first-call overheads out of the timing
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(items), BATCH):
        runner.run("topics", items[i : i + BATCH])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Run(len(items) / wall, 1000 * cpu / len(items))


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def redis_cpu_s(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def start_workers(n: int, url: str, models: Path, logdir: Path) -> list[subprocess.Popen[bytes]]:
    procs, logs = [], [logdir / f"bench-worker-{i}.log" for i in range(n)]
    cmd = [sys.executable, "-m", "workers", "--broker", url, "--models", str(models), "--port", "-1"]
    for log in logs:
        with log.open("wb") as out:
            procs.append(subprocess.Popen([*cmd, "--max-batch", str(BATCH)], stdout=out, stderr=out))
    deadline = time.monotonic() + 180
    while not all(b"receiving from" in log.read_bytes() for log in logs):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError(f"workers did not start; see {logdir}/bench-worker-*.log")
        time.sleep(0.2)
    return procs


async def submit_all(jobs: StoreJobs, bodies: list[bytes]) -> None:
    """Submit one after another, as one API replica's request loop would."""
    for body in bodies:
        await jobs.submit("topics", body)


def on_redis(inputs: list[str], workers: int, url: str, models: Path, logdir: Path) -> Run:
    """First submit to last job ending, with ``workers`` worker processes."""
    from nearline.brokers.redis_streams import RedisBroker
    from nearline.lifecycle import Lifecycle
    from nearline.pipelines.spec import load_pipelines
    from nearline.store.redis_hashes import FINISHED, RedisStore
    from nearline.store_jobs import StoreJobs

    n = len(inputs)
    with redis.Redis.from_url(url) as r:
        r.flushdb()
        procs = start_workers(workers, url, models, logdir)
        broker, store = RedisBroker(url), RedisStore(url)
        lifecycle = Lifecycle(broker, store)
        jobs = StoreJobs(load_pipelines(PIPELINES), broker, store, max_queue_depth=n + 1)
        bodies = [json.dumps({"input": {"text": t}, "timeout_s": 600}).encode() for t in inputs]
        try:
            lifecycle.start()
            cpu0 = [cpu_s(p.pid) for p in procs], time.process_time(), redis_cpu_s(r)
            start = time.perf_counter()
            submitter = threading.Thread(target=lambda: asyncio.run(submit_all(jobs, bodies)))
            submitter.start()
            while r.zcard(FINISHED) < n:
                time.sleep(0.01)
            wall = time.perf_counter() - start
            worker_cpu = sum(cpu_s(p.pid) - c for p, c in zip(procs, cpu0[0], strict=True))
            front_cpu, redis_cpu = time.process_time() - cpu0[1], redis_cpu_s(r) - cpu0[2]
            submitter.join()
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=60)
            lifecycle.stop()
            broker.close()
            store.close()
            r.flushdb()
    return Run(n / wall, 1000 * worker_cpu / n, 1000 * front_cpu / n, 1000 * redis_cpu / n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--workers", default="1,2", help="worker process counts to run, comma-separated")
    p.add_argument("--url", default="redis://127.0.0.1:6379/8", help="an empty database (it is flushed)")
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--logs", type=Path, default=Path("/tmp"))
    args = p.parse_args()
    inputs = texts(args.jobs)
    counts = [int(w) for w in args.workers.split(",")]
    limits = [limit(inputs, args.models)]
    runs = []
    for n in counts:
        runs.append(on_redis(inputs, n, args.url, args.models, args.logs))
        limits.append(limit(inputs, args.models))
    print(f"topics, {args.jobs} jobs, batch {BATCH}, {os.cpu_count()} CPUs")
    print("run                     jobs/s   ratio  model-side CPU ms/job  front ms/job  redis ms/job")
    for i, lim in enumerate(limits):
        print(f"in-process limit #{i + 1}     {lim.rate:7.1f}       -  {lim.cpu_per_job_ms:10.2f}")
        if i < len(runs):
            run, mean = runs[i], (limits[i].rate + limits[i + 1].rate) / 2
            cpu_mean = (limits[i].cpu_per_job_ms + limits[i + 1].cpu_per_job_ms) / 2
            print(
                f"redis, {counts[i]} worker(s)      {run.rate:7.1f}  {run.rate / mean:6.2f}  "
                f"{run.cpu_per_job_ms:10.2f} ({cpu_mean / run.cpu_per_job_ms:4.2f} of limit's)"
                f"  {run.front_ms:9.2f}  {run.redis_ms:11.2f}"
            )


if __name__ == "__main__":
    main()
