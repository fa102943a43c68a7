"""The limits: a pipeline's own batched throughput in this process, no queue, no HTTP (docs/benchmarks.md).

``PipelineRunner.run`` on batches of :data:`~bench.settings.LIMIT_BATCH` of the run's request
mix, with the same models, backend and threading a worker has. Three cases:

* ``limit`` (the yardstick): the jobs in windows of :data:`~nearline.constants.BATCH_WINDOW`
  batches, each window cut by :func:`nearline.windows.cut` into batches of similar length, as a
  busy worker cuts what it leases: the best a worker can do with this mix on torch;
* ``limit-arrival``: consecutive batches of 32 in arrival order (what the limit was before
  length-aware batches), to show what the sorting is worth;
* ``limit-onnx``: the yardstick on ONNX Runtime (``bench/pipelines-onnx.yaml``).

The ``identity`` pipeline's limit is measured the same way (it is the cost of the runner alone).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import runtimes, workload
from bench.cases import Context
from bench.settings import IDENTITY, LIMIT_BATCH, PIPELINE
from nearline.constants import BATCH_WINDOW

if TYPE_CHECKING:
    from nearline.pipelines.runner import PipelineRunner

#: Batches run before timing (TorchScript's profiling executor optimises on the first calls).
_WARMUP_BATCHES = 12
#: The identity pipeline is timed for this long (it runs ~10^5-10^6 jobs/s).
_IDENTITY_S = 0.5


class Limit:
    """The in-process limit of the topics pipeline (and of identity) on one runtime.

    Args:
        sort: Cut windows of :data:`BATCH_WINDOW` batches by text length (else arrival order).
        runtime: ``torch`` or ``onnx`` (:mod:`bench.runtimes`).
    """

    kind = "limit"
    once = False

    def __init__(self, sort: bool = True, runtime: str = runtimes.TORCH) -> None:
        self.sort, self.runtime = sort, runtime
        on_onnx = runtime != runtimes.TORCH
        self.key = "limit" + ("" if sort else "-arrival") + (f"-{runtime}" if on_onnx else "")
        order = "sorted by length" if sort else "in arrival order"
        on = ", ONNX Runtime" if on_onnx else ""
        self.title = f"limit: topics in-process, batches of {LIMIT_BATCH} {order}{on}"
        self._runner: PipelineRunner | None = None

    def unavailable(self, models: Path) -> str | None:
        return runtimes.unavailable(self.runtime, models)

    def run(self, ctx: Context) -> dict[str, Any]:
        runner = self._load(ctx)
        inputs = workload.inputs(ctx.sizes.limit_jobs, mix=ctx.mix)
        batches = self.batches(inputs)
        if ctx.round == 1:  # as many warm-up batches as measured ones, at most _WARMUP_BATCHES
            warm = workload.inputs(min(_WARMUP_BATCHES, len(batches)) * LIMIT_BATCH, seed=1, mix=ctx.mix)
            for batch in self.batches(warm):
                runner.run(PIPELINE, batch)
        steps: dict[str, float] = {}
        failed = 0
        started, cpu = time.perf_counter(), time.process_time()
        for n, batch in enumerate(batches, 1):
            outcome = runner.run(PIPELINE, batch)
            failed += sum(isinstance(r, Exception) for r in outcome.results)
            for step, ms in outcome.timings.items():
                steps[step] = steps.get(step, 0.0) + ms
            if n % 8 == 0:
                ctx.progress.update(f"{n}/{len(batches)} batches")
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        if failed:
            raise RuntimeError(f"the limit's pipeline failed {failed} of {len(inputs)} jobs")
        throughput = len(inputs) / elapsed
        identity = _identity_limit(runner, inputs[:LIMIT_BATCH])
        ctx.progress.note(f"{throughput:.1f} jobs/s (identity {identity:,.0f} jobs/s)")
        return {
            "throughput": throughput,
            "identity_throughput": identity,
            "jobs": len(inputs),
            "batch_mean": len(inputs) / len(batches),
            "cpu_ms_per_job": {"system": 1000 * cpu / len(inputs)},
            "step_ms_per_job": {step: ms / len(inputs) for step, ms in steps.items()},
        }

    def batches(self, inputs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """``inputs`` as the batches this limit runs, in order."""
        if not self.sort:
            return [inputs[k : k + LIMIT_BATCH] for k in range(0, len(inputs), LIMIT_BATCH)]
        from nearline.windows import cut

        span = LIMIT_BATCH * BATCH_WINDOW
        out: list[list[dict[str, Any]]] = []
        for k in range(0, len(inputs), span):
            out += cut(inputs[k : k + span], LIMIT_BATCH, lambda item: (0, len(item["text"]), 0.0))
        return out

    def _load(self, ctx: Context) -> PipelineRunner:
        if self._runner is None:
            ctx.progress.update("loading models")
            self._runner = runtimes.runner(self.runtime, ctx.models)
            self._runner.warm()
        return self._runner


def _identity_limit(runner: PipelineRunner, batch: Sequence[Any]) -> float:
    jobs, started = 0, time.perf_counter()
    while time.perf_counter() - started < _IDENTITY_S:
        runner.run(IDENTITY, list(batch))
        jobs += len(batch)
    return jobs / (time.perf_counter() - started)
