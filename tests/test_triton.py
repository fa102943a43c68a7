"""The Triton backend against a real Triton Inference Server (pytriton's bundled tritonserver).

Same results as the in-process torch backend over gRPC and HTTP, a pipeline mixing backends,
readiness checks, the row-count guarantee, and a worker riding out (or failing clearly through)
a Triton outage with no message lost. ``nearline triton serve`` is started as a subprocess.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits
from triton_fixture import (  # noqa: F401 - the fixtures register under their names (see that module)
    TritonProcess,
    free_ports,
    spy_on_retries,
    triton_repository_fixture,
    triton_server_fixture,
)
from waiting import wait_until

from nearline.brokers.memory import MemoryBroker
from nearline.constants import REQUEST_QUEUE, RESPONSE_QUEUE
from nearline.errors import ConfigError, JobFailure, ModelError
from nearline.messages import RequestMessage, ResultMessage
from nearline.models.repository import ModelRepository
from nearline.models.torch_backend import TorchBackend
from nearline.models.triton_backend import TritonBackend
from nearline.models.triton_client import DEFAULT_RETRY_S, DEFAULT_TIMEOUT_S, TritonTarget
from nearline.pipelines.runner import PipelineRunner
from nearline.pipelines.spec import Catalog, load_pipelines
from nearline.worker import Worker, WorkerConfig

ROOT = Path(__file__).resolve().parent.parent
MIXED = Path(__file__).parent / "data" / "mixed_pipelines.yaml"
TEXTS = [
    "The striker scored twice in the cup final.",
    "Parliament passed the budget after a long debate.",
    "A new vaccine cut infections by half in the trial.",
    "The startup unveiled a faster and cheaper chip.",
    "The film won best picture at the awards.",
    "Shares fell after the bank missed its earnings forecast.",
    "Astronomers found water on a distant exoplanet.",
    "ok",
]
DIGITS = [{"pixels": row.tolist()} for row in load_digits().data[:16]]


# -- URL and options (no server) -------------------------------------------------------------


def test_url_forms_and_options() -> None:
    assert TritonTarget.parse("grpc://triton:8001") == TritonTarget(
        "grpc", "triton:8001", DEFAULT_TIMEOUT_S, DEFAULT_RETRY_S
    )
    assert TritonTarget.parse("http://127.0.0.1?timeout_s=2.5&retry_s=0").address == "127.0.0.1:8000"
    t = TritonTarget.parse("http://h:9?timeout_s=2.5&retry_s=0", retry_s=4)
    assert (t.url, t.timeout_s, t.retry_s) == ("http://h:9", 2.5, 4)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("triton:8001", "expected grpc://host:port"),
        ("https://h:8000", "expected grpc://host:port"),
        ("grpc://h:8001?retries=3", "unknown option 'retries'"),
        ("grpc://h:8001?timeout_s=soon", "timeout_s must be a number"),
        ("grpc://h:8001?timeout_s=0", "timeout_s must be > 0"),
    ],
)
def test_bad_urls_are_config_errors(url: str, error: str, models_dir: Path) -> None:
    with pytest.raises(ConfigError, match=error):
        TritonBackend(ModelRepository(models_dir), url)


# -- same results as torch -------------------------------------------------------------------


def outputs(runner: PipelineRunner, pipeline: str, inputs: list[dict[str, Any]]) -> list[Any]:
    results = runner.run(pipeline, inputs).results
    failed = [r for r in results if isinstance(r, JobFailure)]
    assert not failed, failed[0].message
    return results


def assert_same(got: list[Any], want: list[Any], key: str) -> None:
    assert [g["label"] for g in got] == [w["label"] for w in want]
    for g, w in zip(got, want, strict=True):
        a, b = (np.array(list(x[key].values()) if isinstance(x[key], dict) else x[key]) for x in (g, w))
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.fixture(scope="module")
def torch_runner(models_dir: Path, pipelines_file: Path) -> Iterator[PipelineRunner]:
    runner = PipelineRunner(load_pipelines(pipelines_file), ModelRepository(models_dir), backend="torch")
    yield runner
    runner.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.triton
@pytest.mark.slow
def test_example_pipelines_on_triton_match_torch(
    protocol: str, triton_server: TritonProcess, torch_runner: PipelineRunner, models_dir: Path
) -> None:
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    runner = PipelineRunner(
        torch_runner.catalog, ModelRepository(models_dir), backend="triton", triton_url=url
    )
    try:
        runner.warm()
        texts = [{"text": t} for t in TEXTS]
        assert_same(
            outputs(runner, "digits", DIGITS), outputs(torch_runner, "digits", DIGITS), "probabilities"
        )
        assert_same(outputs(runner, "topics", texts), outputs(torch_runner, "topics", texts), "scores")
    finally:
        runner.close()


def inference_count(server: TritonProcess, model: str) -> int:
    stats = httpx.get(f"{server.http_url}/v2/models/{model}/stats", timeout=5).json()
    return int(sum(s["inference_count"] for s in stats["model_stats"]))


@pytest.mark.triton
@pytest.mark.slow
def test_mixed_backends_in_one_pipeline_match_torch(
    triton_server: TritonProcess, torch_runner: PipelineRunner, models_dir: Path
) -> None:
    texts = [{"text": t} for t in TEXTS]
    want = outputs(torch_runner, "topics", texts)
    mixed = PipelineRunner(
        load_pipelines(MIXED), ModelRepository(models_dir), triton_url=triton_server.grpc_url
    )
    try:
        mixed.warm()
        for pipeline, on_triton in (("topics", "topics"), ("topics-triton-embed", "minilm")):
            before = {m: inference_count(triton_server, m) for m in ("minilm", "topics")}
            assert_same(outputs(mixed, pipeline, texts), want, "scores")
            after = {m: inference_count(triton_server, m) for m in ("minilm", "topics")}
            assert {m: after[m] - before[m] for m in after} == {
                m: len(texts) if m == on_triton else 0 for m in after
            }, f"{pipeline}: only {on_triton} should run on Triton"
    finally:
        mixed.close()


@pytest.mark.triton
@pytest.mark.slow
def test_a_batch_over_max_batch_size_goes_as_concurrent_requests(
    triton_server: TritonProcess, triton_repository: Path
) -> None:
    repo = ModelRepository(triton_repository)
    x = np.random.default_rng(0).uniform(0, 16, size=(150, 64)).astype(np.float32)
    backend = TritonBackend(repo, triton_server.grpc_url)
    before = inference_count(triton_server, "digits")
    try:
        got = backend.infer("digits", 1, {"INPUT__0": x})["OUTPUT__0"]
    finally:
        backend.close()
    want = TorchBackend(repo).infer("digits", 1, {"INPUT__0": x})["OUTPUT__0"]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert inference_count(triton_server, "digits") - before == 150


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.triton
@pytest.mark.slow
def test_threads_share_one_backend(protocol: str, triton_server: TritonProcess, models_dir: Path) -> None:
    repo = ModelRepository(models_dir)
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    backend = TritonBackend(repo, url)
    rng = np.random.default_rng(1)
    batches = [rng.uniform(0, 16, size=(int(rng.integers(1, 40)), 64)).astype(np.float32) for _ in range(24)]
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        got[i] = backend.infer("digits", 1, {"INPUT__0": batches[i]})["OUTPUT__0"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        backend.close()
    local = TorchBackend(repo)
    assert sorted(got) == list(range(len(batches)))
    for i, x in enumerate(batches):
        np.testing.assert_allclose(got[i], local.infer("digits", 1, {"INPUT__0": x})["OUTPUT__0"], atol=1e-5)


# -- guarantees and readiness ----------------------------------------------------------------


@pytest.mark.triton
@pytest.mark.slow
def test_wrong_row_count_from_the_server_is_a_model_error(
    triton_server: TritonProcess, triton_repository: Path
) -> None:
    backend = TritonBackend(ModelRepository(triton_repository), triton_server.http_url)
    try:
        with pytest.raises(ModelError, match="model 'droprow' output OUTPUT__0 has 2 rows for a batch of 3"):
            backend.infer("droprow", 1, {"INPUT__0": np.zeros((3, 2), dtype=np.float32)})
    finally:
        backend.close()


@pytest.mark.triton
@pytest.mark.slow
def test_load_names_a_model_the_server_does_not_serve(
    triton_server: TritonProcess, models_dir: Path, tmp_path: Path
) -> None:
    shutil.copytree(models_dir / "digits", tmp_path / "ghost")
    config = tmp_path / "ghost" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "digits"', 'name: "ghost"'))
    backend = TritonBackend(ModelRepository(tmp_path), f"{triton_server.grpc_url}?retry_s=0.5")
    try:
        with pytest.raises(ConfigError) as err:
            backend.load("ghost", 1)
    finally:
        backend.close()
    assert "model 'ghost' version 1 is not available" in err.value.message
    assert triton_server.grpc_url in err.value.message


@pytest.mark.triton
@pytest.mark.slow
def test_load_refuses_a_model_served_with_other_tensors(
    triton_server: TritonProcess, models_dir: Path, tmp_path: Path
) -> None:
    shutil.copytree(models_dir / "digits", tmp_path / "digits")
    config = tmp_path / "digits" / "config.pbtxt"
    config.write_text(config.read_text().replace("TYPE_FP32", "TYPE_FP64", 1))
    backend = TritonBackend(ModelRepository(tmp_path), triton_server.http_url)
    try:
        with pytest.raises(ConfigError, match=r"served with tensors .*INPUT__0.*FP32.*declares.*FP64"):
            backend.load("digits", 1)
    finally:
        backend.close()


# -- a Triton outage under a worker ----------------------------------------------------------


@pytest.fixture
def outage_triton(models_dir: Path) -> Iterator[TritonProcess]:
    """A Triton of this test's own (digits only, separate ports) that the test stops and restarts."""
    server = TritonProcess(models_dir, models=["digits"])
    try:
        server.start()
        yield server
    finally:
        server.stop()


