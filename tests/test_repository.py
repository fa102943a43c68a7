"""The model repository: Triton-layout configs parsed with Triton's proto, and checked."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as pb

from nearline.errors import ConfigError
from nearline.examples.topics import TOPICS
from nearline.models.repository import ModelRepository, read_config

GOOD = """
name: "tiny"
platform: "pytorch_libtorch"
max_batch_size: 8
input [{ name: "INPUT__0", data_type: TYPE_FP32, dims: [ 3 ] }]
output [{ name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 3 ] }]
dynamic_batching { max_queue_delay_microseconds: 100 }
"""


@pytest.fixture(scope="module")
def repo(models_dir: Path) -> ModelRepository:
    return ModelRepository(models_dir)


def test_built_repository_lists_the_example_models(repo: ModelRepository) -> None:
    torch_models = ["digits", "minilm", "topics"]
    assert repo.names() == sorted([*torch_models, *(f"{n}_onnx" for n in torch_models)])
    for name in repo.names():
        assert repo.versions(name)[0] == 1
        assert repo.model_file(name, 1).name == ("model.pt" if name in torch_models else "model.onnx")
    assert repo.versions("topics") == repo.served_versions("topics") == [1, 2]  # version_policy: all


@pytest.mark.parametrize("name", ["digits", "minilm", "topics"])
def test_every_built_config_is_one_triton_pytorch_backend_accepts(repo: ModelRepository, name: str) -> None:
    spec = repo.model(name)
    config = spec.config
    assert config.name == name
    assert config.platform == "pytorch_libtorch"
    assert config.max_batch_size >= 32
    assert config.HasField("dynamic_batching")
    assert 0 < config.dynamic_batching.max_queue_delay_microseconds <= 1000
    assert [g.kind for g in config.instance_group] == [pb.ModelInstanceGroup.KIND_AUTO]
    assert [t.name for t in config.input] == [f"INPUT__{i}" for i in range(len(config.input))]
    assert [t.name for t in config.output] == [f"OUTPUT__{i}" for i in range(len(config.output))]
    for tensor in (*config.input, *config.output):
        assert tensor.data_type in (pb.TYPE_FP32, pb.TYPE_INT64)
        assert len(tensor.dims) >= 1


def test_example_model_signatures(repo: ModelRepository) -> None:
    digits, minilm, topics = repo.model("digits"), repo.model("minilm"), repo.model("topics")
    assert [(t.name, t.dtype, t.dims) for t in digits.inputs] == [("INPUT__0", "float32", (64,))]
    assert [(t.name, t.dtype, t.dims) for t in digits.outputs] == [("OUTPUT__0", "float32", (10,))]
    assert [(t.dtype, t.dims) for t in minilm.inputs] == [("int64", (-1,)), ("int64", (-1,))]
    assert [(t.dtype, t.dims) for t in minilm.outputs] == [("float32", (384,))]
    assert [(t.dtype, t.dims) for t in topics.outputs] == [("float32", (len(TOPICS),))]
    assert repo.labels("topics") == list(TOPICS)
    assert repo.asset("minilm", "tokenizer.json").is_file()


def _config(tmp_path: Path, text: str, folder: str = "tiny") -> Path:
    path = tmp_path / folder / "config.pbtxt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_good_config_parses_into_specs(tmp_path: Path) -> None:
    spec = read_config(_config(tmp_path, GOOD))
    assert (spec.name, spec.max_batch_size) == ("tiny", 8)
    assert spec.inputs[0].accepts((3,)) and not spec.inputs[0].accepts((4,))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t: t.replace("max_batch_size: 8", "max_batch_size: 8 }}"), "not a valid Triton model config"),
        (
            lambda t: t.replace("dims: [ 3 ] }]\noutput", "dimz: [ 3 ] }]\noutput"),
            "not a valid Triton model config",
        ),
        (lambda t: t.replace('"pytorch_libtorch"', '"tensorflow_savedmodel"'), "pytorch_libtorch"),
        (lambda t: t.replace("max_batch_size: 8", "max_batch_size: 0"), "max_batch_size"),
        (lambda t: t.replace('"INPUT__0"', '"pixels"'), "expected INPUT__0"),
        (lambda t: t.replace('"OUTPUT__0"', '"OUTPUT__1"'), "expected OUTPUT__0"),
        (
            lambda t: t.replace("TYPE_FP32, dims: [ 3 ] }]\noutput", "TYPE_STRING, dims: [ 3 ] }]\noutput"),
            "TYPE_STRING",
        ),
        (lambda t: t.replace('name: "tiny"', 'name: "other"'), "differs from its folder"),
        (lambda t: t.replace("dims: [ 3 ] }]\ndynamic", "dims: [ ] }]\ndynamic"), "dims are required"),
    ],
)
def test_bad_config_raises_config_error_naming_the_file(
    tmp_path: Path, change: Callable[[str], str], expected: str
) -> None:
    path = _config(tmp_path, change(GOOD))
    with pytest.raises(ConfigError) as err:
        ModelRepository(tmp_path).model("tiny")
    assert str(path) in err.value.message
    assert expected in err.value.message


def test_missing_model_config_version_and_root(tmp_path: Path) -> None:
    _config(tmp_path, GOOD)
    repo = ModelRepository(tmp_path)
    with pytest.raises(ConfigError, match=r"nope/config\.pbtxt: cannot read model config"):
        repo.model("nope")
    with pytest.raises(ConfigError, match=r"model 'tiny' version 2: .*tiny/2/model\.pt does not exist"):
        repo.model_file("tiny", 2)
    with pytest.raises(ConfigError, match="no output has a label_filename"):
        repo.labels("tiny")
    with pytest.raises(ConfigError, match=r"vocab\.txt does not exist"):
        repo.asset("tiny", "vocab.txt")
    with pytest.raises(ConfigError, match="not a directory"):
        ModelRepository(tmp_path / "absent")
