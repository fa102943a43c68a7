"""The model seam: one narrow interface, one module per backend, chosen by name.

Every backend takes and returns named numpy arrays with the batch in dimension 0, the names and
dtypes of the model's config.pbtxt, and guarantees that every output has as many rows as the
inputs (raising :class:`~nearline.errors.ModelError` otherwise, never returning misaligned rows).

Backends:

* ``torch``  — :mod:`nearline.models.torch_backend`: TorchScript in this process (CUDA when
  available, else CPU).
* ``triton`` — :mod:`nearline.models.triton_backend`: a Triton server serving the same
  repository; needs ``triton_url`` (``--triton-url`` / ``NEARLINE_TRITON_URL``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from nearline.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from nearline.models.repository import ModelRepository

#: Backend names a pipeline step or ``--model-backend`` may use.
BACKENDS = ("torch", "triton")


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
    kind: str, repository: ModelRepository, triton_url: str | None = None, *, device: str | None = None
) -> ModelBackend:
    """Open the model backend named ``kind``.

    Args:
        kind: ``"torch"`` or ``"triton"``.
        repository: The model repository the backend serves (configs are read from it).
        triton_url: The Triton server's URL; required for ``triton``.
        device: torch only: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available.

    Raises:
        ConfigError: Unknown kind, a missing ``triton_url``, or a backend not installed.
    """
    if kind == "torch":
        from nearline.models.torch_backend import TorchBackend

        return TorchBackend(repository, device=device)
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
