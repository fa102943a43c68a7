"""Run a pipeline's steps on a batch of inputs (workers only; imports numpy and the model backends).

How data flows between steps (one value per item, items failing drop out, the rest go on):

* the first step gets the job input (already checked against the pipeline's input schema here
  too: a message may come from anywhere);
* a function step with ``batch: false`` maps one value to the next; with ``batch: true`` it maps
  the list of surviving values to a list of the same length;
* a model step needs each value to be a mapping holding, for every config input, a numpy row
  (the key is the step's ``inputs`` mapping, default the config name). Rows are stacked (batch
  dimension 0), cast to the config dtype, run once per batch (in chunks of the model's
  ``max_batch_size``), and each value becomes ``{**value, key: output row, ...}``. Rows of
  variable length must be padded to the batch's longest by a batch step before;
* the last step's value is the job output: JSON by :mod:`nearline.strict_json`'s rules (finite
  numbers, no numpy types, no lone surrogates, nested at most ``MAX_JSON_DEPTH``), or the item
  fails (``StepError``; ``ModelError`` when the last step is a model): a job is never stored with
  an output no one can read back.

Failures: an exception in a per-item step fails that item alone, one in a batch step the batch's
survivors. A step that raises :class:`~nearline.errors.InvalidInput` (or another ``RequestError``)
says the input is unusable: ``InvalidInput``. Anything else it raises (a ``KeyError`` included)
is a bug in the step: ``StepError``, logged with its traceback. A model failing or returning the
wrong number of rows fails every item of that model call with ``ModelError`` (never misaligned
rows); a model returning NaN in an item's row fails that item with ``ModelError``.
"""

from __future__ import annotations

import functools
import importlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from nearline import strict_json
from nearline.errors import (
    ConfigError,
    InvalidInput,
    JobFailure,
    ModelError,
    NearlineError,
    RequestError,
    StepError,
)
from nearline.models.backend import BACKENDS, PLATFORM_BACKENDS, ModelBackend, OnnxOptions, open_backend
from nearline.models.repository import ModelRepository, ModelSpec
from nearline.pipelines.files import importable
from nearline.pipelines.spec import Catalog, Deployment, FunctionStep, ModelStep, Pipeline

log = logging.getLogger("nearline.pipelines")


@dataclass
class BatchOutcome:
    """What :meth:`PipelineRunner.run` returns.

    Attributes:
        results: One per input, same order: the job output, or a :class:`JobFailure`
            (``InvalidInput``, ``StepError``, ``ModelError``) for an item that failed.
        timings: Step name → milliseconds the step took for the whole batch.
    """

    results: list[Any]
    timings: dict[str, float]


class _Batch:
    """The values of a batch's items between steps, and the failures so far."""

    def __init__(self, values: list[Any]) -> None:
        self.values = values
        self.failures: dict[int, JobFailure] = {}

    def alive(self) -> list[int]:
        return [i for i in range(len(self.values)) if i not in self.failures]

    def fail(self, items: list[int], failure: JobFailure) -> None:
        for i in items:
            self.failures.setdefault(i, failure)


