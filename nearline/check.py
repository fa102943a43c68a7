"""``nearline check``: load every pipeline and model and run each pipeline once, in this process.

For each pipeline: build its steps (imports every function, checks every model step against
the repository), load its models, then run its ``examples:`` (or, without any, a sample built
from its input schema, :mod:`nearline.pipelines.samples`) through the steps, exactly as a
worker would. One line per pipeline says ``ok`` with the first output, or ``FAIL`` with the
reason (file, pipeline, step). Exit status: 0 every pipeline ran; 1 one failed; 2 the
pipelines files themselves cannot be loaded (a one-line error, as every command's).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from nearline.errors import JobFailure, NearlineError
from nearline.settings import WorkerSettings, add_flags, with_flags

PROG = "nearline check"
#: The worker settings ``nearline check`` takes flags for.
FLAGS = ("pipelines", "models", "model_backend", "triton_url")
_SHOWN = 100  # characters of the first output printed


@dataclass(frozen=True)
class Result:
    """What checking one pipeline found: ``problem`` None when it ran."""

    pipeline: str
    what: str
    problem: str | None = None
    output: Any = None
    ms: float = 0.0


def check(settings: WorkerSettings) -> list[Result]:
    """Check every pipeline of ``settings``' pipelines files against its model repository.

    Raises:
        ConfigError: The pipelines files cannot be loaded (or a folder holds none).
    """
    from nearline.pipelines.spec import load_pipelines

    catalog = load_pipelines(settings.pipelines)
    return [_check_one(settings, catalog.get(name)) for name in catalog.names()]


def _check_one(settings: WorkerSettings, pipeline: Any) -> Result:
    from nearline.models.repository import ModelRepository
    from nearline.pipelines.runner import PipelineRunner
    from nearline.pipelines.samples import from_schema
    from nearline.pipelines.spec import Catalog
    from nearline.worker.cli import onnx_options

    inputs = list(pipeline.examples)
    what = f"{len(inputs)} example{'s' * (len(inputs) != 1)}"
    if not inputs:
        sample = from_schema(pipeline.input_schema)
        if sample is None:
            return Result(
                pipeline.name,
                "no examples",
                "no examples, and no sample fits its input schema: add examples:",
            )
        inputs, what = [sample], "a sample from its schema"
    runner = None
    try:
        runner = PipelineRunner(
            Catalog([pipeline], pipeline.source),
            ModelRepository(settings.models),
            backend=settings.model_backend,
            triton_url=settings.triton_url,
            onnx=onnx_options(settings),
        )
        runner.warm()
        started = time.perf_counter()
        # Every deployment of the endpoint runs them: one at 0% traffic is still called by name.
        outcomes = {d.name: runner.run(pipeline.name, inputs, d.name).results for d in pipeline.deployments}
        ms = (time.perf_counter() - started) * 1000
    except NearlineError as exc:
        return Result(pipeline.name, what, exc.message)
    finally:
        if runner is not None:
            runner.close()
    for deployment, results in outcomes.items():
        for i, result in enumerate(results):
            if isinstance(result, JobFailure):
                which = f"example {i + 1}" if pipeline.examples else "the sample"
                which = f"deployment {deployment}: {which}" if len(outcomes) > 1 else which
                return Result(pipeline.name, what, f"{which} failed: {result.code}: {result.message}")
    return Result(pipeline.name, what, output=outcomes[pipeline.deployment.name][0], ms=ms)


def report(results: list[Result]) -> str:
    """One line per pipeline, and a summary line."""
    width = max((len(r.pipeline) for r in results), default=0)
    lines = []
    for r in results:
        if r.problem is None:
            shown = _abridged(json.dumps(r.output))
            lines.append(f"  ok    {r.pipeline:<{width}}  {r.what}, {r.ms:.1f} ms  -> {shown}")
        else:
            lines.append(f"  FAIL  {r.pipeline:<{width}}  {r.problem}")
    failed = sum(r.problem is not None for r in results)
    count = f"{len(results)} pipeline{'s' * (len(results) != 1)}"
    lines.append(f"{failed} of {count} failed" if failed else f"{count}: all ok")
    return "\n".join(lines)


def _abridged(text: str) -> str:
    return text if len(text) <= _SHOWN else text[: _SHOWN - 4] + " ..."


def main(argv: list[str] | None = None) -> int:
    """``nearline check [--pipelines ...] [--models DIR] [--model-backend ...]``; the exit status."""
    from nearline.cli import fail

    try:
        settings = WorkerSettings.from_env()
        parser = argparse.ArgumentParser(
            prog=PROG, description="Load every pipeline and model and run each pipeline's examples."
        )
        add_flags(parser, settings, only=FLAGS)
        settings = with_flags(settings, parser.parse_args(argv))
        from nearline.pipelines.files import pipeline_files

        files = ", ".join(map(str, pipeline_files(settings.pipelines)))
        print(f"checking {files} with the models in {settings.models}", flush=True)
        results = check(settings)
    except (NearlineError, OSError, KeyboardInterrupt) as exc:
        return fail(PROG, exc)
    print(report(results))
    return 1 if any(r.problem for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
