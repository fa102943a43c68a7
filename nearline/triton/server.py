"""A real Triton Inference Server on this machine, serving the model repository through pytriton.

``nearline triton serve`` (and :func:`serve_repository`, which tests and benchmarks use) starts
the ``tritonserver`` binary that ``nvidia-pytriton`` bundles: the Triton path of the workers runs
on a laptop with no container and no GPU. For every model, every version its ``version_policy``
serves (``ModelRepository.served_versions``) is loaded in *this* process (TorchScript by the
in-process torch backend, ONNX by the in-process ONNX Runtime backend) and bound with the names,
dtypes, dims, ``max_batch_size`` and dynamic batcher of its ``config.pbtxt``
(:mod:`nearline.triton.binding`); Triton reaches them through its Python backend stub, so
clients see Triton's own KServe v2 HTTP/gRPC API. Loopback unless told otherwise. See
docs/triton.md.

* ``LD_LIBRARY_PATH``: the stub links ``libpython``; on an interpreter whose libpython is not the
  system's (pyenv here) it must find this one. pytriton builds the server's environment from
  ``os.environ`` when it starts it, so the interpreter's ``LIBDIR`` is put there while it starts.
* ``exit_timeout_secs=0`` (stops in ~1 s, not ~4 s); always stopped in a ``finally``.
* The ``/tmp/folderXXXXXX`` model copies Triton leaves behind are removed (this server's only).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

from nearline import constants as c
from nearline.addresses import is_loopback
from nearline.errors import ConfigError, NearlineError
from nearline.models.backend import ModelBackend
from nearline.models.onnx_backend import OnnxBackend
from nearline.models.repository import ModelRepository
from nearline.models.torch_backend import TorchBackend
from nearline.settings import TritonSettings, add_flags, with_flags
from nearline.triton.binding import bind_model

PROG = "nearline triton serve"
#: Where Triton writes the model copies it leaves behind when stopped at once.
_TRITON_TMP = Path("/tmp")


class TritonStartError(NearlineError):
    """The local Triton server could not start; the message says why (and its log's tail)."""

    code = "TritonStartError"


@dataclass(frozen=True)
class LocalTriton:
    """A running local Triton server: where it listens and what it serves.

    Attributes:
        host: The address it is bound to.
        http_port: The KServe v2 HTTP port.
        grpc_port: The KServe v2 gRPC port.
        metrics_port: The Prometheus metrics port.
        models: Model name → the versions served, ascending.
        log_file: The ``tritonserver`` log (deleted when the server stops).
    """

    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    models: dict[str, tuple[int, ...]] = field(default_factory=dict)
    log_file: Path | None = None
    _triton: Triton | None = field(default=None, repr=False, compare=False)

    @property
    def grpc_url(self) -> str:
        """The URL workers take with ``--triton-url`` for gRPC (the default protocol)."""
        return f"grpc://{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """The URL workers take with ``--triton-url`` for HTTP."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """Triton's Prometheus endpoint."""
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def is_alive(self) -> bool:
        """True while ``tritonserver`` and every model's stub are running."""
        return self._triton is not None and self._triton.is_alive()


@contextlib.contextmanager
def serve_repository(
    models_dir: str | Path,
    *,
    host: str = c.TRITON_HOST,
    http_port: int = c.TRITON_HTTP_PORT,
    grpc_port: int = c.TRITON_GRPC_PORT,
    metrics_port: int = c.TRITON_METRICS_PORT,
    models: Sequence[str] | None = None,
) -> Iterator[LocalTriton]:
    """Serve the repository's models with a real Triton server while the block runs.

    Args:
        models_dir: The model repository (Triton layout).
        host: Address to bind every endpoint to.
        http_port: HTTP port.
        grpc_port: gRPC port.
        metrics_port: Prometheus metrics port.
        models: Serve only these models (default: every model in the repository).

    Yields:
        The running server; ready (every model loaded) when the block starts.

    Raises:
        ConfigError: The repository, a model or a port is unusable.
        TritonStartError: ``tritonserver`` did not come up.
    """
    repository = ModelRepository(models_dir)
    names = list(models) if models is not None else repository.names()
    if not names:
        raise ConfigError(f"model repository {repository.root}: no models to serve")
    for port in (http_port, grpc_port, metrics_port):
        _check_port_free(host, port)
    scratch = Path(tempfile.mkdtemp(prefix="nearline-triton-"))
    workspace = scratch / "workspace"
    log_file = scratch / "tritonserver.log"
    config = _triton_config(host, http_port, grpc_port, metrics_port, log_file)
    # On loopback nothing is restricted (the statistics endpoint answers without a token); on any
    # other address pytriton's default holds: model-repository, statistics... need its random token.
    security = TritonSecurityConfig(restricted_endpoints=[]) if is_loopback(host) else TritonSecurityConfig()
    backends: dict[str, ModelBackend] = {
        "pytorch_libtorch": TorchBackend(repository),
        "onnxruntime_onnx": OnnxBackend(repository),
    }
    triton: Triton | None = None
    try:
        triton = Triton(config=config, workspace=workspace, security_config=security)
        served = {name: bind_model(triton, repository, backends, name) for name in names}
        with libpython_on_library_path():
            try:
                triton.run()
            except Exception as exc:  # pytriton raises TimeoutError, RuntimeError, its own errors
                raise TritonStartError(f"Triton did not start: {exc}{_log_tail(log_file)}") from None
        yield LocalTriton(host, http_port, grpc_port, metrics_port, served, log_file, triton)
    finally:
        if triton is not None:
            triton.stop()
        for backend in backends.values():
            backend.close()
        _remove_model_copies(workspace)
        shutil.rmtree(scratch, ignore_errors=True)


def _triton_config(
    host: str, http_port: int, grpc_port: int, metrics_port: int, log_file: Path
) -> TritonConfig:
    """Every endpoint on ``host``; stopped at once (``exit_timeout_secs=0``: ~1 s, not ~4 s)."""
    return TritonConfig(
        http_address=host,
        http_port=http_port,
        grpc_address=host,
        grpc_port=grpc_port,
        metrics_address=host,
        metrics_port=metrics_port,
        exit_timeout_secs=0,
        log_file=log_file,
    )


@contextlib.contextmanager
def libpython_on_library_path() -> Iterator[None]:
    """Put this interpreter's ``LIBDIR`` first on ``LD_LIBRARY_PATH`` while the block runs.

    Child processes started in the block (``tritonserver`` and, through it, the Python backend
    stubs) then load this interpreter's ``libpython`` rather than the system's.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    before = os.environ.get("LD_LIBRARY_PATH")
    parts = [p for p in (before or "").split(os.pathsep) if p]
    if libdir and libdir not in parts:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *parts])
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = before


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine for a listener
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot serve Triton on {host}:{port}: {exc.strerror}") from None


def _log_tail(log_file: Path, lines: int = 15) -> str:
    try:
        tail = log_file.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n  tritonserver log:\n    " + "\n    ".join(tail) if tail else ""


def _remove_model_copies(workspace: Path) -> None:
    """Remove the ``/tmp/folderXXXXXX`` model copies Triton made for this server (and only those)."""
    marker = str(workspace.resolve())
    for folder in _TRITON_TMP.glob("folder??????"):
        config = folder / "config.pbtxt"
        with contextlib.suppress(OSError):
            if folder.is_dir() and marker in config.read_text(errors="replace"):
                shutil.rmtree(folder, ignore_errors=True)


def triton_settings(
    argv: list[str] | None = None, environ: Mapping[str, str] | None = None
) -> TritonSettings:
    """``nearline triton serve``'s settings: the environment's, with the flags in ``argv`` over them."""
    settings = TritonSettings.from_env(environ)
    parser = argparse.ArgumentParser(
        prog=PROG, description="Serve the model repository with a local Triton server."
    )
    add_flags(parser, settings)
    return with_flags(settings, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    """``nearline triton serve [--models DIR] [--host H] [--http-port P] [--grpc-port P] [--metrics-port P]``.

    Serves until SIGINT or SIGTERM, then stops Triton and exits 0; exits 1 when Triton dies or
    cannot start, 2 on a usage error (:func:`nearline.errors.exit_code`).
    """
    from nearline.cli import fail

    try:
        return _serve_until_stopped(triton_settings(argv))
    except (NearlineError, OSError, KeyboardInterrupt) as exc:
        return fail(PROG, exc)


def _serve_until_stopped(settings: TritonSettings) -> int:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with serve_repository(
        settings.models,
        host=settings.host,
        http_port=settings.http_port,
        grpc_port=settings.grpc_port,
        metrics_port=settings.metrics_port,
        models=settings.only,
    ) as server:
        _print_banner(server, settings.models)
        while not stop.wait(1.0):
            if not server.is_alive():
                print(f"{PROG}: tritonserver exited", file=sys.stderr)
                return 1
    print(f"{PROG}: stopped", flush=True)
    return 0


def _print_banner(server: LocalTriton, models_dir: Path) -> None:
    served = ", ".join(f"{name} v{','.join(map(str, versions))}" for name, versions in server.models.items())
    print(
        f"nearline triton serve: {served} from {models_dir}\n"
        f"  gRPC     {server.grpc_url}\n"
        f"  HTTP     {server.http_url}\n"
        f"  metrics  {server.metrics_url}\n"
        f"  workers: python -m workers --model-backend triton --triton-url {server.grpc_url}\n"
        "(Ctrl+C to stop)",
        flush=True,
    )
