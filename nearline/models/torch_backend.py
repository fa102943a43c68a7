"""The in-process torch backend: TorchScript models of the repository, run in this process.

Guarantees: tensors go to the module positionally in the config's input order (``INPUT__0``,
``INPUT__1``...) and come back in the config's output order; inputs are cast to the config's
dtypes; every output must have as many rows as the batch or the call raises
:class:`~nearline.errors.ModelError`. Runs under :func:`torch.inference_mode` on ``cuda`` when
available, else CPU. Loaded modules are cached; loading is guarded by a lock, so one backend may
serve a worker's threads (inference itself is not serialised: TorchScript modules are re-entrant).

``torch.set_num_threads`` is left at torch's default (one intra-op thread per core): a worker
process is meant to own its node's cores (one worker per GPU, or per CPU pod); set
``OMP_NUM_THREADS`` in the pod spec to share a node between processes.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping

import numpy as np
import torch

from nearline.errors import ConfigError, ModelError
from nearline.models.backend import model_inputs
from nearline.models.repository import ModelRepository, ModelSpec


class TorchBackend:
    """Runs the repository's TorchScript models in this process.

    Args:
        repository: The model repository.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default ``cuda`` when available, else ``cpu``.
    """

    def __init__(self, repository: ModelRepository, *, device: str | None = None) -> None:
        self.repository = repository
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._modules: dict[tuple[str, int], torch.jit.ScriptModule] = {}
        self._lock = threading.Lock()

    def load(self, model: str, version: int) -> None:
        """Load ``model`` at ``version`` now (cached).

        Raises:
            ConfigError: The model, its config or its TorchScript file is missing or unloadable.
        """
        self._module(model, version)

    def infer(self, model: str, version: int, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; see :meth:`nearline.models.backend.ModelBackend.infer`.

        Raises:
            ModelError: A missing input, inputs of different batch sizes, the module raising, or
                outputs of the wrong number or row count.
        """
        try:
            module = self._module(model, version)
        except ConfigError as exc:
            raise ModelError(exc.message) from None
        spec = self.repository.model(model)
        args = self._tensors(spec, inputs)
        rows = args[0].shape[0]
        try:
            with torch.inference_mode():
                result = module(*args)
        except Exception as exc:  # TorchScript raises RuntimeError subclasses and more
            raise ModelError(f"model '{model}' version {version} failed: {exc}") from None
        return _outputs(spec, result, rows)

    def close(self) -> None:
        """Drop the cached modules (frees their memory once no batch holds them)."""
        with self._lock:
            self._modules.clear()

    def _module(self, model: str, version: int) -> torch.jit.ScriptModule:
        key = (model, version)
        module = self._modules.get(key)
        if module is not None:
            return module
        with self._lock:
            if key not in self._modules:
                path = self.repository.model_file(model, version)
                try:
                    with warnings.catch_warnings():
                        # TorchScript is what Triton's PyTorch backend loads; torch's deprecation
                        # notice for it is not actionable here.
                        warnings.filterwarnings(
                            "ignore", "`torch.jit.load` is deprecated", DeprecationWarning
                        )
                        loaded = torch.jit.load(str(path), map_location=self.device)
                except Exception as exc:  # a truncated or foreign file raises RuntimeError/ValueError
                    raise ConfigError(f"{path}: cannot load TorchScript: {exc}") from None
                self._modules[key] = loaded.eval()
            return self._modules[key]

    def _tensors(self, spec: ModelSpec, inputs: Mapping[str, np.ndarray]) -> list[torch.Tensor]:
        args = []
        for array in model_inputs(spec, inputs).values():
            if not array.flags.writeable:  # torch.from_numpy warns on read-only memory
                array = array.copy()
            args.append(torch.from_numpy(array).to(self.device))
        return args


def _outputs(spec: ModelSpec, result: object, rows: int) -> dict[str, np.ndarray]:
    values = list(result) if isinstance(result, tuple | list) else [result]
    tensors = [t for t in values if isinstance(t, torch.Tensor)]
    if len(values) != len(spec.outputs) or len(tensors) != len(values):
        raise ModelError(
            f"model '{spec.name}' returned {len(tensors)} values; its config has {len(spec.outputs)} outputs"
        )
    out = {}
    for t, tensor in zip(spec.outputs, tensors, strict=True):
        if tensor.dim() == 0 or tensor.shape[0] != rows:
            got = tensor.shape[0] if tensor.dim() else 0
            raise ModelError(f"model '{spec.name}' output {t.name} has {got} rows for a batch of {rows}")
        out[t.name] = tensor.detach().to("cpu").numpy()
    return out
