"""What ``nearline models import`` prints: the model's tensors and a pipeline that serves it.

The pipeline takes one JSON key per model input (a nested array of the input's dims; ``-1``
dims unbounded), has one example (zeros) for ``nearline check``, calls the model and returns
every output as JSON (:func:`nearline.pipelines.steps.outputs`): served as it is, with no code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from tritonclient.grpc import model_config_pb2 as pb

from nearline.models.repository import ModelSpec, TensorSpec

_KEY = re.compile(r"[^A-Za-z0-9_]")
_JSON_TYPES = {"bool": "boolean", "int32": "integer", "int64": "integer"}


def describe(spec: ModelSpec, version: int, source: Path) -> str:
    """The tensors of ``spec`` and a pipeline for it, as printed after an import."""
    rows = []
    for kind, tensors in (("input", spec.inputs), ("output", spec.outputs)):
        for t in tensors:
            dtype = pb.DataType.Name(_config_tensor(spec, t).data_type).removeprefix("TYPE_")
            rows.append(f"  {kind:<7} {t.name:<24} {dtype:<6} {[-1, *t.dims]}")
    pipeline = yaml.safe_dump(
        {"pipelines": {_pipeline_name(spec.name): pipeline_for(spec, version, source)}},
        sort_keys=False,
        default_flow_style=None,
        width=100,
    )
    return (
        f"imported {source} as model '{spec.name}' version {version} ({spec.platform}) into "
        f"{spec.path.parent}\n"
        + "\n".join(rows)
        + f"\n  (dimension 0 is the batch; max_batch_size {spec.max_batch_size})\n\n"
        "A pipelines file that serves it as it is: add its entry to your pipelines.yaml, or save it\n"
        "as a file of its own and pass both (nearline serve --pipelines pipelines.yaml FILE);\n"
        "then run `nearline check`.\n\n" + pipeline
    )


def pipeline_for(spec: ModelSpec, version: int, source: Path) -> dict[str, Any]:
    """A pipeline definition serving model ``spec`` as it is."""
    ins = {t.name: _key(spec, t, "input") for t in spec.inputs}
    outs = {t.name: _key(spec, t, "output") for t in spec.outputs}
    by_key = {ins[t.name]: t for t in spec.inputs}
    return {
        "description": f"{spec.name} v{version}, imported from {source.name}",
        "input_schema": {
            "type": "object",
            "properties": {key: _schema(t) for key, t in by_key.items()},
            "required": list(by_key),
            "additionalProperties": False,
        },
        "examples": [{key: _zeros(t) for key, t in by_key.items()}],
        "deployment": {
            "name": "v1",
            "steps": [
                {"name": "predict", "model": spec.name, "version": version, "inputs": ins, "outputs": outs},
                {
                    "name": "output",
                    "function": "nearline.pipelines.steps:outputs",
                    "args": {"keys": list(outs.values())},
                },
            ],
        },
    }


def _key(spec: ModelSpec, tensor: TensorSpec, kind: str) -> str:
    """The item key of a tensor: TorchScript's positional names read as ``input``/``input_1``."""
    if spec.platform == "pytorch_libtorch":
        index = int(tensor.name.rsplit("__", 1)[1])
        many = len(spec.inputs if kind == "input" else spec.outputs) > 1
        return f"{kind}_{index}" if many else kind
    key = _KEY.sub("_", tensor.name)
    return key if key[:1].isalpha() or key[:1] == "_" else f"{kind}_{key}"


def _schema(tensor: TensorSpec) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": _JSON_TYPES.get(tensor.dtype, "number")}
    for d in reversed(tensor.dims):
        schema = {"type": "array", "items": schema}
        if d > 0:
            schema.update(minItems=d, maxItems=d)
    return schema


def _zeros(tensor: TensorSpec) -> Any:
    value: Any = False if tensor.dtype == "bool" else 0
    for d in reversed(tensor.dims):
        value = [value] * (d if d > 0 else 1)
    return value


def _config_tensor(spec: ModelSpec, tensor: TensorSpec) -> Any:
    for t in [*spec.config.input, *spec.config.output]:
        if t.name == tensor.name:
            return t
    raise KeyError(tensor.name)


def _pipeline_name(model: str) -> str:
    name = re.sub(r"[^a-z0-9_-]", "-", model.lower()).strip("-_") or "model"
    return name if name[0].isalnum() else f"m{name}"

