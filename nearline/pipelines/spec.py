"""``pipelines.yaml``: the pipelines a client may call, loaded once and checked when loaded.

Light on purpose (PyYAML and jsonschema only, no torch or numpy): API replicas and the Azure
Functions app load it to validate inputs; only workers build a
:class:`~nearline.pipelines.runner.PipelineRunner` from it. The format is documented in
``docs/models.md``; in short::

    pipelines:
      digits:                        # the endpoint name a client calls
        description: ...
        input_schema: {...}          # JSON Schema (Draft 2020-12) of the job input
        examples: [{...}]            # optional sample inputs (nearline check runs them)
        deployment:                  # the steps that serve the endpoint
          name: v1
          steps:
            - {name: preprocess, function: "nearline.examples.digits:preprocess"}
            - {name: classify, model: digits, version: 1, inputs: {INPUT__0: pixels}}
            - {name: postprocess, function: "nearline.examples.digits:postprocess"}

A bad file raises :class:`~nearline.errors.ConfigError` whose message names the file, the
pipeline, the step and the field, e.g. ``pipelines.yaml: pipeline 'topics': step 2 (embed):
'model' is required``. A key given twice in a mapping is an error too (plain YAML keeps the last).
Several files (or folders of them, :mod:`nearline.pipelines.files`) load as one catalog; a
pipeline defined in two of them is an error naming both.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema.exceptions import best_match

from nearline.errors import ConfigError, InvalidInput, UnknownPipeline
from nearline.models.backend import BACKENDS
from nearline.pipelines.files import Paths, pipeline_files

#: Pipeline names are URL path segments (``/api/score/{pipeline}``): keep them plain.
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
#: A function step's target: ``package.module:attribute``.
TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_PIPELINE_FIELDS = {"description", "input_schema", "examples", "deployment"}
_FUNCTION_FIELDS = {"name", "function", "factory", "batch", "args"}
_MODEL_FIELDS = {"name", "model", "version", "backend", "inputs", "outputs"}
_MAX_MESSAGE = 300  # an InvalidInput message is cut to this length
_MAX_VALUE = 60  # a value longer than this is quoted back abridged (a 64-pixel array, say)


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


@dataclass(frozen=True)
class Deployment:
    """The steps that serve an endpoint (one model version set; traffic splits come later)."""

    name: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Pipeline:
    """An endpoint a client calls: its name, input schema and the deployment that serves it.

    ``examples`` are sample inputs, each valid against the schema (``nearline check`` runs them,
    the OpenAPI document shows them); ``source`` is the file it was loaded from.
    """

    name: str
    description: str
    input_schema: dict[str, Any]
    deployment: Deployment
    examples: tuple[Any, ...] = ()
    source: Path | None = field(default=None, compare=False)
    _validator: jsonschema.protocols.Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_validator", jsonschema.Draft202012Validator(self.input_schema))

    def validate(self, input: Any) -> None:
        """Check ``input`` against the input schema.

        Raises:
            InvalidInput: The input fails the schema; the message names the field path, e.g.
                ``input.pixels: [1, 2] is too short``.
        """
        error = best_match(self._validator.iter_errors(input))
        if error is None:
            return
        where = "input" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        message, value = error.message, repr(error.instance)
        if len(value) > _MAX_VALUE and value in message:  # quote a long value back in short
            message = message.replace(value, reprlib.repr(error.instance))
        if len(message) > _MAX_MESSAGE:
            message = message[: _MAX_MESSAGE // 2] + " ... " + message[-_MAX_MESSAGE // 2 :]
        raise InvalidInput(f"{where}: {message}")


class Catalog:
    """The pipelines of one or more files, by name.

    Args:
        pipelines: The pipelines.
        path: The (first) file they were loaded from (for messages).
        sources: Every file they were loaded from, in order.
    """

    def __init__(
        self, pipelines: list[Pipeline], path: Path | None = None, sources: Sequence[Path] = ()
    ) -> None:
        self.path = path
        self.sources = tuple(sources) or ((path,) if path is not None else ())
        self._pipelines = {p.name: p for p in pipelines}

    def names(self) -> list[str]:
        """Pipeline names in file order."""
        return list(self._pipelines)

    def get(self, name: str) -> Pipeline:
        """The pipeline called ``name``.

        Raises:
            UnknownPipeline: No pipeline of that name; the message names it (abridged) and
                lists the pipelines there are.
        """
        try:
            return self._pipelines[name]
        except KeyError:
            shown = reprlib.repr(name)  # a name comes from a URL: quote a long one back in short
            there = ", ".join(self._pipelines)
            raise UnknownPipeline(f"unknown pipeline {shown}; the pipelines are: {there}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._pipelines

    def __iter__(self) -> Iterator[Pipeline]:
        return iter(self._pipelines.values())

    def document(self) -> dict[str, Any]:
        """``GET /api/pipelines``: every pipeline's name, description and input JSON Schema."""
        return {
            "pipelines": [
                {"name": p.name, "description": p.description, "inputSchema": p.input_schema} for p in self
            ]
        }

    def __len__(self) -> int:
        return len(self._pipelines)


