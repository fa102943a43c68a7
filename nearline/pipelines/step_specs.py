"""Steps as ``pipelines.yaml`` writes them: function steps and model steps, checked when loaded.

Split from :mod:`nearline.pipelines.spec` (which re-exports the step types); a bad step raises
:class:`~nearline.errors.ConfigError` naming the file, the pipeline, the step and the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nearline.errors import ConfigError
from nearline.models.backend import BACKENDS

#: Pipeline names are URL path segments (``/api/score/{pipeline}``): keep them plain.
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
#: A function step's target: ``package.module:attribute``.
TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_FUNCTION_FIELDS = {"name", "function", "factory", "batch", "args"}
_MODEL_FIELDS = {"name", "model", "version", "backend", "inputs", "outputs"}


@dataclass(frozen=True)
class FunctionStep:
    """A Python pre- or post-processing step.

    Attributes:
        name: Step name (timings and messages use it).
        function: ``package.module:attribute`` of the callable, imported when a runner is built.
        batch: False: called once per item, ``f(item) -> item``; True: called once per batch,
            ``f(items) -> items`` (same length, same order).
        factory: True when ``function`` names a factory, called once when the runner is built as
            ``function(repository, **args)`` and returning the step callable.
        args: Keyword arguments bound to the callable (or passed to the factory).
    """

    name: str
    function: str
    batch: bool = False
    factory: bool = False
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelStep:
    """A model call on the stacked batch.

    Attributes:
        name: Step name.
        model: Model name in the repository.
        version: Model version.
        backend: ``torch``, ``onnx`` or ``triton``; None: the one the model's config names
            (``platform``). A runner's ``backend`` overrides it.
        inputs: Config input name → item key it is read from (default: the same name).
        outputs: Config output name → item key it is written to (default: the same name).
    """

    name: str
    model: str
    version: int
    backend: str | None = None
    inputs: Mapping[str, str] = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)


Step = FunctionStep | ModelStep


def parse_steps(where: str, specs: list[Any]) -> tuple[Step, ...]:
    steps: list[Step] = []
    for i, spec in enumerate(specs, 1):
        here = f"{where}: step {i}"
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            here += f" ({spec['name']})"
        step = _step(here, spec)
        if any(s.name == step.name for s in steps):
            raise ConfigError(f"{here}: the name {step.name!r} is used by an earlier step")
        steps.append(step)
    return tuple(steps)


def _step(where: str, spec: Any) -> Step:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: must be a mapping")
    if "function" in spec or "factory" in spec:
        return _function_step(where, spec)
    if set(spec) & (_MODEL_FIELDS - {"name"}):
        return _model_step(where, spec)
    raise ConfigError(f"{where}: one of 'function', 'factory' or 'model' is required")


def _function_step(where: str, spec: dict[str, Any]) -> FunctionStep:
    check_fields(where, spec, _FUNCTION_FIELDS, required={"name"})
    if "function" in spec and "factory" in spec:
        raise ConfigError(f"{where}: give 'function' or 'factory', not both")
    key = "factory" if "factory" in spec else "function"
    target = spec[key]
    if not isinstance(target, str) or not TARGET.match(target):
        raise ConfigError(f"{where}: {key!r} must look like 'package.module:attribute'")
    batch, args = spec.get("batch", False), spec.get("args", {})
    if not isinstance(batch, bool):
        raise ConfigError(f"{where}: 'batch' must be true or false")
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise ConfigError(f"{where}: 'args' must be a mapping of keyword to value")
    return FunctionStep(_name(where, spec), target, batch, key == "factory", args)


def _model_step(where: str, spec: dict[str, Any]) -> ModelStep:
    check_fields(where, spec, _MODEL_FIELDS, required={"name", "model", "version"})
    model, version, backend = spec["model"], spec["version"], spec.get("backend")
    if not isinstance(model, str) or not model:
        raise ConfigError(f"{where}: 'model' must be a model name")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"{where}: 'version' must be a positive integer")
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"{where}: 'backend' must be one of {', '.join(BACKENDS)}")
    names = [_names(where, key, spec.get(key, {})) for key in ("inputs", "outputs")]
    return ModelStep(_name(where, spec), model, version, backend, *names)


def _name(where: str, spec: dict[str, Any]) -> str:
    name = spec["name"]
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"{where}: 'name' must match {NAME.pattern}")
    return name


def _names(where: str, key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f"{where}: {key!r} must map tensor names to item keys (strings)")
    return value


def check_fields(where: str, spec: Mapping[str, Any], allowed: set[str], required: set[str]) -> None:
    unknown = sorted(set(spec) - allowed, key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; expected {', '.join(sorted(allowed))}")
    for key in sorted(required):
        if key not in spec:
            raise ConfigError(f"{where}: {key!r} is required")
