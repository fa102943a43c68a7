"""``nearline models import``: ONNX (skl2onnx, torch.onnx.export) and TorchScript files become
Triton-layout models whose config is read from the model, and the pipeline it prints serves the
model as it is."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from nearline.errors import ConfigError
from nearline.models.importer import import_model, parse_input
from nearline.models.repository import ModelRepository
from nearline.pipelines.runner import PipelineRunner
from nearline.pipelines.spec import load_pipelines


@pytest.fixture(scope="module")
def iris() -> tuple[LogisticRegression, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    return LogisticRegression(max_iter=1000).fit(x, y), x


def onnx_file(folder: Path, model: LogisticRegression, x: np.ndarray, **options: object) -> Path:
    path = folder / "iris.onnx"
    path.write_bytes(to_onnx(model, x[:1], options=options or {"zipmap": False}).SerializeToString())
    return path


def nearline(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nearline", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_an_skl2onnx_model_imports_with_its_tensors_and_its_pipeline_serves_it(tmp_path: Path, iris) -> None:
    model, x = iris
    done = nearline("models", "import", str(onnx_file(tmp_path, model, x)), "--name", "iris", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    spec = ModelRepository(tmp_path / "models").model("iris")
    assert (spec.platform, spec.max_batch_size) == ("onnxruntime_onnx", 64)
    assert [(t.name, t.dtype, t.dims) for t in spec.inputs] == [("X", "float32", (4,))]
    # label is [batch]: Triton's dims [1] with reshape [] (the row is a scalar)
    assert [(t.name, t.dtype, t.dims) for t in spec.outputs] == [
        ("label", "int64", ()),
        ("probabilities", "float32", (3,)),
    ]
    assert spec.config.output[0].dims == [1] and spec.config.output[0].HasField("reshape")
    (tmp_path / "iris.yaml").write_text(done.stdout[done.stdout.index("\npipelines:\n") :])
    runner = PipelineRunner(load_pipelines(tmp_path / "iris.yaml"), ModelRepository(tmp_path / "models"))
    runner.warm()
    outputs = runner.run("iris", [{"X": row.tolist()} for row in x[[0, 60, 140]]]).results
    assert [o["label"] for o in outputs] == model.predict(x[[0, 60, 140]]).tolist()
    np.testing.assert_allclose(
        [o["probabilities"] for o in outputs], model.predict_proba(x[[0, 60, 140]]), atol=1e-5
    )
    assert load_pipelines(tmp_path / "iris.yaml").get("iris").examples == ({"X": [0, 0, 0, 0]},)


def test_a_zipmap_output_is_refused_with_the_fix(tmp_path: Path, iris) -> None:
    path = onnx_file(tmp_path, *iris, zipmap=True)
    with pytest.raises(ConfigError, match=r"output 'output_probability' is seq\(map.*zipmap.*False"):
        import_model(path, "iris", tmp_path / "models")
    assert not (tmp_path / "models" / "iris").exists()


def test_a_torch_onnx_export_without_a_batch_axis_is_refused(tmp_path: Path) -> None:
    module = torch.nn.Linear(3, 2)
    with_batch, fixed = tmp_path / "dynamic.onnx", tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own versions
        torch.onnx.export(module, (torch.zeros(1, 3),), str(fixed), input_names=["x"], dynamo=False)
        torch.onnx.export(
            module, (torch.zeros(1, 3),), str(with_batch), input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False,
        )  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"input 'x' has shape \[1, 3\]: dimension 0 must be a dynamic batch"
    ):
        import_model(fixed, "lin", tmp_path / "models")
    import_model(with_batch, "lin", tmp_path / "models")
    spec = ModelRepository(tmp_path / "models").model("lin")
    assert [(t.name, t.dims) for t in (*spec.inputs, *spec.outputs)] == [("x", (3,)), ("y", (2,))]


def test_a_torchscript_model_needs_its_inputs_and_its_outputs_are_probed(tmp_path: Path) -> None:
    class Pool(torch.nn.Module):  # a variable length in, a fixed width out; two outputs
        def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            emb = ids.float().unsqueeze(-1).repeat(1, 1, 4)
            return emb.mean(dim=1), emb

    path = tmp_path / "pool.pt"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`torch.jit", category=DeprecationWarning)
        torch.jit.save(torch.jit.script(Pool()), str(path))
    with pytest.raises(ConfigError, match="records no input dtypes or shapes: give each with --input"):
        import_model(path, "pool", tmp_path / "models")
    with pytest.raises(ConfigError, match=r"forward takes 1 inputs \(ids\); --input given 2 times"):
        import_model(path, "pool", tmp_path / "models", inputs=["int64:-1", "fp32:3"])
    import_model(path, "pool", tmp_path / "models", inputs=["int64:-1"])
    spec = ModelRepository(tmp_path / "models").model("pool")
    assert [(t.name, t.dtype, t.dims) for t in spec.inputs] == [("INPUT__0", "int64", (-1,))]
    assert [(t.name, t.dtype, t.dims) for t in spec.outputs] == [
        ("OUTPUT__0", "float32", (4,)),
        ("OUTPUT__1", "float32", (-1, 4)),
    ]
    with pytest.raises(ConfigError, match=r"pool/1 exists: pass --force to replace it, or --version 2"):
        import_model(path, "pool", tmp_path / "models", inputs=["int64:-1"])
    import_model(path, "pool", tmp_path / "models", version=2, inputs=["int64:-1"])
    assert ModelRepository(tmp_path / "models").versions("pool") == [1, 2]


@pytest.mark.parametrize("raw", ["fp32", "float:3", "fp32:0", "fp32:a,b", "int64:-2"])
def test_a_bad_input_spec_says_the_form(raw: str) -> None:
    with pytest.raises(ConfigError, match="expected DTYPE:DIMS"):
        parse_input(raw)


def test_bad_files_and_names_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"x")
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    cases = [
        (["model.bin", "--name", "m"], "expected an ONNX (.onnx) or TorchScript (.pt) file"),
        (["broken.onnx", "--name", "m"], "ONNX Runtime cannot load it"),
        (["missing.onnx", "--name", "m"], "no such file"),
        (["broken.onnx", "--name", "../m"], "--name '../m': must match"),
    ]
    for args, message in cases:
        done = nearline("models", "import", *args, cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_the_printed_pipeline_is_valid_yaml_with_an_example(tmp_path: Path, iris) -> None:
    done = nearline("models", "import", str(onnx_file(tmp_path, *iris)), "--name", "Iris.v2", cwd=tmp_path)
    doc = yaml.safe_load(done.stdout[done.stdout.index("\npipelines:\n") :])
    assert list(doc["pipelines"]) == ["iris-v2"]  # a URL segment, from the model's name
    assert doc["pipelines"]["iris-v2"]["deployment"]["steps"][0]["model"] == "Iris.v2"
