"""The in-process ONNX backend: the repository's ONNX models, run in this process by ONNX Runtime.

Models are ``platform: "onnxruntime_onnx"`` in config.pbtxt, with ``<version>/model.onnx``
(what Triton's ONNX Runtime backend loads from the same folder). Tensors are passed and
returned by name, cast to the config's dtypes; every output must have as many rows as the
batch or the call raises :class:`~nearline.errors.ModelError`. One ``InferenceSession`` per
model version, created once under a lock (``run`` itself is thread-safe in ONNX Runtime).

Session options come from the worker's settings (:class:`~nearline.models.backend.OnnxOptions`:
``NEARLINE_ONNX_THREADS``, ``NEARLINE_ONNX_PROVIDERS``, ``NEARLINE_ONNX_OPTIMIZATION``); without
providers named, CUDA is used where the installed ONNX Runtime has it, else the CPU.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from nearline.errors import ConfigError, ModelError
from nearline.models.backend import OnnxOptions, model_inputs
from nearline.models.repository import ModelRepository

#: Tried in this order when no providers are configured (those this build of ONNX Runtime has).
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
#: ONNX Runtime logs warnings (unused initialisers, ...) on every load: errors only.
_LOG_ERRORS_ONLY = 3
#: ``NEARLINE_ONNX_OPTIMIZATION``'s words: ONNX Runtime's graph optimisation levels.
OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class OnnxBackend:
    """Runs the repository's ONNX models in this process.

    Args:
        repository: The model repository.
        options: Session options.

    Raises:
        ConfigError: A provider named in ``options`` is not in this ONNX Runtime build, or its
            optimisation level is not one of :data:`OPTIMIZATION_LEVELS`.
    """

    def __init__(self, repository: ModelRepository, options: OnnxOptions | None = None) -> None:
        self.repository = repository
        self.options = options or OnnxOptions()
        self.providers = providers(self.options.providers)
        self.optimization = optimization_level(self.options.optimization)
        self._sessions: dict[tuple[str, int], ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def load(self, model: str, version: int) -> None:
        """Create the session of ``model`` at ``version`` now (cached).

        Raises:
            ConfigError: The model, its config or its ONNX file is missing or does not load.
        """
        self._session(model, version)

    def infer(self, model: str, version: int, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; see :meth:`nearline.models.backend.ModelBackend.infer`.

        Raises:
            ModelError: A missing input, inputs of different batch sizes, the session failing, or
                outputs of the wrong row count.
        """
        try:
            session = self._session(model, version)
        except ConfigError as exc:
            raise ModelError(exc.message) from None
        spec = self.repository.model(model)
        feed = model_inputs(spec, inputs)
        rows = next(iter(feed.values())).shape[0]
        names = [t.name for t in spec.outputs]
        try:
            result = session.run(names, feed)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument/RuntimeException
            raise ModelError(f"model '{model}' version {version} failed: {exc}") from None
        out = {}
        for name, array in zip(names, result, strict=True):
            array = np.asarray(array)
            if array.ndim == 0 or array.shape[0] != rows:
                got = array.shape[0] if array.ndim else 0
                raise ModelError(f"model '{model}' output {name} has {got} rows for a batch of {rows}")
            out[name] = array
        return out

    def close(self) -> None:
        """Drop the sessions (frees their memory once no batch holds them)."""
        with self._lock:
            self._sessions.clear()

    def _session(self, model: str, version: int) -> ort.InferenceSession:
        key = (model, version)
        session = self._sessions.get(key)
        if session is not None:
            return session
        with self._lock:
            if key not in self._sessions:
                path = self.repository.model_file(model, version)
                try:
                    self._sessions[key] = ort.InferenceSession(
                        str(path), self._session_options(), providers=list(self.providers)
                    )
                except Exception as exc:  # a truncated or foreign file: onnxruntime's own errors
                    raise ConfigError(f"{path}: cannot load the ONNX model: {exc}") from None
            return self._sessions[key]

    def _session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.log_severity_level = _LOG_ERRORS_ONLY
        options.graph_optimization_level = self.optimization
        if self.options.intra_op_threads > 0:
            options.intra_op_num_threads = self.options.intra_op_threads
        return options


def optimization_level(name: str) -> ort.GraphOptimizationLevel:
    """ONNX Runtime's graph optimisation level for a ``NEARLINE_ONNX_OPTIMIZATION`` word.

    Raises:
        ConfigError: ``name`` is not one of :data:`OPTIMIZATION_LEVELS` (the message lists them).
    """
    if name not in OPTIMIZATION_LEVELS:
        raise ConfigError(
            f"NEARLINE_ONNX_OPTIMIZATION must be one of {', '.join(OPTIMIZATION_LEVELS)}, not {name!r}"
        )
    return OPTIMIZATION_LEVELS[name]


def providers(named: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The execution providers to use: ``named`` (each must be available), else the defaults.

    Raises:
        ConfigError: A named provider is not in this ONNX Runtime build; the message lists those
            that are.
    """
    available = ort.get_available_providers()
    if not named:
        # Never every provider there is: some builds list AzureExecutionProvider, a remote one.
        return tuple(p for p in DEFAULT_PROVIDERS if p in available) or ("CPUExecutionProvider",)
    missing = [p for p in named if p not in available]
    if missing:
        raise ConfigError(
            f"ONNX Runtime has no {', '.join(missing)} here; it has: {', '.join(available)} "
            "(NEARLINE_ONNX_PROVIDERS)"
        )
    return named
