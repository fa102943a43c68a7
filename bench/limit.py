"""The limit: a pipeline's own batched throughput in this process, no queue, no HTTP (docs/benchmarks.md).

``PipelineRunner.run`` on consecutive batches of :data:`~bench.settings.LIMIT_BATCH` of the
run's request mix, with the same models, backend and torch threading a worker has. The
``identity`` pipeline's limit is measured the same way (it is the cost of the runner alone).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bench import workload
from bench.cases import Context
from bench.settings import IDENTITY, LIMIT_BATCH, PIPELINE

if TYPE_CHECKING:
    from nearline.pipelines.runner import PipelineRunner

#: Batches run before timing (TorchScript's profiling executor optimises on the first calls).
_WARMUP_BATCHES = 12
#: The identity pipeline is timed for this long (it runs ~10^5-10^6 jobs/s).
_IDENTITY_S = 0.5


class Limit:
    """The in-process limit of the topics pipeline (and of identity)."""

    key = "limit"
    title = "limit: topics in-process, batches of 32"
    kind = "limit"
    once = False

    def __init__(self) -> None:
        self._runner: PipelineRunner | None = None

    def unavailable(self) -> str | None:
        return None

    def run(self, ctx: Context) -> dict[str, Any]:
        runner = self._load(ctx)
        inputs = workload.inputs(ctx.sizes.limit_jobs)
        batches = [inputs[k : k + LIMIT_BATCH] for k in range(0, len(inputs), LIMIT_BATCH)]
        if ctx.round == 1:
            warm = workload.inputs(_WARMUP_BATCHES * LIMIT_BATCH, seed=1)
            for k in range(_WARMUP_BATCHES):
                runner.run(PIPELINE, warm[k * LIMIT_BATCH : (k + 1) * LIMIT_BATCH])
        steps: dict[str, float] = {}
        failed = 0
        started, cpu = time.perf_counter(), time.process_time()
        for n, batch in enumerate(batches, 1):
            outcome = runner.run(PIPELINE, batch)
            failed += sum(isinstance(r, Exception) for r in outcome.results)
            for step, ms in outcome.timings.items():
                steps[step] = steps.get(step, 0.0) + ms
            if n % 8 == 0:
                ctx.progress.update(f"{n * LIMIT_BATCH}/{len(inputs)} jobs")
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
            "cpu_ms_per_job": {"system": 1000 * cpu / len(inputs)},
            "step_ms_per_job": {step: ms / len(inputs) for step, ms in steps.items()},
        }

    def _load(self, ctx: Context) -> PipelineRunner:
        if self._runner is None:
            from nearline.models.repository import ModelRepository
            from nearline.pipelines.runner import PipelineRunner
            from nearline.pipelines.spec import load_pipelines
            from nearline.serve import default_pipelines

            ctx.progress.update("loading models")
            self._runner = PipelineRunner(load_pipelines(default_pipelines()), ModelRepository(ctx.models))
            self._runner.warm()
        return self._runner


def _identity_limit(runner: PipelineRunner, batch: Sequence[Any]) -> float:
    jobs, started = 0, time.perf_counter()
    while time.perf_counter() - started < _IDENTITY_S:
        runner.run(IDENTITY, list(batch))
        jobs += len(batch)
    return jobs / (time.perf_counter() - started)