class _FunctionCall:
    """A bound function step."""

    def __init__(self, step: FunctionStep, fn: Callable[[Any], Any]) -> None:
        self.name, self.batch, self.fn = step.name, step.batch, fn

    def run(self, batch: _Batch) -> None:
        alive = batch.alive()
        if not self.batch:
            bugs: list[Exception] = []
            for i in alive:
                try:
                    batch.values[i] = self.fn(batch.values[i])
                except Exception as exc:  # a step's bug or a bad input must fail the item, not the worker
                    batch.fail([i], self._failure(exc, bugs))
            self._log(bugs)
            return
        try:
            values = self.fn([batch.values[i] for i in alive])
        except Exception as exc:
            bugs = []
            batch.fail(alive, self._failure(exc, bugs))
            self._log(bugs)
            return
        if not isinstance(values, list) or len(values) != len(alive):
            got = len(values) if isinstance(values, list) else type(values).__name__
            batch.fail(alive, StepError(f"step '{self.name}' returned {got} values for {len(alive)} items"))
            return
        for i, value in zip(alive, values, strict=True):
            batch.values[i] = value

    def _failure(self, exc: Exception, bugs: list[Exception]) -> JobFailure:
        """What ``exc`` means for the job; a bug in the step is added to ``bugs`` (to be logged)."""
        if isinstance(exc, JobFailure):
            return exc
        if isinstance(exc, RequestError):  # the step's explicit word that the input is unusable
            return InvalidInput(f"step '{self.name}': {exc.message}")
        bugs.append(exc)
        return StepError(f"step '{self.name}': {type(exc).__name__}: {exc}")

    def _log(self, bugs: list[Exception]) -> None:
        """One line per batch, with the first traceback: a bug fails every item alike."""
        if bugs:
            more = f" (and {len(bugs) - 1} more items)" if len(bugs) > 1 else ""
            log.error("step '%s' raised%s", self.name, more, exc_info=bugs[0])


class _ModelCall:
    """A bound model step: stack rows, call the backend once per chunk, split the rows back."""

    def __init__(self, step: ModelStep, spec: ModelSpec, backend: ModelBackend) -> None:
        self.name, self.step, self.spec, self.backend = step.name, step, spec, backend
        self.inputs = [(t, step.inputs.get(t.name, t.name)) for t in spec.inputs]
        self.outputs = [(t.name, step.outputs.get(t.name, t.name)) for t in spec.outputs]

    def run(self, batch: _Batch) -> None:
        rows: dict[int, list[np.ndarray]] = {}
        for i in batch.alive():
            try:
                rows[i] = self._rows(batch.values[i])
            except JobFailure as exc:
                batch.fail([i], exc)
        ready = list(rows)
        size = self.spec.max_batch_size
        for chunk in (ready[k : k + size] for k in range(0, len(ready), size)):
            try:
                outputs = self._infer([rows[i] for i in chunk])
            except JobFailure as exc:
                batch.fail(chunk, exc)
                continue
            nan = _nan_rows(outputs)
            for k, i in enumerate(chunk):
                if k in nan:  # a numerical failure of this row: its job fails, the others go on
                    batch.fail(
                        [i],
                        ModelError(f"step '{self.name}': model '{self.step.model}' returned NaN in {nan[k]}"),
                    )
                    continue
                batch.values[i] = {**batch.values[i], **{key: out[k] for key, out in outputs.items()}}

    def _rows(self, value: Any) -> list[np.ndarray]:
        if not isinstance(value, Mapping):
            raise StepError(f"step '{self.name}' needs a mapping of arrays, got {type(value).__name__}")
        rows = []
        for tensor, key in self.inputs:
            if key not in value:
                raise StepError(f"step '{self.name}': {key!r} is missing (model input {tensor.name})")
            try:
                row = np.asarray(value[key], dtype=tensor.dtype)
            except (TypeError, ValueError) as exc:
                raise InvalidInput(f"step '{self.name}': {key}: {exc}") from None
            if not tensor.accepts(row.shape):
                raise InvalidInput(
                    f"step '{self.name}': {key} has shape {list(row.shape)}; model input {tensor.name} takes "
                    f"{list(tensor.dims)}"
                )
            rows.append(row)
        return rows

    def _infer(self, rows: list[list[np.ndarray]]) -> dict[str, np.ndarray]:
        try:
            stacked = {t.name: np.stack([r[j] for r in rows]) for j, (t, _) in enumerate(self.inputs)}
        except ValueError:
            raise StepError(
                f"step '{self.name}': rows differ in shape; pad them in a batch step first"
            ) from None
        model, version = self.step.model, self.step.version
        try:
            result = self.backend.infer(model, version, stacked)
        except Exception as exc:  # any backend failure fails this call's items, never the worker
            message = exc.message if isinstance(exc, NearlineError) else f"{type(exc).__name__}: {exc}"
            raise ModelError(f"step '{self.name}': {message}") from None
        outputs = {}
        for name, key in self.outputs:
            out = result.get(name)
            if out is None or out.ndim == 0 or out.shape[0] != len(rows):
                got = "no" if out is None else (out.shape[0] if out.ndim else 0)
                raise ModelError(
                    f"step '{self.name}': model '{model}' returned {got} rows of {name} for {len(rows)}"
                )
            outputs[key] = out
        return outputs


