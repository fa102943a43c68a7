"""The model runtimes a system is measured on: TorchScript (torch) or ONNX Runtime (onnx).

The same pipelines (``topics``, ``identity``) and the same request mix on either runtime:

* ``torch``: ``bench/pipelines-torch.yaml``, the example ``topics`` endpoint's deployment v1
  (TorchScript MiniLM and head, in process) and ``identity``, pinned so that the bench loads
  exactly the models it measures;
* ``onnx``: ``bench/pipelines-onnx.yaml``, the same steps with ``backend: onnx`` on the ONNX
  exports ``nearline models build`` writes beside the TorchScript models.

A runtime reaches a system through ``NEARLINE_PIPELINES`` (``nearline serve``, ``python -m
workers``, the Celery peer's tasks) or :func:`runner` (the in-process limits), so every system
of one runtime runs the very same model files and pre/post-processing.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from bench.settings import PIPELINE

if TYPE_CHECKING:
    from nearline.pipelines.runner import PipelineRunner

TORCH, ONNX = "torch", "onnx"
RUNTIMES = (TORCH, ONNX)
#: Each runtime's pipelines file.
PIPELINES = {runtime: Path(__file__).resolve().parent / f"pipelines-{runtime}.yaml" for runtime in RUNTIMES}


def pipelines_file(runtime: str) -> Path:
    """The pipelines file of ``runtime``."""
    return PIPELINES[runtime]


def env(runtime: str, threads: int | None = None) -> dict[str, str]:
    """Environment of a process serving ``runtime``: its pipelines and, when given, its threads.

    ``threads`` is what an operator sets for processes that share a node: ``OMP_NUM_THREADS``
    for torch and ``NEARLINE_ONNX_THREADS`` for ONNX Runtime (which reads no OMP variable).
    """
    out = {"NEARLINE_PIPELINES": str(pipelines_file(runtime))}
    if threads is not None:
        out["OMP_NUM_THREADS"] = str(threads)
        out["NEARLINE_ONNX_THREADS"] = str(threads)
    return out


@functools.cache
def unavailable(runtime: str, models: Path) -> str | None:
    """Why ``runtime`` cannot be measured on ``models``, or None (every model of its file loads).

    Asked once per runtime and repository (it loads the models)."""
    if runtime == ONNX:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (requirements-worker.txt)"
    from nearline.errors import NearlineError

    try:
        runner(runtime, models, threads=1).warm()
    except NearlineError as exc:
        return f"the {runtime} models do not load (run `make models`): {exc}"
    return None


def runner(runtime: str, models: Path, threads: int | None = None) -> PipelineRunner:
    """A :class:`PipelineRunner` of ``runtime``'s pipelines on ``models`` (models not loaded).

    ``threads``: ONNX Runtime's intra-op threads (None: its default, one per core); torch's
    are set by ``OMP_NUM_THREADS`` before it is imported.
    """
    from nearline.models.backend import OnnxOptions
    from nearline.models.repository import ModelRepository
    from nearline.pipelines.runner import PipelineRunner
    from nearline.pipelines.spec import load_pipelines

    catalog = load_pipelines(pipelines_file(runtime))
    if PIPELINE not in catalog.names():
        raise ValueError(f"{pipelines_file(runtime)} has no {PIPELINE!r} pipeline")
    return PipelineRunner(catalog, ModelRepository(models), onnx=OnnxOptions(intra_op_threads=threads or 0))
