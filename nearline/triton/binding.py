"""How one model of the repository becomes pytriton bindings (``nearline triton serve``).

Every version the model's ``version_policy`` serves (``ModelRepository.served_versions``) is
loaded in this process by the in-process backend of its platform (torch for TorchScript, ONNX
Runtime for ONNX) and bound with the names, dtypes, dims, ``max_batch_size``, instance count and
dynamic batcher of its ``config.pbtxt``; each callable runs that backend's ``infer`` on the
batch Triton's dynamic batcher formed. Several versions go under one name through
:mod:`nearline.triton.versions`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton

from nearline.errors import ConfigError
from nearline.models.backend import ModelBackend
from nearline.models.repository import ModelRepository, ModelSpec
from nearline.triton.versions import bind_versions


def bind_model(
    triton: Triton, repository: ModelRepository, backends: Mapping[str, ModelBackend], name: str
) -> tuple[int, ...]:
    """Bind every version of model ``name`` that its config serves; returns those versions.

    Args:
        triton: The pytriton server, not started yet.
        repository: The model repository.
        backends: Platform (``pytorch_libtorch``, ``onnxruntime_onnx``) → the in-process backend
            that runs its models.
        name: The model.

    Raises:
        ConfigError: No backend for the model's platform, no version to serve, or a model file
            that does not load (named).
    """
    spec = repository.model(name)
    backend = backends.get(spec.platform)
    if backend is None:  # pytriton binds Python callables: ours run TorchScript and ONNX
        raise ConfigError(
            f"model '{name}' is {spec.platform}: nearline triton serve serves "
            f"{' and '.join(sorted(backends))} models (a Triton server of NVIDIA's image serves "
            "the others from the same repository)"
        )
    versions = tuple(repository.served_versions(name))
    if not versions:
        raise ConfigError(
            f"model '{name}': no version folder in {spec.path.parent} that its version_policy "
            "serves holds a model file"
        )
    for version in versions:
        backend.load(name, version)  # a broken model file fails here, naming the file, not in Triton
    config = spec.config
    batcher = DynamicBatcher(
        max_queue_delay_microseconds=config.dynamic_batching.max_queue_delay_microseconds,
        preferred_batch_size=list(config.dynamic_batching.preferred_batch_size) or None,
    )
    count = sum(g.count or 1 for g in config.instance_group) or 1
    bind_versions(
        triton,
        name,
        [[infer_func(backend, spec, version) for _ in range(count)] for version in versions],
        versions,
        inputs=[Tensor(name=t.name, dtype=np.dtype(t.dtype), shape=t.dims) for t in spec.inputs],
        outputs=[Tensor(name=t.name, dtype=np.dtype(t.dtype), shape=t.dims) for t in spec.outputs],
        config=ModelConfig(
            max_batch_size=spec.max_batch_size,
            batching=True,
            batcher=batcher if config.HasField("dynamic_batching") else DynamicBatcher(),
        ),
        strict=True,
    )
    return versions


def infer_func(backend: ModelBackend, spec: ModelSpec, version: int) -> Callable[..., Any]:
    """The callable Triton runs for ``spec`` at ``version``: our backend on the batched inputs."""

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return backend.infer(spec.name, version, inputs)

    return infer