class PipelineRunner:
    """Runs the catalog's pipelines on batches.

    Function steps are imported and model steps checked against the repository when the runner
    is built; models are loaded by :meth:`warm` (or lazily on first use).

    Args:
        catalog: The pipelines.
        repository: The model repository.
        backend: When given, the backend of every model step (overrides the steps' ``backend``).
        triton_url: The Triton server's URL, for ``triton`` model steps.
        device: torch device for the torch backend (default CUDA when available, else CPU).
        onnx: Session options for the onnx backend.

    Raises:
        ConfigError: A function cannot be imported, a factory fails, or models are missing from
            the repository (all of them are named).
    """

    def __init__(
        self,
        catalog: Catalog,
        repository: ModelRepository,
        *,
        backend: str | None = None,
        triton_url: str | None = None,
        device: str | None = None,
        onnx: OnnxOptions | None = None,
    ) -> None:
        if backend is not None and backend not in BACKENDS:
            raise ConfigError(f"unknown model backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        self.catalog, self.repository = catalog, repository
        self._override, self._triton_url, self._device = backend, triton_url, device
        self._onnx = onnx
        self._backends: dict[str, ModelBackend] = {}
        self._missing: list[str] = []
        self._plans = {(p.name, d.name): self._plan(p, d) for p in catalog for d in p.deployments}
        if self._missing:
            there = ", ".join(f"{m} {repository.versions(m)}" for m in repository.names()) or "nothing"
            raise ConfigError(
                f"models missing from the repository {repository.root}: {'; '.join(self._missing)} "
                f"(it has: {there})"
            )

    def warm(self) -> None:
        """Load every model the pipelines use now (worker start-up).

        Raises:
            ConfigError: A model cannot be loaded; the message names the pipelines file, the
                pipeline, the step and the model.
        """
        for (name, deployment), plan in self._plans.items():
            for n, call in enumerate(plan, 1):  # a plan holds every step, in order
                if not isinstance(call, _ModelCall):
                    continue
                try:
                    call.backend.load(call.step.model, call.step.version)
                except ConfigError as exc:
                    raise ConfigError(
                        f"{self._where(name, n, call.name, deployment)}: {exc.message}"
                    ) from None

    def run(self, pipeline: str, inputs: list[Any], deployment: str | None = None) -> BatchOutcome:
        """Run one deployment of ``pipeline`` (default: the one with the most traffic) on a
        batch of job inputs.

        Raises:
            UnknownPipeline: No pipeline of that name.
            UnknownDeployment: The pipeline has no deployment of that name.
        """
        spec = self.catalog.get(pipeline)
        plan = self._plans[
            pipeline, (spec.deployment if deployment is None else spec.deployment_named(deployment)).name
        ]
        batch = _Batch(list(inputs))
        for i, value in enumerate(inputs):
            try:
                spec.validate(value)
            except RequestError as exc:
                batch.fail([i], InvalidInput(exc.message))
        timings = {}
        for call in plan:
            started = time.perf_counter()
            if batch.alive():
                call.run(batch)
            timings[call.name] = round((time.perf_counter() - started) * 1000, 3)
        _check_outputs(batch, plan[-1])
        return BatchOutcome([batch.failures.get(i, v) for i, v in enumerate(batch.values)], timings)

    def close(self) -> None:
        """Close the model backends."""
        for backend in self._backends.values():
            backend.close()

    def _where(self, pipeline: str, n: int, step: str, deployment: str) -> str:
        """How a message names step ``n`` of a deployment: file, pipeline, deployment (when there
        are several), step."""
        spec = self.catalog.get(pipeline)
        source = spec.source or self.catalog.path or "pipelines"
        named = f"deployments: {deployment}: " if len(spec.deployments) > 1 else ""
        return f"{source}: pipeline '{pipeline}': {named}step {n} ({step})"

    def _plan(self, pipeline: Pipeline, deployment: Deployment) -> list[_FunctionCall | _ModelCall]:
        plan: list[_FunctionCall | _ModelCall] = []
        importable(pipeline.source)  # its steps load from its project folder, whatever the cwd
        for n, step in enumerate(deployment.steps, 1):
            here = self._where(pipeline.name, n, step.name, deployment.name)
            if isinstance(step, FunctionStep):
                plan.append(_FunctionCall(step, self._function(here, step)))
                continue
            try:
                spec = self.repository.model(step.model)
                self.repository.model_file(step.model, step.version)
            except ConfigError as exc:
                absent = not (self.repository.root / step.model).is_dir()
                self._missing.append(f"{here}: " + (f"no model '{step.model}'" if absent else exc.message))
                continue
            _check_tensors(here, step, spec)
            kind = self._override or step.backend or PLATFORM_BACKENDS[spec.platform]
            plan.append(_ModelCall(step, spec, self._backend(kind)))
        return plan

    def _function(self, where: str, step: FunctionStep) -> Callable[[Any], Any]:
        module_name, _, attr = step.function.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attr)
        except ImportError as exc:
            raise ConfigError(f"{where}: cannot import {module_name!r}: {exc}") from None
        except AttributeError:
            raise ConfigError(f"{where}: module {module_name!r} has no attribute {attr!r}") from None
        if not callable(target):
            raise ConfigError(f"{where}: {step.function} is not callable")
        if not step.factory:
            return functools.partial(target, **step.args) if step.args else target
        try:
            fn = target(self.repository, **step.args)
        except NearlineError as exc:
            raise ConfigError(f"{where}: {exc.message}") from None
        except TypeError as exc:  # wrong args for the factory
            raise ConfigError(f"{where}: {step.function}: {exc}") from None
        if not callable(fn):
            raise ConfigError(f"{where}: factory {step.function} did not return a callable")
        return fn  # type: ignore[no-any-return]

    def _backend(self, kind: str) -> ModelBackend:
        if kind not in self._backends:
            self._backends[kind] = open_backend(
                kind, self.repository, self._triton_url, device=self._device, onnx=self._onnx
            )
        return self._backends[kind]


