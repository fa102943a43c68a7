"""Shared fixtures: where the example models are, and real servers that must be there in CI.

The ``nearline serve`` fixtures here are session-scoped because several test files use a server
started the same way, and each start and stop costs seconds (a worker loading torch). Tests that
use them only add jobs of their own and never change the server's settings or stop it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest
import redis
from serving import Server, running_server

from nearline.pipelines.spec import Catalog, load_pipelines

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: For servers whose tests load steps from this repository (``tests/``, ``nearline.examples``).
REPO_ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
#: The API key that :func:`memory_idle_server` requires.
IDLE_KEY = "k1"


def unavailable(name: str, reason: str) -> NoReturn:
    """Skip the test because ``name`` is not usable here, except under CI, where that is a failure.

    The one rule for what CI provides (servers, tools, reference data): a machine without it
    skips the tests that need it, and CI, which must have it, fails them instead.
    """
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: CI must provide {name})")
    pytest.skip(reason)


def require_server(name: str, host: str, port: int) -> None:
    """Skip when a server is not listening, except under CI, where that is a failure."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError as exc:
        unavailable(name, f"{name} is not reachable on {host}:{port}: {exc}")


@contextmanager
def redis_database(db: int) -> Iterator[redis.Redis]:
    """A client of the local Redis's database ``db`` (a test file's own), flushed before and
    after; Redis missing skips, or fails under CI."""
    require_server("Redis", "127.0.0.1", 6379)
    client = redis.Redis(host="127.0.0.1", port=6379, db=db)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


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


@pytest.fixture(scope="session")
def catalog(pipelines_file: Path) -> Catalog:
    """The example pipelines, loaded (schemas only; no models)."""
    return load_pipelines(pipelines_file)


@pytest.fixture(scope="session")
def example_server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    """``nearline serve`` as ``make run`` starts it: SQLite, one worker, the example pipelines
    (test_api.py and test_readme.py)."""
    with running_server(tmp_path_factory.mktemp("example-serve")) as s:
        yield s


@pytest.fixture(scope="session")
def memory_server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    """``nearline serve --broker memory://`` with its worker (test_client.py, test_client_cli.py)."""
    with running_server(tmp_path_factory.mktemp("memory-serve"), "--broker", "memory://", env=REPO_ENV) as s:
        yield s


@pytest.fixture(scope="session")
def memory_idle_server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    """``memory://``, no workers (jobs stay Pending) and the key :data:`IDLE_KEY` required
    (test_client.py, test_client_cli.py)."""
    env = {**REPO_ENV, "NEARLINE_API_KEYS": IDLE_KEY}
    args = ("--broker", "memory://", "--no-workers")
    with running_server(tmp_path_factory.mktemp("memory-idle"), *args, env=env) as s:
        yield s
