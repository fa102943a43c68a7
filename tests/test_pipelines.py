"""pipelines.yaml: loading, the errors a bad file gives, and input validation messages."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from nearline.errors import ConfigError, InvalidInput, UnknownPipeline
from nearline.pipelines.spec import Catalog, FunctionStep, ModelStep, load_pipelines

STEPS = """
        - {name: pre, function: "nearline.examples.digits:preprocess"}
        - {name: classify, model: digits, version: 1}
"""


@pytest.fixture(scope="module")
def catalog(pipelines_file: Path) -> Catalog:
    return load_pipelines(pipelines_file)


def test_example_pipelines_load(catalog: Catalog) -> None:
    assert catalog.names() == ["digits", "topics", "identity"]
    assert len(catalog) == 3
    assert [p.name for p in catalog] == catalog.names()
    assert "topics" in catalog
    topics = catalog.get("topics")
    assert topics.deployment.name == "v1"
    assert [type(s) for s in topics.deployment.steps] == [FunctionStep, ModelStep, ModelStep, FunctionStep]
    tokenize, embed = topics.deployment.steps[:2]
    assert isinstance(tokenize, FunctionStep) and tokenize.factory and tokenize.batch
    assert isinstance(embed, ModelStep)
    assert (embed.model, embed.version, embed.backend) == ("minilm", 1, "torch")
    assert embed.inputs == {"INPUT__0": "input_ids", "INPUT__1": "attention_mask"}
    assert topics.input_schema["required"] == ["text"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        topics.name = "other"  # type: ignore[misc]


def test_unknown_pipeline_names_it_and_lists_the_pipelines(catalog: Catalog) -> None:
    with pytest.raises(UnknownPipeline) as err:
        catalog.get("nope")
    assert err.value.message == "unknown pipeline 'nope'; the pipelines are: digits, topics, identity"
    with pytest.raises(UnknownPipeline) as err:
        catalog.get("x" * 5000 + "\ud800")  # from a URL: quoted back short, and encodable
    assert len(err.value.message) < 200 and "the pipelines are: digits" in err.value.message
    err.value.message.encode("utf-8")


@pytest.mark.parametrize(
    ("pipeline", "value"),
    [
        ("digits", {"pixels": [0] * 64}),
        ("digits", {"pixels": [16.0, 0.5, *([3] * 62)]}),
        ("topics", {"text": "x"}),
        ("topics", {"text": "y" * 2000}),
        ("identity", {"anything": [1, {"goes": None}]}),
        ("identity", {}),
    ],
)
def test_valid_inputs_pass(catalog: Catalog, pipeline: str, value: Any) -> None:
    catalog.get(pipeline).validate(value)


@pytest.mark.parametrize(
    ("pipeline", "value", "message"),
    [
        ("digits", {"pixels": [1] * 63}, r"^input\.pixels: \[1, 1, 1, 1, 1, 1, \.\.\.\] is too short$"),
        ("digits", {"pixels": [1] * 65}, r"^input\.pixels: .* is too long$"),
        (
            "digits",
            {"pixels": [1, 2, 3, 17, *([0] * 60)]},
            r"^input\.pixels\[3\]: 17 is greater than the maximum of 16$",
        ),
        ("digits", {"pixels": [1, "a", *([0] * 62)]}, r"^input\.pixels\[1\]: 'a' is not of type 'number'$"),
        ("digits", {"pixels": [0] * 64, "extra": 1}, r"^input: Additional properties are not allowed"),
        ("digits", {}, r"^input: 'pixels' is a required property$"),
        ("topics", {"text": ""}, r"^input\.text: '' should be non-empty$"),
        ("topics", {"text": "z" * 2001}, r"^input\.text: 'zzzzz.* is too long$"),
        ("topics", ["text"], r"^input: \['text'\] is not of type 'object'$"),
        ("identity", 3, r"^input: 3 is not of type 'object'$"),
    ],
)
def test_invalid_input_message_names_the_field(
    catalog: Catalog, pipeline: str, value: Any, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message) as err:
        catalog.get(pipeline).validate(value)
    assert len(err.value.message) <= 300


def _load(tmp_path: Path, text: str) -> Catalog:
    path = tmp_path / "pipelines.yaml"
    path.write_text(textwrap.dedent(text))
    return load_pipelines(path)


def _pipeline(steps: str = STEPS, deployment: str = "name: v1", extra: str = "") -> str:
    return f"""