def _nan_rows(outputs: Mapping[str, np.ndarray]) -> dict[int, str]:
    """Rows of a model call's outputs that hold NaN, and the item key of the first such output."""
    rows: dict[int, str] = {}
    for key, out in outputs.items():
        if out.dtype.kind in "fc" and out.size:
            for k in np.flatnonzero(np.isnan(out.reshape(len(out), -1)).any(axis=1)):
                rows.setdefault(int(k), key)
    return rows


def _check_outputs(batch: _Batch, last: _FunctionCall | _ModelCall) -> None:
    """Fail each surviving item whose output cannot be stored as JSON (NaN, numpy, ...)."""
    failure = ModelError if isinstance(last, _ModelCall) else StepError
    for i in batch.alive():
        found = strict_json.problem(batch.values[i], "output", "output")
        if found:
            batch.fail([i], failure(f"step '{last.name}' returned an output that cannot be stored: {found}"))


def _check_tensors(where: str, step: ModelStep, spec: ModelSpec) -> None:
    """A step maps only the model's own tensors: inputs under ``inputs``, outputs under ``outputs``.

    Raises:
        ConfigError: It names another; the message lists the model's tensors.
    """
    inputs, outputs = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
    for kind, names, have in (("input", step.inputs, inputs), ("output", step.outputs, outputs)):
        for name in names:
            if name not in have:
                raise ConfigError(
                    f"{where}: model '{step.model}' has no {kind} tensor {name!r}; its inputs are "
                    f"{', '.join(inputs)}, its outputs {', '.join(outputs)}"
                )