def start_worker(
    broker: MemoryBroker, pipelines_file: Path, models_dir: Path, url: str
) -> tuple[PipelineRunner, threading.Event, threading.Thread]:
    """A worker thread running the digits pipeline on Triton at ``url`` (models checked first)."""
    catalog = Catalog([load_pipelines(pipelines_file).get("digits")])
    runner = PipelineRunner(catalog, ModelRepository(models_dir), backend="triton", triton_url=url)
    runner.warm()
    config = WorkerConfig(max_batch=8, max_wait_ms=20, lease_s=60, idle_wait_s=0.05)
    worker = Worker(broker, runner, config=config)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    return runner, stop, thread


def send_digits(broker: MemoryBroker, prefix: str, n: int) -> list[str]:
    ids = [f"{prefix}{i}" for i in range(n)]
    for job_id, item in zip(ids, DIGITS, strict=False):
        broker.send(
            REQUEST_QUEUE, RequestMessage(job_id, "digits", item, time.time()).to_json(), message_id=job_id
        )
    return ids


def collect(broker: MemoryBroker, expect: int, timeout: float, linger: float = 0.3) -> list[ResultMessage]:
    """Every result message until ``expect`` are in (bounded), then ``linger`` s more for duplicates."""
    got: list[ResultMessage] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for d in broker.receive(RESPONSE_QUEUE, 100, 0.1):
            got.append(ResultMessage.from_json(d.body))
            broker.complete(d)
        if len(got) >= expect:
            end = min(end, time.monotonic() + linger)
    return got