def load_pipelines(paths: Paths = ()) -> Catalog:
    """Load and check pipelines files: one, several, folders of them, or (none) the default
    (:func:`nearline.pipelines.files.pipeline_files`).

    Raises:
        ConfigError: A file is missing, not YAML, or a pipeline in it is malformed (the message
            names the file, the pipeline and the field); or two files define the same pipeline
            (the message names both).
    """
    files = pipeline_files(paths)
    merged: dict[str, Pipeline] = {}
    for path in files:
        for pipeline in _load_file(path):
            first = merged.setdefault(pipeline.name, pipeline)
            if first is not pipeline:
                raise ConfigError(
                    f"pipeline '{pipeline.name}' is defined twice: in {first.source} and in {path}"
                )
    return Catalog(list(merged.values()), files[0], files)


def _load_file(path: Path) -> list[Pipeline]:
    try:
        doc = yaml.load(path.read_text(), Loader=_StrictLoader)  # a SafeLoader: no objects
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read pipelines file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"pipelines"}:
        raise ConfigError(f"{path}: expected one top-level key 'pipelines' (a mapping of name to pipeline)")
    entries = doc["pipelines"]
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{path}: 'pipelines' must be a non-empty mapping of name to pipeline")
    return [_pipeline(f"{path}: pipeline '{name}'", name, spec, path) for name, spec in entries.items()]


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys (which would silently drop a pipeline)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, str):
                if key in seen:
                    mark = key_node.start_mark
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _pipeline(where: str, name: Any, spec: Any, source: Path) -> Pipeline:
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"{where}: the name must match {NAME.pattern} (it is a URL segment)")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: must be a mapping")
    _check_fields(where, spec, _PIPELINE_FIELDS, required={"input_schema", "deployment"})
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: 'description' must be a string")
    schema = spec["input_schema"]
    if not isinstance(schema, dict):
        raise ConfigError(f"{where}: 'input_schema' must be a mapping (a JSON Schema)")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"{where}: 'input_schema' is not a valid JSON Schema: {exc.message}") from None
    pipeline = Pipeline(name, description, schema, _deployment(where, spec["deployment"]), source=source)
    return replace(pipeline, examples=_examples(where, pipeline, spec.get("examples", [])))


def _examples(where: str, pipeline: Pipeline, examples: Any) -> tuple[Any, ...]:
    """The pipeline's sample inputs, each checked against its input schema."""
    if not isinstance(examples, list):
        raise ConfigError(f"{where}: 'examples' must be a list of sample inputs")
    for i, example in enumerate(examples):
        try:
            pipeline.validate(example)
        except InvalidInput as exc:
            raise ConfigError(f"{where}: examples[{i}] fails the input schema: {exc.message}") from None
    return tuple(examples)


def _deployment(pipeline: str, spec: Any) -> Deployment:
    where = f"{pipeline}: deployment"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: must be a mapping with 'name' and 'steps'")
    _check_fields(where, spec, {"name", "steps"}, required={"name", "steps"})
    if not isinstance(spec["name"], str) or not NAME.match(spec["name"]):
        raise ConfigError(f"{where}: 'name' must match {NAME.pattern}")
    steps = spec["steps"]
    if not isinstance(steps, list) or not steps:
        raise ConfigError(f"{where}: 'steps' must be a non-empty list")
    return Deployment(spec["name"], _steps(pipeline, steps))


def _steps(where: str, specs: list[Any]) -> tuple[Step, ...]:
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
    _check_fields(where, spec, _FUNCTION_FIELDS, required={"name"})
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
    _check_fields(where, spec, _MODEL_FIELDS, required={"name", "model", "version"})
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


def _check_fields(where: str, spec: Mapping[str, Any], allowed: set[str], required: set[str]) -> None:
    unknown = sorted(set(spec) - allowed, key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; expected {', '.join(sorted(allowed))}")
    for key in sorted(required):
        if key not in spec:
            raise ConfigError(f"{where}: {key!r} is required")