pipelines:
  digits:
    description: test
    input_schema: {{type: object}}{extra}
    deployment:
      {deployment}
      steps:{steps}"""


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            _pipeline(STEPS.replace("model: digits, ", "")),
            "pipeline 'digits': step 2 (classify)",
            "'model' is required",
        ),
        (
            _pipeline(STEPS.replace("version: 1", "version: 0")),
            "step 2 (classify)",
            "'version' must be a positive",
        ),
        (
            _pipeline(STEPS.replace("version: 1", "version: 1, backend: tensorflow")),
            "step 2 (classify)",
            "'backend' must be",
        ),
        (
            _pipeline(STEPS.replace("version: 1", "version: 1, batch: true")),
            "step 2 (classify)",
            "unknown field 'batch'",
        ),
        (
            _pipeline(STEPS.replace("version: 1", "version: 1, inputs: [x]")),
            "step 2 (classify)",
            "'inputs' must map",
        ),
        (
            _pipeline(STEPS.replace('"nearline.examples.digits:preprocess"', "preprocess")),
            "step 1 (pre)",
            "'function'",
        ),
        (
            _pipeline(STEPS.replace('function: "', 'batch: 1, function: "')),
            "step 1 (pre)",
            "'batch' must be true",
        ),
        (_pipeline(STEPS.replace("name: pre, ", "")), "pipeline 'digits': step 1", "'name' is required"),
        (_pipeline(STEPS.replace("name: classify", "name: pre")), "step 2 (pre)", "used by an earlier step"),
        (
            _pipeline(STEPS.replace("{name: classify, model: digits, version: 1}", "{name: x}")),
            "step 2 (x)",
            "one of",
        ),
        (_pipeline(STEPS.replace('function: "', 'factory: "a:b", function: "')), "step 1 (pre)", "not both"),
        (_pipeline("\n        - just a string"), "pipeline 'digits': step 1", "must be a mapping"),
        (_pipeline(" []"), "pipeline 'digits': deployment", "'steps' must be a non-empty list"),
        (_pipeline(deployment="nme: v1"), "pipeline 'digits': deployment", "unknown field 'nme'"),
        (_pipeline(extra="\n    colour: red"), "pipeline 'digits'", "unknown field 'colour'"),
        (
            _pipeline().replace("input_schema: {type: object}", "input_schema: {type: 12}"),
            "pipeline 'digits'",
            "'input_schema' is not a valid JSON Schema",
        ),
        (
            _pipeline().replace("    input_schema: {type: object}\n", ""),
            "pipeline 'digits'",
            "'input_schema' is required",
        ),
        (_pipeline().replace("  digits:", "  Digits!:"), "pipeline 'Digits!'", "the name must match"),
        ("pipelines: {}", "pipelines.yaml", "non-empty mapping"),
        ("pipeline: {digits: {}}", "pipelines.yaml", "top-level key 'pipelines'"),
        ("pipelines: [a", "pipelines.yaml", "not valid YAML"),
        (_pipeline() + _pipeline().replace("pipelines:", ""), "pipelines.yaml", "duplicate key 'digits'"),
    ],
)
def test_bad_file_names_file_pipeline_and_field(tmp_path: Path, text: str, where: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    assert err.value.message.startswith(str(tmp_path / "pipelines.yaml") + ":")
    assert where in err.value.message
    assert message in err.value.message


def test_missing_model_example_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, _pipeline(STEPS.replace("model: digits, ", "")))
    assert (
        err.value.message
        == f"{tmp_path / 'pipelines.yaml'}: pipeline 'digits': step 2 (classify): 'model' is required"
    )


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.yaml: cannot read pipelines file"):
        load_pipelines(tmp_path / "absent.yaml")


def test_spec_is_light() -> None:
    """API replicas and Azure Functions import the spec: it must not pull in torch or numpy."""
    code = (
        "import sys; from nearline.pipelines.spec import load_pipelines; "
        "from nearline.examples import PIPELINES_FILE; load_pipelines(PIPELINES_FILE); "
        "heavy = {'torch', 'numpy', 'tokenizers', 'tritonclient'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


# --- several files, folders, the default, examples ----------------------------------------------


def _file(path: Path, name: str, extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_pipeline(extra=extra).replace("  digits:", f"  {name}:"))
    return path


def test_several_files_and_folders_merge_in_order(tmp_path: Path) -> None:
    a = _file(tmp_path / "a.yaml", "alpha")
    _file(tmp_path / "more" / "c.yml", "gamma")
    _file(tmp_path / "more" / "b.yaml", "beta")
    (tmp_path / "more" / "notes.txt").write_text("not a pipelines file")
    catalog = load_pipelines([a, tmp_path / "more", a])  # a file named twice loads once
    assert catalog.names() == ["alpha", "beta", "gamma"]
    assert catalog.sources == (a, tmp_path / "more" / "b.yaml", tmp_path / "more" / "c.yml")
    assert catalog.get("gamma").source == tmp_path / "more" / "c.yml"


def test_a_pipeline_defined_in_two_files_names_both(tmp_path: Path) -> None:
    a, b = _file(tmp_path / "a.yaml", "alpha"), _file(tmp_path / "b.yaml", "alpha")
    with pytest.raises(ConfigError) as err:
        load_pipelines([a, b])
    assert err.value.message == f"pipeline 'alpha' is defined twice: in {a} and in {b}"


def test_a_folder_without_pipelines_files_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no pipelines files \(\*\.yaml, \*\.yml\) here"):
        load_pipelines(tmp_path)


def test_the_default_is_the_current_folders_pipelines_yaml_else_the_examples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pipelines_file: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_pipelines().sources == (pipelines_file,)
    _file(tmp_path / "pipelines.yaml", "mine")
    assert load_pipelines().names() == ["mine"] and load_pipelines(()).sources == (Path("pipelines.yaml"),)


def test_the_variable_and_the_flag_take_several(tmp_path: Path) -> None:
    from nearline.cli import serve_settings
    from nearline.settings import WorkerSettings

    env = {"NEARLINE_PIPELINES": " a.yaml, more/ "}
    assert WorkerSettings.from_env(env).pipelines == (Path("a.yaml"), Path("more"))
    flags = serve_settings(["--pipelines", "x.yaml", "y/", "--port", "1"], env)
    assert flags.worker.pipelines == (Path("x.yaml"), Path("y"))


def test_examples_must_pass_the_input_schema(tmp_path: Path) -> None:
    schema = "\n    examples: [{pixels: [1]}, {pixels: 2}]"
    catalog = _load(tmp_path, _pipeline(extra=schema))
    assert catalog.get("digits").examples == ({"pixels": [1]}, {"pixels": 2})
    strict = _pipeline(extra=schema).replace("{type: object}", "{type: object, required: [text]}")
    with pytest.raises(
        ConfigError, match=r"pipeline 'digits': examples\[0\] fails the input schema: input: 'text'"
    ):
        _load(tmp_path, strict)
    with pytest.raises(ConfigError, match="'examples' must be a list"):
        _load(tmp_path, _pipeline(extra="\n    examples: {pixels: 1}"))


def test_steps_import_from_the_pipelines_files_folder_whatever_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models_dir: Path
) -> None:
    from nearline.models.repository import ModelRepository
    from nearline.pipelines.runner import PipelineRunner

    project = tmp_path / "project"
    project.mkdir()
    (project / "first_hour_steps.py").write_text(
        "def shout(item):\n    return {'said': item['say'].upper()}\n"
    )
    (project / "pipelines.yaml").write_text(
        "pipelines:\n  shout:\n    input_schema: {type: object}\n    deployment:\n      name: v1\n"
        "      steps: [{name: shout, function: 'first_hour_steps:shout'}]\n"
    )
    monkeypatch.chdir(tmp_path)  # not the project folder
    monkeypatch.setattr(sys, "path", list(sys.path))
    runner = PipelineRunner(load_pipelines(project / "pipelines.yaml"), ModelRepository(models_dir))
    assert runner.run("shout", [{"say": "hi"}]).results == [{"said": "HI"}]
    assert sys.path[-1] == str(project)  # last: nothing there shadows the standard library
