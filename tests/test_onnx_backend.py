"""The ONNX Runtime backend (``backend: onnx``): a real skl2onnx model in a real repository, chosen
by its config's platform, its session options from the worker's settings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from nearline.errors import ConfigError, ModelError
from nearline.models.backend import OnnxOptions, open_backend
from nearline.models.importer import import_model
from nearline.models.onnx_backend import OnnxBackend, providers
from nearline.models.repository import ModelRepository
from nearline.pipelines.runner import PipelineRunner
from nearline.pipelines.spec import Catalog, load_pipelines
from nearline.settings import WorkerSettings
from nearline.worker.cli import open_runner


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    root = tmp_path_factory.mktemp("onnx")
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000).fit(x.astype(np.float32), y)
    (root / "iris.onnx").write_bytes(
        to_onnx(model, x[:1].astype(np.float32), options={"zipmap": False}).SerializeToString()
    )
    import_model(root / "iris.onnx", "iris", root / "models")
    return ModelRepository(root / "models")


def test_infer_returns_every_output_by_name_with_a_row_per_input(repo: ModelRepository) -> None:
    backend = OnnxBackend(repo, OnnxOptions(intra_op_threads=1))
    backend.load("iris", 1)
    out = backend.infer(
        "iris", 1, {"X": np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])}
    )  # float64 in
    assert out["label"].tolist() == [0, 2]
    assert out["probabilities"].shape == (2, 3)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    backend.close()


def test_failures_are_model_errors_or_config_errors(repo: ModelRepository, tmp_path: Path) -> None:
    backend = OnnxBackend(repo)
    with pytest.raises(ModelError, match="input X is missing"):
        backend.infer("iris", 1, {"x": np.zeros((1, 4))})
    with pytest.raises(ModelError, match="model 'iris' version 1 failed"):
        backend.infer("iris", 1, {"X": np.zeros((1, 5))})
    with pytest.raises(ModelError, match="version 7"):
        backend.infer("iris", 7, {"X": np.zeros((1, 4))})
    broken = tmp_path / "models" / "iris"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text((repo.root / "iris" / "config.pbtxt").read_text())
    (broken / "1" / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"iris/1/model\.onnx: cannot load the ONNX model"):
        OnnxBackend(ModelRepository(tmp_path / "models")).load("iris", 1)


def test_providers_default_to_the_local_ones_and_a_missing_one_is_named() -> None:
    assert providers() == ("CPUExecutionProvider",)  # never every provider listed (Azure's is remote)
    with pytest.raises(
        ConfigError, match=r"no TensorrtExecutionProvider here; it has: .*CPUExecutionProvider"
    ):
        providers(("TensorrtExecutionProvider",))


def test_a_model_step_without_a_backend_gets_its_platforms(repo: ModelRepository, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "pipelines:\n  iris:\n    input_schema: {type: object}\n    deployment:\n      name: v1\n"
        "      steps:\n        - {name: predict, model: iris, version: 1}\n"
        "        - {name: out, function: 'nearline.pipelines.steps:outputs', args: {keys: [label]}}\n"
    )
    catalog: Catalog = load_pipelines(tmp_path / "p.yaml")
    runner = PipelineRunner(catalog, repo)
    assert [type(b).__name__ for b in runner._backends.values()] == ["OnnxBackend"]
    assert runner.run("iris", [{"X": [5.1, 3.5, 1.4, 0.2]}]).results == [{"label": 0}]
    with pytest.raises(ConfigError, match="needs a Triton URL"):
        PipelineRunner(catalog, repo, backend="triton")
    assert type(open_backend("onnx", repo)).__name__ == "OnnxBackend"


def test_the_workers_settings_set_the_session_options(repo: ModelRepository, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "pipelines:\n  iris:\n    input_schema: {type: object}\n    deployment:\n      name: v1\n"
        "      steps: [{name: predict, model: iris, version: 1, backend: onnx}]\n"
    )
    env = {"NEARLINE_PIPELINES": str(tmp_path / "p.yaml"), "NEARLINE_MODELS": str(repo.root)}
    settings = WorkerSettings.from_env({**env, "NEARLINE_ONNX_THREADS": "2"})
    backend = open_runner(settings)._backends["onnx"]
    assert isinstance(backend, OnnxBackend) and backend.options.intra_op_threads == 2
    shared = replace(WorkerSettings.from_env(env), torch_threads=1)
    assert open_runner(shared)._backends["onnx"].options.intra_op_threads == 1  # nearline serve's share
    with pytest.raises(ConfigError, match="NEARLINE_ONNX_PROVIDERS"):
        open_runner(WorkerSettings.from_env({**env, "NEARLINE_ONNX_PROVIDERS": "NoSuchExecutionProvider"}))


@pytest.mark.parametrize(
    ("word", "level"),
    [
        ("disable", "ORT_DISABLE_ALL"),
        ("basic", "ORT_ENABLE_BASIC"),
        ("extended", "ORT_ENABLE_EXTENDED"),
        (None, "ORT_ENABLE_ALL"),  # unset: ONNX Runtime's own default
    ],
)
def test_the_graph_optimisation_level_reaches_the_session(
    repo: ModelRepository, tmp_path: Path, word: str | None, level: str
) -> None:
    (tmp_path / "p.yaml").write_text(
        "pipelines:\n  iris:\n    input_schema: {type: object}\n    deployment:\n      name: v1\n"
        "      steps: [{name: predict, model: iris, version: 1, backend: onnx}]\n"
    )
    env = {"NEARLINE_PIPELINES": str(tmp_path / "p.yaml"), "NEARLINE_MODELS": str(repo.root)}
    if word is not None:
        env["NEARLINE_ONNX_OPTIMIZATION"] = word
    backend = open_runner(WorkerSettings.from_env(env))._backends["onnx"]
    assert isinstance(backend, OnnxBackend)
    session = backend._session("iris", 1)
    assert session.get_session_options().graph_optimization_level.name == level
    assert backend.infer("iris", 1, {"X": np.array([[5.1, 3.5, 1.4, 0.2]])})["label"].tolist() == [0]


def test_a_bad_optimisation_level_is_a_config_error_naming_the_variable(repo: ModelRepository) -> None:
    with pytest.raises(ConfigError, match=r"NEARLINE_ONNX_OPTIMIZATION.*disable, basic, extended, all"):
        WorkerSettings.from_env({"NEARLINE_ONNX_OPTIMIZATION": "fast"})
    with pytest.raises(ConfigError, match=r"NEARLINE_ONNX_OPTIMIZATION must be one of .*not 'fast'"):
        OnnxBackend(repo, OnnxOptions(optimization="fast"))
