"""`nearline serve` settings that need no server: exposure rules and worker threads."""

from __future__ import annotations

import pytest

from nearline.errors import ConfigError
from nearline.serve import ServeConfig, WorkerPool, check_exposure, threads_per_worker


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_keys(host: str) -> None:
    check_exposure(ServeConfig(host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.com"])
def test_other_addresses_need_keys_or_insecure(host: str) -> None:
    with pytest.raises(ConfigError, match="NEARLINE_API_KEYS"):
        check_exposure(ServeConfig(host=host))
    check_exposure(ServeConfig(host=host, api_keys=("k",)))
    check_exposure(ServeConfig(host=host, insecure=True))


def test_cores_are_shared_out_between_worker_processes() -> None:
    assert threads_per_worker(1, cores=2) == 2
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(3, cores=2) == 1
    assert threads_per_worker(2, cores=8) == 4


def test_an_explicit_omp_num_threads_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = WorkerPool(ServeConfig(workers=2), "sqlite:///x.db")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert pool._env()["OMP_NUM_THREADS"] == str(threads_per_worker(2))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert pool._env()["OMP_NUM_THREADS"] == "3"


def test_the_default_broker_is_an_absolute_sqlite_file_in_the_data_dir(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = ServeConfig(data_dir=tmp_path).broker_url
    assert url == f"sqlite:///{tmp_path.resolve() / 'nearline.db'}"
