"""What ``nearline models import`` reads of a TorchScript file (imports torch; ONNX imports do not).

A TorchScript file records its inputs' names but not their dtypes or shapes: those are given
(``--input fp32:64``). The outputs are found by running the module on zeros twice, with two
batch sizes and two lengths for each variable (``-1``) input dimension: a dimension that
changes with the lengths is variable, and dimension 0 must follow the batch size.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from tritonclient.grpc import model_config_pb2 as pb

from nearline.errors import ConfigError
from nearline.models.importer import Tensor

#: Triton's types as torch's, both ways.
TORCH_TYPES = {
    pb.TYPE_FP32: torch.float32,
    pb.TYPE_FP16: torch.float16,
    pb.TYPE_FP64: torch.float64,
    pb.TYPE_INT32: torch.int32,
    pb.TYPE_INT64: torch.int64,
    pb.TYPE_BOOL: torch.bool,
}
_TRITON_TYPES = {v: k for k, v in TORCH_TYPES.items()}
#: (batch size, length of each variable dimension) of the two probing runs.
_PROBES = ((2, 3), (3, 5))


def read_torchscript(file: Path, given: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """The inputs (as ``given``, named ``INPUT__i``) and the probed outputs of a TorchScript file.

    Raises:
        ConfigError: It does not load, the inputs given do not match ``forward``'s, the module
            fails on zeros, or an output does not follow the batch size.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
            module = torch.jit.load(str(file), map_location="cpu").eval()
    except Exception as exc:  # a foreign file raises RuntimeError/ValueError
        raise ConfigError(f"{file}: cannot load TorchScript: {exc}") from None
    params = [a.name for a in module.forward.schema.arguments[1:]]  # without self
    usage = "give each with --input DTYPE:DIMS, e.g. --input fp32:64 (no batch dimension; -1: variable)"
    if not given:
        raise ConfigError(
            f"{file}: a TorchScript file records no input dtypes or shapes: {usage}; forward takes "
            f"{', '.join(params)}"
        )
    if len(given) != len(params):
        raise ConfigError(
            f"{file}: forward takes {len(params)} inputs ({', '.join(params)}); --input given "
            f"{len(given)} times"
        )
    inputs = [Tensor(f"INPUT__{i}", t.data_type, t.dims) for i, t in enumerate(given)]
    runs = [_probe(file, module, inputs, batch, length) for batch, length in _PROBES]
    outputs = []
    for i, (first, second) in enumerate(zip(*runs, strict=True)):
        dims = tuple(a if a == b else -1 for a, b in zip(first.shape[1:], second.shape[1:], strict=True))
        outputs.append(Tensor(f"OUTPUT__{i}", _TRITON_TYPES[first.dtype], dims))
    return inputs, outputs


def _probe(
    file: Path, module: torch.jit.ScriptModule, inputs: list[Tensor], batch: int, length: int
) -> list[torch.Tensor]:
    args = [
        torch.zeros((batch, *(length if d == -1 else d for d in t.dims)), dtype=TORCH_TYPES[t.data_type])
        for t in inputs
    ]
    try:
        with torch.inference_mode():
            result = module(*args)
    except Exception as exc:  # TorchScript raises RuntimeError subclasses and more
        shapes = ", ".join(str(list(a.shape)) for a in args)
        last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]  # not TorchScript's traceback
        raise ConfigError(f"{file}: the module fails on zeros of shape {shapes}: {last}") from None
    values = list(result) if isinstance(result, tuple | list) else [result]
    for i, value in enumerate(values):
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch:
            got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ConfigError(
                f"{file}: output {i} is {got} for a batch of {batch}: each output must be a tensor "
                "whose dimension 0 is the batch"
            )
        if value.dtype not in _TRITON_TYPES:
            raise ConfigError(
                f"{file}: output {i} has dtype {value.dtype}, which Triton configs here cannot name"
            )
    return values
