"""Start a real ``nearline serve`` subprocess on a free port and wait until it answers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


#: A pipelines file with the example ``identity`` pipeline only. A server given it (``--pipelines``)
#: starts its workers without torch or models: ~2 s less to start and ~0.5 s less to stop than with
#: the example pipelines, for tests that only need a job to run.
IDENTITY_ONLY = """\
pipelines:
  identity:
    input_schema: {type: object}
    deployment:
      name: v1
      steps:
        - name: identity
          function: "nearline.examples.identity:identity"
          batch: true
"""


def identity_pipelines(folder: Path) -> Path:
    """Write :data:`IDENTITY_ONLY` into ``folder`` (made if missing); return the file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "identity-pipelines.yaml"
    path.write_text(IDENTITY_ONLY)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running server: its base URL, process and log file."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    data_dir: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the server (its workers get SIGTERM through PR_SET_PDEATHSIG)."""
        self.proc.kill()
        self.proc.wait(timeout=10)


def start_server(
    data_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
    ready_timeout: float = 60.0,
    cwd: Path | None = None,
) -> Server:
    """Start ``nearline serve --port P --data-dir D *args``; wait for /api/health.

    ``cwd``: run it there (a project folder) with no ``--models``: the project's own. Else it
    runs in ``data_dir`` with the example models.
    """
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "nearline", "serve", "--port", str(port), "--data-dir", str(data_dir), *args]
    if "--models" not in args and cwd is None:
        cmd += ["--models", os.environ.get("NEARLINE_MODELS", str(ROOT / "models"))]
    full_env = {**os.environ, **(env or {})}
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=cwd or data_dir)
    server = Server(f"http://127.0.0.1:{port}", proc, log, data_dir)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nearline serve exited with {proc.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/api/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"nearline serve did not become healthy in {ready_timeout} s:\n{server.output()}")


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@contextmanager
def running_server(data_dir: Path, *args: str, **kw: object) -> Iterator[Server]:
    server = start_server(data_dir, *args, **kw)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        stop_server(server)


@contextmanager
def project_server(folder: Path, pipelines: str, steps: Path) -> Iterator[Server]:
    """``nearline serve`` of a project in ``folder``: a ``pipelines.yaml`` of ``pipelines`` whose
    function steps live in the module ``steps`` (copied beside it), and no models."""
    (folder / "pipelines.yaml").write_text(pipelines)
    shutil.copy(steps, folder / steps.name)
    (folder / "models").mkdir()  # these steps use no model
    args = ("--pipelines", str(folder / "pipelines.yaml"), "--models", str(folder / "models"))
    with running_server(folder / "data", *args) as server:
        yield server
