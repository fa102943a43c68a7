"""Shared fixtures: where the example models are, and real servers that must be there in CI."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_server(name: str, host: str, port: int) -> None:
    """Skip when a server is not listening, except under CI, where that is a failure."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError as exc:
        message = f"{name} is not reachable on {host}:{port}: {exc}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: a server that CI provides must be there)")
        pytest.skip(message)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The example model repository that `make test` builds before pytest runs."""
    path = Path(os.environ.get("NEARLINE_MODELS", ROOT / "models"))
    if not (path / "digits" / "config.pbtxt").exists():
        pytest.fail(f"example models missing under {path}: run `nearline models build --out {path}`")
    return path


@pytest.fixture(scope="session")
def pipelines_file() -> Path:
    """The example pipelines shipped in the package."""
    return ROOT / "nearline" / "examples" / "pipelines.yaml"
