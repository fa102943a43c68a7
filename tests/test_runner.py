"""The pipeline runner: per-item failures, whole-batch model failures, chunking, real pipelines."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tritonclient.grpc import model_config_pb2 as pb

from nearline.errors import ConfigError, InvalidInput, ModelError, StepError, UnknownPipeline
from nearline.models.build import model_config, save_model
from nearline.models.repository import ModelRepository
from nearline.pipelines.runner import PipelineRunner
from nearline.pipelines.spec import Catalog, load_pipelines

HERE = __name__  # the module name pytest imported this file under: step targets point back here


class Double(torch.nn.Module):
    """``2x``; refuses batches over its config's max_batch_size (4) and negative numbers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 4:
            raise RuntimeError("batch over max_batch_size")
        if bool((x < 0).any()):
            raise RuntimeError("negative input")
        return 2 * x


class DropRow(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[1:]


class Unstable(torch.nn.Module):
    """``x``, but NaN in every row holding a number over 100 (a numerical failure)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where((x > 100).any(dim=1, keepdim=True), torch.full_like(x, float("nan")), x)


def prepare(item: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per-item step: InvalidInput on 'refuse' (its word on the input); on 'boom' or an item
    without ``x`` it raises RuntimeError / KeyError (bugs, as far as the runner can tell)."""
    if item.get("refuse"):
        raise InvalidInput("x must be two numbers")
    if item.get("boom"):
        raise RuntimeError("boom")
    return {"x": np.asarray(item["x"], dtype=np.float32)}


def unstorable(item: dict[str, Any]) -> Any:
    """Per-item step returning what its ``kind`` names: a storable output or one of the others."""
    deep: list[Any] = []
    for _ in range(70):
        deep = [deep]
    loop: list[Any] = []
    loop.append(loop)
    return {
        "ok": {"v": [1.5, None, "é", {"w": True}]},
        "nan": {"v": [1.0, float("nan")]},
        "inf": {"v": {"w": float("-inf")}},
        "numpy": {"v": np.float32(0.5)},
        "array": {"v": np.zeros(2)},
        "surrogate": {"v": "\udc80"},
        "huge": {"v": 10**400},
        "deep": deep,
        "loop": loop,
    }[item["kind"]]


def finish(item: dict[str, np.ndarray]) -> list[float]:
    return [float(v) for v in item["y"]]


def lose_one(items: list[Any]) -> list[Any]:
    return items[1:]


def _pipeline(name: str, model: str) -> str:
    return f"""
  {name}:
    input_schema: {{type: object}}
    deployment:
      name: v1
      steps:
        - {{name: prepare, function: "{HERE}:prepare"}}
        - {{name: model, model: {model}, version: 1, inputs: {{INPUT__0: x}}, outputs: {{OUTPUT__0: y}}}}
        - {{name: finish, function: "{HERE}:finish"}}"""


TINY = f"""
pipelines:{_pipeline("double", "double")}{_pipeline("drop", "droprow")}{_pipeline("unstable", "unstable")}
  short:
    input_schema: {{type: object}}
    deployment: {{name: v1, steps: [{{name: lose, function: "{HERE}:lose_one", batch: true}}]}}
  unstorable:
    input_schema: {{type: object}}
    deployment: {{name: v1, steps: [{{name: odd, function: "{HERE}:unstorable"}}]}}
  model-last:
    input_schema: {{type: object}}
    deployment:
      name: v1
      steps:
        - {{name: prepare, function: "{HERE}:prepare"}}
        - {{name: model, model: double, version: 1, inputs: {{INPUT__0: x}}}}
"""


def _catalog(tmp_path: Path, text: str) -> Catalog:
    path = tmp_path / "pipelines.yaml"
    path.write_text(textwrap.dedent(text))
    return load_pipelines(path)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    root = tmp_path_factory.mktemp("models")
    for name, module in (("double", Double()), ("droprow", DropRow()), ("unstable", Unstable())):
        config = model_config(name, [(pb.TYPE_FP32, [2])], [(pb.TYPE_FP32, [2])])
        config.max_batch_size = 4
        save_model(root / name, module, config)
    return ModelRepository(root)


@pytest.fixture(scope="module")
def tiny(tiny_repo: ModelRepository, tmp_path_factory: pytest.TempPathFactory) -> PipelineRunner:
    runner = PipelineRunner(_catalog(tmp_path_factory.mktemp("pipelines"), TINY), tiny_repo, device="cpu")
    runner.warm()
    return runner


@pytest.fixture(scope="module")
def examples(models_dir: Path, pipelines_file: Path) -> PipelineRunner:
    runner = PipelineRunner(load_pipelines(pipelines_file), ModelRepository(models_dir), device="cpu")
    runner.warm()
    return runner


def test_one_bad_item_fails_alone(tiny: PipelineRunner) -> None:
    inputs = [{"x": [1, 2]}, {"boom": True}, {"refuse": 1}, {"x": [1, 2, 3]}, 5, {"x": [3, 4]}]
    results = tiny.run("double", inputs).results
    assert results[0] == [2.0, 4.0] and results[-1] == [6.0, 8.0]
    assert isinstance(results[1], StepError) and "step 'prepare': RuntimeError: boom" in results[1].message
    assert isinstance(results[2], InvalidInput) and results[2].message == "x must be two numbers"
    assert isinstance(results[3], InvalidInput) and "shape [3]" in results[3].message
    assert isinstance(results[4], InvalidInput) and results[4].message == "input: 5 is not of type 'object'"


def test_a_step_bug_is_a_step_error_logged_with_its_traceback(
    tiny: PipelineRunner, caplog: pytest.LogCaptureFixture
) -> None:
    """A KeyError or ValueError out of a step is the step's bug (the server's fault), not the
    caller's: only a step's explicit InvalidInput says the input is unusable."""
    with caplog.at_level(logging.ERROR, logger="nearline.pipelines"):
        results = tiny.run("double", [{"y": 1}, {"x": ["a", 2]}, {"x": [1, 2]}, {"y": 2}]).results
    assert isinstance(results[0], StepError) and "step 'prepare': KeyError: 'x'" in results[0].message
    assert isinstance(results[1], StepError) and "ValueError" in results[1].message
    assert results[2] == [2.0, 4.0] and isinstance(results[3], StepError)
    (record,) = caplog.records  # one line for the batch, with the first traceback
    assert "step 'prepare' raised (and 2 more items)" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is KeyError


@pytest.mark.parametrize(
    ("kind", "where"),
    [
        ("nan", "output.v[1]: NaN is not a finite number"),
        ("inf", "output.v.w: -Infinity is not a finite number"),
        ("numpy", "output.v: a float32 is not a JSON value"),
        ("array", "output.v: a ndarray is not a JSON value"),
        ("surrogate", "output.v: the string holds a lone UTF-16 surrogate"),
        ("huge", "output.v: an integer of 401 digits is out of range"),
        ("deep", "nest deeper than 64 levels"),
        ("loop", "nest deeper than 64 levels"),
    ],
)
def test_an_output_that_cannot_be_stored_fails_its_item_alone(
    tiny: PipelineRunner, kind: str, where: str
) -> None:
    ok, bad, ok_too = tiny.run("unstorable", [{"kind": "ok"}, {"kind": kind}, {"kind": "ok"}]).results
    assert ok == ok_too == {"v": [1.5, None, "é", {"w": True}]}
    assert isinstance(bad, StepError), bad
    assert bad.message.startswith("step 'odd' returned an output that cannot be stored: ")
    assert where in bad.message


def test_a_model_returning_nan_fails_that_item_alone(tiny: PipelineRunner) -> None:
    results = tiny.run("unstable", [{"x": [1, 2]}, {"x": [101, 2]}, {"x": [3, 4]}]).results
    assert results[0] == [1.0, 2.0] and results[2] == [3.0, 4.0]
    assert isinstance(results[1], ModelError)
    assert results[1].message == "step 'model': model 'unstable' returned NaN in y"


def test_a_model_as_the_last_step_must_still_give_json(tiny: PipelineRunner) -> None:
    (result,) = tiny.run("model-last", [{"x": [1, 2]}]).results
    assert isinstance(result, ModelError) and "output.x: a ndarray is not a JSON value" in result.message


def test_batches_over_max_batch_size_run_in_chunks_in_order(tiny: PipelineRunner) -> None:
    results = tiny.run("double", [{"x": [i, -0.0]} for i in range(10)]).results
    assert results == [[2.0 * i, 0.0] for i in range(10)]


def test_model_error_fails_its_chunk_only(tiny: PipelineRunner) -> None:
    inputs = [{"x": [1, 1]}] * 4 + [{"x": [-1, 1]}, {"x": [2, 2]}]
    results = tiny.run("double", inputs).results
    assert results[:4] == [[2.0, 2.0]] * 4
    assert all(isinstance(r, ModelError) and "negative input" in r.message for r in results[4:])


def test_row_count_mismatch_fails_the_batch(tiny: PipelineRunner) -> None:
    results = tiny.run("drop", [{"x": [1, 2]}, {"x": [3, 4]}, {"x": [5, 6]}]).results
    assert all(isinstance(r, ModelError) for r in results)
    assert "rows" in results[0].message and "for a batch of 3" in results[0].message


def test_batch_step_returning_the_wrong_length_fails_the_batch(tiny: PipelineRunner) -> None:
    results = tiny.run("short", [{}, {}]).results
    assert all(isinstance(r, StepError) and "returned 1 values for 2 items" in r.message for r in results)


def test_timings_cover_every_step(tiny: PipelineRunner) -> None:
    outcome = tiny.run("double", [{"x": [1, 2]}, {"boom": True}])
    assert list(outcome.timings) == ["prepare", "model", "finish"]
    assert all(ms >= 0 for ms in outcome.timings.values())
    assert tiny.run("double", []).results == []


def test_unknown_pipeline(tiny: PipelineRunner) -> None:
    with pytest.raises(UnknownPipeline, match="'nope'"):
        tiny.run("nope", [{}])


def test_digits_batch_with_a_bad_item(examples: PipelineRunner) -> None:
    good = {"pixels": [0, 0, 5, 13, 9, 1, 0, 0] + [0] * 56}
    outcome = examples.run("digits", [good, {"pixels": [1] * 63}, good])
    first, bad, last = outcome.results
    assert first == last and 0 <= first["label"] <= 9 and len(first["probabilities"]) == 10
    assert isinstance(bad, InvalidInput) and bad.message.startswith("input.pixels: ")
    assert list(outcome.timings) == ["preprocess", "classify", "postprocess"]


def test_topics_batch_of_mixed_lengths_equals_each_alone(examples: PipelineRunner) -> None:
    texts = ["Goal!", "The central bank raised rates again. " * 20, "x" * 2000, "A vaccine trial started."]
    together = examples.run("topics", [{"text": t} for t in texts]).results
    for text, result in zip(texts, together, strict=True):
        (alone,) = examples.run("topics", [{"text": text}]).results
        assert alone["label"] == result["label"]
        np.testing.assert_allclose(list(alone["scores"].values()), list(result["scores"].values()), atol=1e-5)


def test_identity_returns_its_input(examples: PipelineRunner) -> None:
    assert examples.run("identity", [{"a": [1, {"b": None}]}, {}]).results == [{"a": [1, {"b": None}]}, {}]


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (
            '{name: f, function: "nearline.no_such_module:f"}',
            "step 1 (f): cannot import 'nearline.no_such_module'",
        ),
        ('{name: f, function: "nearline.examples.digits:nope"}', "has no attribute 'nope'"),
        ('{name: f, function: "nearline.examples.digits:SEED"}', "is not callable"),
        (
            '{name: f, factory: "nearline.examples.topics:tokenizer", args: {model: double}}',
            "tokenizer.json does not exist",
        ),
        (
            '{name: f, factory: "nearline.examples.topics:tokenizer", args: {colour: red}}',
            "unexpected keyword",
        ),
        (
            "{name: m, model: double, version: 1, inputs: {INPUT__9: x}}",
            "model 'double' has no input tensor 'INPUT__9'; its inputs are INPUT__0, its outputs OUTPUT__0",
        ),
        (
            "{name: m, model: double, version: 1, outputs: {INPUT__0: x}}",
            "model 'double' has no output tensor 'INPUT__0'; its inputs are INPUT__0, its outputs OUTPUT__0",
        ),
        ("{name: m, model: absent, version: 1}", "(it has: double [1], droprow [1], unstable [1])"),
        ("{name: m, model: double, version: 3}", "model 'double' version 3"),
    ],
)
def test_runner_build_errors_name_pipeline_and_step(
    tiny_repo: ModelRepository, tmp_path: Path, step: str, message: str
) -> None:
    catalog = _catalog(
        tmp_path, f"pipelines: {{p: {{input_schema: {{}}, deployment: {{name: v1, steps: [{step}]}}}}}}"
    )
    with pytest.raises(ConfigError) as err:
        PipelineRunner(catalog, tiny_repo)
    assert message in err.value.message
    assert "pipeline 'p': step 1" in err.value.message


def test_warm_names_a_model_that_does_not_load(tiny_repo: ModelRepository, tmp_path: Path) -> None:
    root = tmp_path / "models"
    save_model(root / "double", Double(), tiny_repo.model("double").config)
    (root / "double" / "1" / "model.pt").write_bytes(b"garbage")
    runner = PipelineRunner(
        _catalog(tmp_path, f"pipelines:{_pipeline('double', 'double')}"), ModelRepository(root)
    )
    with pytest.raises(ConfigError, match=r"double/1/model\.pt: cannot load TorchScript"):
        runner.warm()


def test_backend_override(tiny_repo: ModelRepository, tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, f"pipelines:{_pipeline('double', 'double')}")
    with pytest.raises(ConfigError, match="needs a Triton URL"):
        PipelineRunner(catalog, tiny_repo, backend="triton")
    with pytest.raises(ConfigError, match="unknown model backend"):
        PipelineRunner(catalog, tiny_repo, backend="tensorflow")
