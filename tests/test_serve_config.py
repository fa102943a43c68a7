"""`nearline serve` settings that need no server: exposure rules, worker settings and threads."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from nearline.errors import ConfigError
from nearline.serve import WorkerPool, check_exposure, threads_per_worker
from nearline.settings import ApiSettings, ServeSettings, WorkerSettings
from nearline.worker.cli import share_cores


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_keys(host: str) -> None:
    check_exposure(ServeSettings(host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.com"])
def test_other_addresses_need_keys_or_insecure(host: str) -> None:
    with pytest.raises(ConfigError, match="NEARLINE_API_KEYS"):
        check_exposure(ServeSettings(host=host))
    check_exposure(ServeSettings(host=host, api=ApiSettings(api_keys=("k",))))
    check_exposure(ServeSettings(host=host, insecure=True))


def test_cores_are_shared_out_between_worker_processes() -> None:
    assert threads_per_worker(1, cores=2) == 2
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(3, cores=2) == 1
    assert threads_per_worker(2, cores=8) == 4


def test_each_worker_process_gets_its_share_of_the_cores() -> None:
    pool = WorkerPool(ServeSettings(workers=2), "sqlite:///x.db")
    assert pool.settings_for(0).torch_threads == threads_per_worker(2)
    environ: dict[str, str] = {}
    share_cores(pool.settings_for(0).torch_threads, environ)
    assert environ["OMP_NUM_THREADS"] == str(threads_per_worker(2))


def test_an_explicit_omp_num_threads_is_kept() -> None:
    environ = {"OMP_NUM_THREADS": "3"}
    share_cores(threads_per_worker(2), environ)
    assert environ["OMP_NUM_THREADS"] == "3"
    untouched: dict[str, str] = {}
    share_cores(None, untouched)  # python -m workers: torch's own default
    assert untouched == {}


def test_worker_processes_get_the_servers_worker_settings_on_its_queue() -> None:
    worker = WorkerSettings(models=Path("repo"), max_batch=4, lease_s=2.0, model_backend="torch")
    pool = WorkerPool(ServeSettings(workers=2, worker=worker), "sqlite:////data/q.db")
    first, second = pool.settings_for(0), pool.settings_for(1)
    assert (first.broker, first.port, first.name) == ("sqlite:////data/q.db", -1, "serve-worker-0")
    assert second.name == "serve-worker-1"
    assert (first.models, first.max_batch, first.lease_s, first.model_backend) == (
        Path("repo"),
        4,
        2.0,
        "torch",
    )
    # Handed to a spawned process as the object itself: it must survive pickling unchanged.
    assert pickle.loads(pickle.dumps(first)) == first


def test_the_default_broker_is_an_absolute_sqlite_file_in_the_data_dir(tmp_path: Path) -> None:
    url = ServeSettings(data_dir=tmp_path).broker_url
    assert url == f"sqlite:///{tmp_path.resolve() / 'nearline.db'}"
    assert ServeSettings(worker=WorkerSettings(broker="memory://")).broker_url == "memory://"