@pytest.mark.triton
@pytest.mark.slow
def test_queued_jobs_complete_when_triton_returns_within_the_retry_window(
    outage_triton: TritonProcess, pipelines_file: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = MemoryBroker()
    url = f"{outage_triton.grpc_url}?retry_s=30"
    runner, stop, thread = start_worker(broker, pipelines_file, models_dir, url)
    try:
        send_digits(broker, "before", 4)
        assert {r.status for r in collect(broker, 4, 20)} == {"Completed"}
        outage_triton.stop()
        retried = spy_on_retries(monkeypatch)
        ids = send_digits(broker, "during", 12)
        # The outage: the worker holds the jobs and retries (five tries down, backoff growing).
        wait_until(lambda: len(retried) >= 5, 20, "the worker to meet the outage and retry")
        assert collect(broker, 0, 0.1, 0) == [], "nothing may settle while Triton is down"
        outage_triton.start()
        got = collect(broker, len(ids), 30)
    finally:
        stop.set()
        thread.join(15)
        runner.close()
    assert sorted(r.id for r in got) == sorted(ids), "every job exactly one result"
    assert {r.status for r in got} == {"Completed"}, [r.error for r in got if r.error]
    assert broker.depth(REQUEST_QUEUE) == 0


@pytest.mark.triton
@pytest.mark.slow
def test_queued_jobs_fail_with_a_clear_model_error_when_triton_stays_down(
    outage_triton: TritonProcess, pipelines_file: Path, models_dir: Path
) -> None:
    broker = MemoryBroker()
    url = f"{outage_triton.http_url}?retry_s=1"
    runner, stop, thread = start_worker(broker, pipelines_file, models_dir, url)
    try:
        outage_triton.stop()
        ids = send_digits(broker, "job", 10)
        got = collect(broker, len(ids), 20)
    finally:
        stop.set()
        thread.join(15)
        runner.close()
    assert sorted(r.id for r in got) == sorted(ids), "every job exactly one result"
    assert {r.status for r in got} == {"Failed"}
    for r in got:
        assert r.error is not None and r.error["code"] == "ModelError"
        assert (
            f"Triton at {outage_triton.http_url}: model 'digits' version 1 unavailable" in r.error["message"]
        )
    assert broker.depth(REQUEST_QUEUE) == 0


# -- nearline triton serve -------------------------------------------------------------------


@pytest.mark.triton
@pytest.mark.slow
def test_nearline_triton_serve_serves_and_stops_on_sigterm(models_dir: Path, tmp_path: Path) -> None:
    http, grpc, metrics = free_ports(3)
    cmd = [sys.executable, "-m", "nearline", "triton", "serve", "--models", str(models_dir)]
    cmd += ["--only", "digits", "--http-port", str(http), "--grpc-port", str(grpc)]
    cmd += ["--metrics-port", str(metrics)]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ.copy())

    def serving() -> bool:
        assert proc.poll() is None, log.read_text()
        return f"grpc://127.0.0.1:{grpc}" in log.read_text()

    try:
        wait_until(serving, 60, lambda: f"the server's gRPC URL in its log:\n{log.read_text()}", interval=0.1)
        backend = TritonBackend(ModelRepository(models_dir), f"grpc://127.0.0.1:{grpc}")
        try:
            backend.load("digits", 1)
            assert backend.infer("digits", 1, {"INPUT__0": np.zeros((2, 64))})["OUTPUT__0"].shape == (2, 10)
        finally:
            backend.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "stopped" in log.read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{http}/v2/health/live", timeout=2)
