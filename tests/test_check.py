"""``nearline check``: every pipeline built, its models loaded and its examples (or a sample from
its schema, :mod:`nearline.pipelines.samples`) run in process, one line each; exit 1 on any
problem, 2 when the files do not load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nearline.check import check, report
from nearline.pipelines.samples import from_schema
from nearline.settings import WorkerSettings

PIPELINES = """
pipelines:
  fine:
    input_schema: {type: object, properties: {pixels: {type: array, minItems: 64, maxItems: 64,
                   items: {type: number, minimum: 0, maximum: 16}}}, required: [pixels]}
    deployment:
      name: v1
      steps:
        - {name: pre, function: "nearline.examples.digits:preprocess"}
        - {name: classify, model: digits, version: 1, inputs: {INPUT__0: pixels},
           outputs: {OUTPUT__0: probabilities}}
        - {name: post, function: "nearline.examples.digits:postprocess"}
  refused:
    input_schema: {type: object}
    examples: [{x: 1}, {pixels: [1, 2]}]
    deployment:
      name: v1
      steps: [{name: pre, function: "nearline.examples.digits:preprocess"}]
  nomodel:
    input_schema: {type: object}
    examples: [{}]
    deployment:
      name: v1
      steps: [{name: classify, model: absent, version: 1}]
  unsampled:
    input_schema: {type: string, pattern: "^[0-9]{4}$"}
    deployment:
      name: v1
      steps: [{name: same, function: "nearline.examples.identity:identity", batch: true}]
"""


def nearline(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nearline", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_the_example_pipelines_pass(models_dir: Path, pipelines_file: Path) -> None:
    results = check(WorkerSettings(pipelines=(pipelines_file,), models=models_dir))
    assert [(r.pipeline, r.problem) for r in results] == [
        ("digits", None),
        ("topics", None),
        ("identity", None),
    ]
    assert results[0].output["label"] == 0 and results[1].output["label"] == "sports"
    assert report(results).endswith("3 pipelines: all ok")


def test_each_problem_is_reported_on_its_pipelines_line(models_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINES)
    results = {r.pipeline: r for r in check(WorkerSettings(pipelines=(path,), models=models_dir))}
    assert results["fine"].problem is None and results["fine"].what == "a sample from its schema"
    assert results["refused"].problem == (
        "example 1 failed: InvalidInput: pixels must be 64 numbers: 'pixels'"
    )
    assert results["nomodel"].problem is not None
    assert f"{path}: pipeline 'nomodel': step 1 (classify): no model 'absent'" in results["nomodel"].problem
    assert results["unsampled"].problem == "no examples, and no sample fits its input schema: add examples:"
    text = report(list(results.values()))
    assert text.splitlines()[0].startswith("  ok    fine ") and text.endswith("3 of 4 pipelines failed")


def test_the_exit_status_says_whether_everything_ran(models_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(PIPELINES)
    (tmp_path / "broken.yaml").write_text("pipelines: [")
    failed = nearline("check", "--pipelines", "bad.yaml", "--models", str(models_dir), cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr
    assert "FAIL  nomodel" in failed.stdout and "3 of 4 pipelines failed" in failed.stdout
    broken = nearline("check", "--pipelines", "broken.yaml", cwd=tmp_path)
    assert broken.returncode == 2 and broken.stderr.startswith("nearline check: broken.yaml: not valid YAML")


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        (
            {
                "type": "object",
                "properties": {"n": {"type": "integer", "exclusiveMinimum": 0.5}},
                "required": ["n"],
            },
            {"n": 2},
        ),
        ({"type": "array", "items": {"type": "number", "minimum": 3}, "minItems": 2}, [3.0, 3.0]),
        ({"type": "string", "minLength": 8, "maxLength": 9}, "samplexx"),
        ({"enum": ["red", "green"]}, "red"),
        ({"type": ["null", "boolean"]}, False),
        ({"anyOf": [{"type": "string", "examples": ["hello"]}, {"type": "number"}]}, "hello"),
        ({"type": "object"}, {}),
        ({"type": "string", "format": "email", "pattern": "@"}, None),
    ],
)
def test_a_sample_is_built_from_the_schema_or_none(schema: dict[str, Any], expected: Any) -> None:
    assert from_schema(schema) == expected
