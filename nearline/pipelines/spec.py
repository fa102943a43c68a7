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
        length: text                 # optional: the input field busy workers batch by length
        deployment:                  # the steps that serve the endpoint
          name: v1
          steps:
            - {name: preprocess, function: "nearline.examples.digits:preprocess"}
            - {name: classify, model: digits, version: 1, inputs: {INPUT__0: pixels}}
            - {name: postprocess, function: "nearline.examples.digits:postprocess"}

or, for several deployments of one endpoint (docs/deployments.md)::

        deployments:
          v1: {steps: [...]}
          v2: {steps: [...]}
        traffic: {v1: 90, v2: 10}    # integer weights summing to 100 (or all 0)
        mirror: {v3: 10}             # optional: shadow copies to deployments at 0 (at most 50 in all)

A bad file raises :class:`~nearline.errors.ConfigError` whose message names the file, the
pipeline, the step and the field, e.g. ``pipelines.yaml: pipeline 'topics': step 2 (embed):
'model' is required``. A key given twice in a mapping is an error too (plain YAML keeps the last).
Several files (or folders of them, :mod:`nearline.pipelines.files`) load as one catalog; a
pipeline defined in two of them is an error naming both.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema.exceptions import best_match

from nearline.errors import ConfigError, InvalidInput, UnknownDeployment, UnknownPipeline
from nearline.pipelines.files import Paths, pipeline_files
from nearline.pipelines.step_specs import NAME, FunctionStep, ModelStep, Step, check_fields, parse_steps
from nearline.pipelines.traffic import Split, check_mirror, check_traffic

_PIPELINE_FIELDS = {
    "description",
    "input_schema",
    "examples",
    "length",
    "deployment",
    "deployments",
    "traffic",
    "mirror",
}
_MAX_MESSAGE = 300  # an InvalidInput message is cut to this length
_MAX_VALUE = 60  # a value longer than this is quoted back abridged (a 64-pixel array, say)


@dataclass(frozen=True)
class Deployment:
    """One way of serving an endpoint: its own steps, models and versions."""

    name: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Pipeline:
    """An endpoint a client calls: its name, input schema and the deployments that serve it.

    ``traffic`` is each deployment's share of untargeted requests in percent (summing to 100, or
    all 0); ``examples`` are sample inputs, each valid against the schema (``nearline check`` runs
    them, the OpenAPI document shows them); ``source`` is the file it was loaded from. ``length``
    names the input field whose length a busy worker batches by (None: the request's size).
    """

    name: str
    description: str
    input_schema: dict[str, Any]
    deployments: tuple[Deployment, ...]
    traffic: Mapping[str, int] = field(default_factory=dict)
    examples: tuple[Any, ...] = ()
    source: Path | None = field(default=None, compare=False)
    length: str | None = None
    mirror: Mapping[str, int] = field(default_factory=dict)
    _validator: jsonschema.protocols.Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_validator", jsonschema.Draft202012Validator(self.input_schema))

    @property
    def deployment(self) -> Deployment:
        """The deployment with the most traffic (the first listed on a tie)."""
        return max(self.deployments, key=lambda d: self.traffic.get(d.name, 0))

    def deployment_named(self, name: str) -> Deployment:
        """The deployment called ``name``.

        Raises:
            UnknownDeployment: (400) none of that name; the message lists the deployments.
        """
        for deployment in self.deployments:
            if deployment.name == name:
                return deployment
        there = ", ".join(d.name for d in self.deployments)
        raise UnknownDeployment(
            f"endpoint '{self.name}' has no deployment {reprlib.repr(name)}; the deployments are: {there}"
        )

    @property
    def split(self) -> Split:
        """The split this file starts the endpoint with (``traffic`` and ``mirror``)."""
        return Split(dict(self.traffic), dict(self.mirror))

    def endpoint_document(self, split: Split | None = None) -> dict[str, Any]:
        """``GET /api/endpoints/{name}``: the deployments, their models and the traffic split
        (``split``, the live one, else this file's)."""
        live = split or self.split
        return {
            "name": self.name,
            "deployments": [
                {
                    "name": d.name,
                    "traffic": live.traffic.get(d.name, 0),
                    "mirror": live.mirror.get(d.name, 0),
                    "models": [
                        {"model": s.model, "version": s.version} for s in d.steps if isinstance(s, ModelStep)
                    ],
                }
                for d in self.deployments
            ],
            "traffic": dict(live.traffic),
            "mirror": dict(live.mirror),
        }

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
    check_fields(where, spec, _PIPELINE_FIELDS, required={"input_schema"})
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
    deployments, traffic = _deployments(where, spec)
    mirror = check_mirror(where, spec.get("mirror", {}), traffic)
    length = spec.get("length")
    if length is not None and (not isinstance(length, str) or not length):
        raise ConfigError(f"{where}: 'length' must name an input field, e.g. length: text")
    pipeline = Pipeline(
        name, description, schema, deployments, traffic, source=source, length=length, mirror=mirror
    )
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


def _deployments(where: str, spec: dict[str, Any]) -> tuple[tuple[Deployment, ...], dict[str, int]]:
    """A pipeline's deployments and traffic: one ``deployment`` (all traffic), or ``deployments``
    by name with a ``traffic`` split (optional when there is only one)."""
    if ("deployment" in spec) == ("deployments" in spec):
        raise ConfigError(f"{where}: give 'deployment' (one) or 'deployments' (several by name), not both")
    if "deployment" in spec:
        if "traffic" in spec:
            raise ConfigError(f"{where}: 'traffic' needs 'deployments' (one 'deployment' takes all traffic)")
        one = _deployment(where, spec["deployment"])
        return (one,), {one.name: 100}
    named = spec["deployments"]
    if not isinstance(named, dict) or not named:
        raise ConfigError(f"{where}: 'deployments' must be a non-empty mapping of name to {{steps: [...]}}")
    deployments = tuple(_named_deployment(where, name, value) for name, value in named.items())
    if "traffic" not in spec and len(deployments) > 1:
        raise ConfigError(f"{where}: 'traffic' is required with several deployments, e.g. {{v1: 100, v2: 0}}")
    traffic = spec.get("traffic", {deployments[0].name: 100})
    return deployments, check_traffic(where, traffic, [d.name for d in deployments])


def _named_deployment(pipeline: str, name: Any, spec: Any) -> Deployment:
    where = f"{pipeline}: deployments: {name}"
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"{pipeline}: deployments: the name {name!r} must match {NAME.pattern}")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: must be a mapping with 'steps'")
    check_fields(where, spec, {"steps"}, required={"steps"})
    return _deployment(pipeline, {"name": name, **spec}, where)


def _deployment(pipeline: str, spec: Any, where: str | None = None) -> Deployment:
    """A deployment's name and steps; a step's messages start with ``where`` when it is one of
    several (``pipeline 'topics': deployments: v2: step 2 (embed)``), else with ``pipeline``."""
    steps_where = where or pipeline
    where = where or f"{pipeline}: deployment"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: must be a mapping with 'name' and 'steps'")
    check_fields(where, spec, {"name", "steps"}, required={"name", "steps"})
    if not isinstance(spec["name"], str) or not NAME.match(spec["name"]):
        raise ConfigError(f"{where}: 'name' must match {NAME.pattern}")
    steps = spec["steps"]
    if not isinstance(steps, list) or not steps:
        raise ConfigError(f"{where}: 'steps' must be a non-empty list")
    return Deployment(spec["name"], parse_steps(steps_where, steps))


__all__ = ["NAME", "Catalog", "Deployment", "FunctionStep", "ModelStep", "Pipeline", "Step", "load_pipelines"]
