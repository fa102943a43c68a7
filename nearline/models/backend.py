"""The model seam: one narrow interface, one module per backend, chosen by name.

Every backend takes and returns named numpy arrays with the batch in dimension 0, the names and
dtypes of the model's config.pbtxt, and guarantees that every output has as many rows as the
inputs (raising :class:`~nearline.errors.ModelError` otherwise, never returning misaligned rows).

Backends:

* ``torch``  — :mod:`nearline.models.torch_backend`: TorchScript in this process (CUDA when
  available, else CPU).
* ``onnx``   — :mod:`nearline.models.onnx_backend`: ONNX models in this process with ONNX
  Runtime (its session options: :class:`OnnxOptions`, from the worker's settings).
* ``triton`` — :mod:`nearline.models.triton_backend`: a Triton server serving the same
  repository; needs ``triton_url`` (``--triton-url`` / ``NEARLINE_TRITON_URL``).

A model step that names no backend gets the one its config's platform names
(:data:`PLATFORM_BACKENDS`): ``pytorch_libtorch`` → ``torch``, ``onnxruntime_onnx`` → ``onnx``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from nearline.errors import ConfigError, ModelError

if TYPE_CHECKING:
    import numpy as np

    from nearline.models.repository import ModelRepository, ModelSpec

#: Backend names a pipeline step or ``--model-backend`` may use.
BACKENDS = ("torch", "onnx", "triton")
#: The in-process backend of each model platform (config.pbtxt ``platform``), for a model step
#: that names none.
PLATFORM_BACKENDS = {"pytorch_libtorch": "torch", "onnxruntime_onnx": "onnx"}


@dataclass(frozen=True)
class OnnxOptions:
    """ONNX Runtime session options (``NEARLINE_ONNX_*``; see :mod:`nearline.settings`).

    Attributes:
        intra_op_threads: Threads one operator may use; 0: ONNX Runtime's default (one per
            physical core). ``nearline serve`` gives each worker its share of the cores.
        providers: Execution providers in order of preference; empty: CUDA where ONNX Runtime
            has it, else CPU.
        optimization: Graph optimisation level: ``disable``, ``basic``, ``extended`` or ``all``
            (ONNX Runtime's default).
    """

    intra_op_threads: int = 0
    providers: tuple[str, ...] = ()
    optimization: str = "all"


class ModelBackend(Protocol):
    """Runs models of one repository on batches."""

    def load(self, model: str, version: int) -> None:
        """Make ``model`` at ``version`` ready now (worker start-up), so the first batch is not slow.

        Raises:
            ConfigError: The model is missing or cannot be loaded.
        """

    def infer(self, model: str, version: int, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch.

        Args:
            model: Model name in the repository.
            version: Model version.
            inputs: Every config input by name, batch in dimension 0.

        Returns:
            Every config output by name, each with as many rows as the inputs.

        Raises:
            ModelError: The model failed or returned the wrong number of rows.
        """
        ...

    def close(self) -> None:
        """Release the backend's resources (models, connections)."""


def open_backend(
    kind: str,
    repository: ModelRepository,
    triton_url: str | None = None,
    *,
    device: str | None = None,
    onnx: OnnxOptions | None = None,
) -> ModelBackend:
    """Open the model backend named ``kind``.

    Args:
        kind: ``"torch"``, ``"onnx"`` or ``"triton"``.
        repository: The model repository the backend serves (configs are read from it).
        triton_url: The Triton server's URL; required for ``triton``.
        device: torch only: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available.
        onnx: onnx only: the session options (default :class:`OnnxOptions`).

    Raises:
        ConfigError: Unknown kind, a missing ``triton_url``, or a backend not installed.
    """
    if kind == "torch":
        from nearline.models.torch_backend import TorchBackend

        return TorchBackend(repository, device=device)
    if kind == "onnx":
        try:
            from nearline.models.onnx_backend import OnnxBackend
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"model backend 'onnx' is not available: {exc} (install requirements-worker.txt)"
            ) from None
        return OnnxBackend(repository, onnx or OnnxOptions())
    if kind == "triton":
        if not triton_url:
            raise ConfigError(
                "model backend 'triton' needs a Triton URL (--triton-url or NEARLINE_TRITON_URL)"
            )
        try:
            module = importlib.import_module("nearline.models.triton_backend")
        except ModuleNotFoundError as exc:
            raise ConfigError(f"model backend 'triton' is not available: {exc}") from None
        backend: ModelBackend = module.TritonBackend(repository, triton_url)
        return backend
    raise ConfigError(f"unknown model backend {kind!r}; expected one of {', '.join(BACKENDS)}")


def model_inputs(spec: ModelSpec, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The config's inputs, in config order and dtype, contiguous; every backend feeds these.

    Raises:
        ModelError: An input the config names is missing, or the inputs do not share one
            (non-zero) batch size.
    """
    import numpy as np  # here: the spec and the API import this module without numpy

    arrays = {}
    for t in spec.inputs:
        if t.name not in inputs:
            raise ModelError(f"model '{spec.name}': input {t.name} is missing")
        arrays[t.name] = np.ascontiguousarray(inputs[t.name], dtype=t.dtype)
    rows = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
    if len(rows) != 1 or -1 in rows:
        raise ModelError(f"model '{spec.name}': inputs have different batch sizes {sorted(rows)}")
    if 0 in rows:
        raise ModelError(f"model '{spec.name}': an empty batch (0 rows)")
    return arrays
