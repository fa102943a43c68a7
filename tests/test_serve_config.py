"""`nearline serve` settings: exposure rules, worker settings and threads (no server), and a
pipelines file that cannot be served, refused at start by `nearline serve` and `python -m workers`."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from serving import ROOT, free_port

from nearline.errors import ConfigError
from nearline.serve import check_exposure
from nearline.settings import ApiSettings, ServeSettings, WorkerSettings
from nearline.worker.cli import share_cores
from nearline.worker_pool import WorkerPool, threads_per_worker


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


# --- a configuration that cannot be served is refused at start ---------------------------

IDENTITY = """\
  identity:
    input_schema: {type: object}
    deployment:
      name: v1
      steps:
        - {name: identity, function: "nearline.examples.identity:identity", batch: true}
"""

#: A broken pipeline's step, and what its error message must name besides file, pipeline and step.
BROKEN_STEPS = {
    "missing model": ("{name: classify, model: nosuch, version: 1}", "nosuch"),
    "missing tensor": ("{name: classify, model: digits, version: 1, inputs: {NOPE: pixels}}", "NOPE"),
    "missing function": ('{name: classify, function: "nearline.examples.identity:nope"}', "nope"),
    "missing module": ('{name: classify, function: "nearline_no_such_module:f"}', "nearline_no_such_module"),
    "unloadable model": ("{name: classify, model: garbled, version: 1}", "cannot load TorchScript"),
}


def broken_setup(tmp_path: Path, case: str) -> tuple[Path, Path]:
    """A pipelines file with a good pipeline and a broken one (``case``), and a model repository:
    the example models and ``garbled``, the digits config over a model file that is not TorchScript."""
    models = tmp_path / "models"
    examples = Path(os.environ.get("NEARLINE_MODELS", ROOT / "models"))
    models.mkdir()
    for name in ("digits", "minilm", "topics"):
        (models / name).symlink_to(examples / name)
    (models / "garbled" / "1").mkdir(parents=True)
    config = (examples / "digits" / "config.pbtxt").read_text()
    (models / "garbled" / "config.pbtxt").write_text(config.replace('name: "digits"', 'name: "garbled"'))
    (models / "garbled" / "1" / "model.pt").write_bytes(b"not a TorchScript archive")
    path = tmp_path / "broken-pipelines.yaml"
    first = '{name: first, function: "nearline.examples.identity:identity"}'
    path.write_text(
        "pipelines:\n" + IDENTITY + "  broken:\n    input_schema: {type: object}\n    deployment:\n"
        f"      name: v1\n      steps:\n        - {first}\n        - {BROKEN_STEPS[case][0]}\n"
    )
    return path, models


def assert_refused(result: subprocess.CompletedProcess[str], prog: str, path: Path, missing: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    assert "nearline serving" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: ")]
    assert len(lines) == 1, output
    for part in (str(path), "pipeline 'broken'", "step 2 (classify)", missing):
        assert part in lines[0], (part, lines[0])


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BROKEN_STEPS))
def test_serve_refuses_a_pipelines_file_it_cannot_serve(tmp_path: Path, case: str) -> None:
    path, models = broken_setup(tmp_path, case)
    command = [sys.executable, "-m", "nearline", "serve", "--port", str(free_port())]
    command += ["--data-dir", str(tmp_path / "data"), "--pipelines", str(path), "--models", str(models)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-1500:].decode(errors="replace")
        pytest.fail(f"nearline serve still running 30 s after start with a broken pipeline:\n{tail}")
    assert_refused(result, "nearline serve", path, BROKEN_STEPS[case][1])


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BROKEN_STEPS))
def test_a_worker_refuses_a_pipelines_file_it_cannot_serve(tmp_path: Path, case: str) -> None:
    path, models = broken_setup(tmp_path, case)
    command = [sys.executable, "-m", "workers", "--broker", f"sqlite:///{tmp_path / 'q.db'}", "--port", "-1"]
    command += ["--pipelines", str(path), "--models", str(models)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert_refused(result, "python -m workers", path, BROKEN_STEPS[case][1])
