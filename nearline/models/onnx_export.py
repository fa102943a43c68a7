"""ONNX beside TorchScript: the example models exported for ONNX Runtime (``nearline models build``).

Each ``<name>`` the build makes gets a sibling model ``<name>_onnx`` (Triton's config is per
model folder, one platform each): the same tensors (``INPUT__i`` → ``OUTPUT__i``, dtypes, dims,
``max_batch_size``, dynamic batcher, labels) with ``platform: "onnxruntime_onnx"`` and
``<version>/model.onnx``, so Triton's ONNX Runtime backend serves the repository unchanged and the
in-process ``onnx`` backend runs it. Exported with torch's TorchScript-based exporter
(``dynamo=False``: works offline, no onnxscript), opset :data:`OPSET`; dimension 0 of every
tensor and every ``-1`` dimension (MiniLM's sequence) are dynamic axes. Every export is run by
ONNX Runtime on a batch of its own and compared with torch (:func:`min_cosine`); below
:data:`MIN_COSINE` the build fails.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from tritonclient.grpc import model_config_pb2 as pb

from nearline.models.repository import CONFIG_FILE, MODEL_FILES, read_config, write_config

PLATFORM = "onnxruntime_onnx"
ONNX_FILE = MODEL_FILES[PLATFORM]
#: ONNX Runtime 1.2x runs opsets up to 21+; 17 is the newest the TorchScript exporter knows well
#: (LayerNormalization as one op) and what Triton 23.x+ images' ONNX Runtime accepts.
OPSET = 17
#: ONNX Runtime's output must point the same way as torch's on every row, to this much.
MIN_COSINE = 0.9999
#: The ONNX models' names: the TorchScript model's name with this suffix.
SUFFIX = "_onnx"
_LOG_ERRORS_ONLY = 3


def onnx_config(config: pb.ModelConfig) -> pb.ModelConfig:
    """The ONNX sibling of a TorchScript model's config: same tensors, ``onnxruntime_onnx``."""
    onnx = pb.ModelConfig()
    onnx.CopyFrom(config)
    onnx.name = config.name + SUFFIX
    onnx.platform = PLATFORM
    if "INFERENCE_MODE" in onnx.parameters:  # a PyTorch backend parameter
        del onnx.parameters["INFERENCE_MODE"]
    return onnx


def export(
    folder: Path,
    module: torch.nn.Module,
    sample: Sequence[torch.Tensor],
    config: pb.ModelConfig,
    version: int = 1,
) -> Path:
    """Export ``module`` (eager, eval mode) as ``folder/<version>/model.onnx`` with ``config``.

    Args:
        folder: The model's folder (``models/<name>_onnx``).
        module: Takes the config's inputs positionally, returns its output(s).
        sample: One input batch to trace the export with.
        config: The ONNX config (:func:`onnx_config`); written beside, then read back.
        version: The version folder.

    Returns:
        The ``model.onnx`` path.
    """
    path = folder / str(version) / ONNX_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = [t.name for t in config.input]
    outputs = [t.name for t in config.output]
    axes = {t.name: _dynamic_axes(t.dims) for t in (*config.input, *config.output)}
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter's notes (legacy path, Python branches traced as constants) are checked by
        # comparing with torch on other shapes instead (min_cosine).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, tuple(sample), str(path), input_names=inputs, output_names=outputs,
            dynamic_axes=axes, opset_version=OPSET, dynamo=False,
        )  # fmt: skip
    write_config(folder / CONFIG_FILE, config)
    read_config(folder / CONFIG_FILE)
    return path


def _dynamic_axes(dims: Sequence[int]) -> dict[int, str]:
    axes = {0: "batch"}
    for i, d in enumerate(dims, 1):
        if d == -1:
            axes[i] = "sequence" if i == 1 else f"dim{i}"
    return axes


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of ``path`` (errors only in its log)."""
    options = ort.SessionOptions()
    options.log_severity_level = _LOG_ERRORS_ONLY
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, batch: Sequence[np.ndarray]) -> np.ndarray:
    """The first output of ``sess`` on ``batch`` (inputs in the session's order)."""
    feed = {i.name: a for i, a in zip(sess.get_inputs(), batch, strict=True)}
    return np.asarray(sess.run(None, feed)[0])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``[rows, n]`` arrays."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray((a * b).sum(axis=1) / np.maximum(norms, 1e-12))


def min_cosine(module: torch.nn.Module, path: Path, batches: Sequence[Sequence[np.ndarray]]) -> float:
    """The lowest row cosine between torch and ONNX Runtime over ``batches``."""
    sess = session(path)
    worst = 1.0
    for batch in batches:
        with torch.inference_mode():
            expected = module(*(torch.from_numpy(a) for a in batch)).numpy()
        worst = min(worst, float(cosine(run(sess, batch), expected).min()))
    return worst
