"""Length-aware batches, measured: arrival order against windows cut by length (docs/benchmarks.md).

``python -m bench.windows [--jobs N]``: in this one process, with the repository's models and the
run's request mix (:mod:`bench.workload`), on the ``topics`` pipeline (MiniLM):

1. the in-process limit in arrival order: ``PipelineRunner.run`` on consecutive batches of 32;
2. the sorted limit (the yardstick): the same jobs in windows of four batches, each cut by
   :func:`nearline.windows.cut` into batches of similar length;
3. a :class:`~nearline.worker.Worker` draining the whole backlog from an in-memory broker, once
   with ``batch_window`` 1 (arrival order) and once with the default window.

The four are interleaved for ``--rounds`` rounds (the machine is shared: a neighbour's load
lands on all four alike); it prints each one's median jobs/s and CPU ms per job (this process's
CPU time, torch's threads included) and the ratios of the medians, from this one run. No HTTP,
no other process: what the window changes is the worker's batches, and here it shows alone.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench import workload
from bench.settings import LIMIT_BATCH, PIPELINE
from nearline.brokers.memory import MemoryBroker
from nearline.constants import BATCH_WINDOW, REQUEST_QUEUE, RESPONSE_QUEUE
from nearline.messages import RequestMessage
from nearline.models.repository import ModelRepository
from nearline.pipelines.runner import PipelineRunner
from nearline.pipelines.spec import load_pipelines
from nearline.serve import default_pipelines
from nearline.windows import cut
from nearline.worker import Worker, WorkerConfig

_WARMUP_BATCHES = 12


def limit(runner: PipelineRunner, inputs: list[dict[str, Any]], window: int) -> float:
    """Jobs/s of ``runner`` on ``inputs``: batches of 32 in arrival order (``window`` 1), or
    windows of ``window`` batches cut by text length."""
    started = time.perf_counter()
    span = LIMIT_BATCH * window
    for k in range(0, len(inputs), span):
        chunk = inputs[k : k + span]
        batches = cut(chunk, LIMIT_BATCH, lambda i: (0, len(i["text"]), 0.0)) if window > 1 else [chunk]
        for batch in batches:
            runner.run(PIPELINE, batch)
    return len(inputs) / (time.perf_counter() - started)


def drain(runner: PipelineRunner, inputs: list[dict[str, Any]], window: int) -> float:
    """Jobs/s of a worker with ``batch_window`` ``window`` draining ``inputs``, all waiting."""
    broker = MemoryBroker()
    now = time.time()
    messages = [(f"j{i}", RequestMessage(f"j{i}", PIPELINE, x, now).to_json()) for i, x in enumerate(inputs)]
    broker.send_many(REQUEST_QUEUE, messages)
    worker = Worker(broker, runner, config=WorkerConfig(batch_window=window, idle_wait_s=0.05))
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    started = time.perf_counter()
    thread.start()
    while broker.depth(RESPONSE_QUEUE) < len(inputs):
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    stop.set()
    thread.join(30)
    return len(inputs) / elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.windows", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=768, help="jobs per measurement (default 768)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--models", type=Path, default=Path("models"), help="model repository")
    args = parser.parse_args(argv)
    runner = PipelineRunner(load_pipelines(default_pipelines()), ModelRepository(args.models))
    runner.warm()
    warm = workload.inputs(_WARMUP_BATCHES * LIMIT_BATCH, seed=1)
    for k in range(0, len(warm), LIMIT_BATCH):
        runner.run(PIPELINE, warm[k : k + LIMIT_BATCH])
    inputs = workload.inputs(args.jobs)
    cases = {
        "limit, arrival order": lambda: limit(runner, inputs, 1),
        f"limit, sorted (windows of {BATCH_WINDOW} batches)": lambda: limit(runner, inputs, BATCH_WINDOW),
        "worker drain, batch_window 1 (arrival order)": lambda: drain(runner, inputs, 1),
        f"worker drain, batch_window {BATCH_WINDOW} (default)": lambda: drain(runner, inputs, BATCH_WINDOW),
    }
    rates: dict[str, list[float]] = {name: [] for name in cases}
    cpu_ms: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, case in cases.items():
            cpu = time.process_time()
            rates[name].append(case())
            cpu_ms[name].append(1000 * (time.process_time() - cpu) / len(inputs))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, rate in medians.items():
        spread = f"[{min(rates[name]):.1f}-{max(rates[name]):.1f}]"
        print(
            f"{name:<48} {rate:7.1f} jobs/s {spread:>15}  {statistics.median(cpu_ms[name]):6.1f} CPU ms/job"
        )
    order, sorted_, drain1, drain4 = medians.values()
    print(f"sorted limit / arrival-order limit: {sorted_ / order:.2f}x")
    print(f"worker with window / without:       {drain4 / drain1:.2f}x")
    print(f"worker with window / sorted limit:  {drain4 / sorted_:.2f}x")


if __name__ == "__main__":
    main()
