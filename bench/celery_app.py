"""The peer (docs/benchmarks.md): the same pipelines behind Celery, written the way most users write it.

One task per request (no batching), Redis as broker and result backend, Celery's defaults
otherwise (JSON, prefetch multiplier 4, early ack). The task runs nearline's own
:class:`~nearline.pipelines.runner.PipelineRunner` on a batch of one, so the model code, the
models and the pre/post-processing are exactly the ones nearline's workers run; each pool
process loads the models once, on its first task. On the ONNX runtime that runner's model
steps are an ``onnxruntime.InferenceSession`` per model in each pool process.

Started by :mod:`bench.celery_peer` as
``celery -A bench.celery_app worker --pool=prefork --concurrency=2`` with
``BENCH_CELERY_URL`` (broker and backend), ``NEARLINE_MODELS``, ``NEARLINE_PIPELINES`` (the
runtime's pipelines file, :mod:`bench.runtimes`) and, for ONNX Runtime's intra-op threads,
``NEARLINE_ONNX_THREADS`` in the environment.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import Celery

from bench.settings import CELERY_REDIS_DB, DEFAULT_MODELS, REDIS_HOST, REDIS_PORT

if TYPE_CHECKING:
    from nearline.pipelines.runner import PipelineRunner

URL = os.environ.get("BENCH_CELERY_URL", f"redis://{REDIS_HOST}:{REDIS_PORT}/{CELERY_REDIS_DB}")

app = Celery("bench", broker=URL, backend=URL)
app.conf.update(broker_connection_retry_on_startup=True)


@functools.cache
def runner() -> PipelineRunner:
    """This process's runner, models loaded (once per pool process)."""
    from nearline.models.backend import OnnxOptions
    from nearline.models.repository import ModelRepository
    from nearline.pipelines.runner import PipelineRunner
    from nearline.pipelines.spec import load_pipelines
    from nearline.serve import default_pipelines

    loaded = PipelineRunner(
        load_pipelines(Path(os.environ.get("NEARLINE_PIPELINES") or default_pipelines())),
        ModelRepository(Path(os.environ.get("NEARLINE_MODELS", DEFAULT_MODELS))),
        onnx=OnnxOptions(intra_op_threads=int(os.environ.get("NEARLINE_ONNX_THREADS") or 0)),
    )
    loaded.warm()
    return loaded


@app.task(name="bench.score")
def score(pipeline: str, value: Any) -> Any:
    """Run ``pipeline`` on one input; the job's output, or an exception (the task fails)."""
    [result] = runner().run(pipeline, [value]).results
    if isinstance(result, Exception):
        raise RuntimeError(str(result))
    return result
