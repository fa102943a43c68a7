"""Real Triton servers for tests: pytriton's bundled ``tritonserver`` on loopback, free ports.

Import the fixtures into a test module (``from triton_fixture import triton_server_fixture``):
pytest registers them under their ``name=`` (``triton_server``, ``triton_repository``), so test
arguments do not shadow the import. If Triton cannot start here the test fails under ``CI=true``
(CI must have it) and skips elsewhere.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import unavailable
from tritonclient.grpc import model_config_pb2 as pb

from nearline.errors import NearlineError
from nearline.models import triton_client
from nearline.models.build import model_config, save_model

#: What CI must provide for these fixtures (named when a test fails under CI=true without it).
TRITON = "the Triton server bundled with nvidia-pytriton"


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on loopback."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def spy_on_retries(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """Every error the Triton client judges "unavailable" (and so retries), from now on."""
    retried: list[BaseException] = []
    judge = triton_client.unavailable

    def spy(exc: BaseException) -> bool:
        verdict = judge(exc)
        if verdict:
            retried.append(exc)
        return verdict

    monkeypatch.setattr(triton_client, "unavailable", spy)
    return retried


class DropRow(torch.nn.Module):
    """Returns one row fewer than it was given (a model breaking the row-count guarantee)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[1:]


class TritonProcess:
    """A local Triton server that a test may stop and start again on the same ports."""

    def __init__(self, models_dir: Path, models: list[str] | None = None) -> None:
        self.models_dir, self.models = models_dir, models
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        #: Model name → the versions served (set by :meth:`start`).
        self.served: dict[str, tuple[int, ...]] = {}
        self._stack: contextlib.ExitStack | None = None

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        try:
            from nearline.triton.server import serve_repository
        except ImportError as exc:
            unavailable(TRITON, f"pytriton is not installed: {exc}")
        stack = contextlib.ExitStack()
        try:
            server = stack.enter_context(
                serve_repository(
                    self.models_dir,
                    http_port=self.http_port,
                    grpc_port=self.grpc_port,
                    metrics_port=self.metrics_port,
                    models=self.models,
                )
            )
        except NearlineError as exc:
            stack.close()
            unavailable(TRITON, f"Triton did not start: {exc.message}")
        self.served, self._stack = server.models, stack

    @property
    def running(self) -> bool:
        """Started and not stopped since."""
        return self._stack is not None

    def stop(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()


@pytest.fixture(scope="session", name="triton_repository")
def triton_repository_fixture(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole example repository (linked: TorchScript and ONNX models, every version) plus
    ``droprow``, a model that returns too few rows."""
    root = tmp_path_factory.mktemp("triton-models")
    for model in models_dir.iterdir():
        if (model / "config.pbtxt").is_file():
            (root / model.name).symlink_to(model.resolve(), target_is_directory=True)
    fp32 = pb.TYPE_FP32
    save_model(root / "droprow", DropRow(), model_config("droprow", [(fp32, [2])], [(fp32, [2])]))
    return root


@pytest.fixture(scope="session", name="triton_server")
def triton_server_fixture(triton_repository: Path) -> Iterator[TritonProcess]:
    """A Triton server for the whole session, serving :func:`triton_repository`; stopped for sure."""
    server = TritonProcess(triton_repository)
    try:
        server.start()
        yield server
    finally:
        server.stop()
