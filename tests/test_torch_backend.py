"""The in-process torch backend, on tiny TorchScript models built in a temporary repository."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from tritonclient.grpc import model_config_pb2 as pb

from nearline.errors import ConfigError, ModelError
from nearline.models.backend import open_backend
from nearline.models.build import model_config, save_model
from nearline.models.repository import ModelRepository
from nearline.models.torch_backend import TorchBackend


class Affine(torch.nn.Module):
    """Two inputs, two outputs: ``(2x + y, row sums)``; raises on a negative ``x``."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if bool((x < 0).any()):
            raise RuntimeError("negative input")
        return 2 * x + y, x.sum(dim=1, keepdim=True)


class DropRow(torch.nn.Module):
    """Returns one row fewer than it was given."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[1:]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    root = tmp_path_factory.mktemp("models")
    fp32 = pb.TYPE_FP32
    save_model(
        root / "affine",
        Affine(),
        model_config("affine", [(fp32, [3]), (fp32, [3])], [(fp32, [3]), (fp32, [1])]),
    )
    save_model(root / "droprow", DropRow(), model_config("droprow", [(fp32, [2])], [(fp32, [2])]))
    save_model(root / "broken", DropRow(), model_config("broken", [(fp32, [2])], [(fp32, [2])]))
    (root / "broken" / "1" / "model.pt").write_bytes(b"not a zip file")
    return ModelRepository(root)


@pytest.fixture(scope="module")
def backend(repo: ModelRepository) -> TorchBackend:
    return TorchBackend(repo)


def test_device_defaults_to_cuda_when_available(backend: TorchBackend) -> None:
    assert backend.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_infer_maps_inputs_and_outputs_by_config_order(backend: TorchBackend) -> None:
    x = np.arange(6).reshape(2, 3)  # int64: cast to the config's FP32
    y = np.ones((2, 3), dtype=np.float32)
    out = backend.infer("affine", 1, {"INPUT__1": y, "INPUT__0": x})
    assert sorted(out) == ["OUTPUT__0", "OUTPUT__1"]
    assert out["OUTPUT__0"].dtype == np.float32
    np.testing.assert_array_equal(out["OUTPUT__0"], 2 * x + 1)
    np.testing.assert_array_equal(out["OUTPUT__1"], [[3], [12]])


def test_read_only_input_is_accepted(backend: TorchBackend) -> None:
    x = np.zeros((1, 3), dtype=np.float32)
    x.flags.writeable = False
    assert backend.infer("affine", 1, {"INPUT__0": x, "INPUT__1": x})["OUTPUT__0"].shape == (1, 3)


def test_row_count_mismatch_is_a_model_error(backend: TorchBackend) -> None:
    with pytest.raises(ModelError, match="OUTPUT__0 has 2 rows for a batch of 3"):
        backend.infer("droprow", 1, {"INPUT__0": np.zeros((3, 2), dtype=np.float32)})


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"INPUT__0": np.full((1, 3), -1.0)}, "input INPUT__1 is missing"),
        ({"INPUT__0": np.full((1, 3), -1.0), "INPUT__1": np.zeros((1, 3))}, "negative input"),
        ({"INPUT__0": np.zeros((2, 3)), "INPUT__1": np.zeros((1, 3))}, "different batch sizes"),
    ],
)
def test_bad_calls_are_model_errors(
    backend: TorchBackend, inputs: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(ModelError, match=message):
        backend.infer("affine", 1, inputs)


def test_missing_or_broken_model_file(backend: TorchBackend) -> None:
    with pytest.raises(ConfigError, match=r"broken/1/model\.pt: cannot load TorchScript"):
        backend.load("broken", 1)
    with pytest.raises(ConfigError, match=r"affine/7/model\.pt does not exist"):
        backend.load("affine", 7)
    with pytest.raises(ModelError, match="does not exist"):
        backend.infer("affine", 7, {})


def test_real_digits_model_returns_probabilities(models_dir: Path) -> None:
    backend = TorchBackend(ModelRepository(models_dir), device="cpu")
    out = backend.infer("digits", 1, {"INPUT__0": np.random.default_rng(0).uniform(0, 16, (5, 64))})
    np.testing.assert_allclose(out["OUTPUT__0"].sum(axis=1), 1.0, rtol=1e-5)
    backend.close()


def test_open_backend(repo: ModelRepository) -> None:
    assert isinstance(open_backend("torch", repo, device="cpu"), TorchBackend)
    with pytest.raises(ConfigError, match="unknown model backend 'tensorflow'"):
        open_backend("tensorflow", repo)
    with pytest.raises(ConfigError, match="needs a Triton URL"):
        open_backend("triton", repo, None)
    if importlib.util.find_spec("nearline.models.triton_backend") is None:
        with pytest.raises(ConfigError, match="'triton' is not available"):
            open_backend("triton", repo, "http://127.0.0.1:8000")
