"""The Triton backend against a real Triton Inference Server (pytriton's bundled tritonserver).

Same results as the in-process backends over gRPC and HTTP (TorchScript and ONNX models, every
version the configs serve: the example ``topics`` endpoint's two deployments, through a worker
too), a pipeline mixing backends, readiness checks, the row-count guarantee, and a worker riding
out (or failing clearly through) a Triton outage with no message lost. ``nearline triton serve``
is started as a subprocess.
"""

from __future__ import annotations

import dataclasses
import os
import re
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
from nearline.models.onnx_backend import OnnxBackend
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


def outputs(
    runner: PipelineRunner, pipeline: str, inputs: list[dict[str, Any]], deployment: str | None = None
) -> list[Any]:
    results = runner.run(pipeline, inputs, deployment).results
    failed = [r for r in results if isinstance(r, JobFailure)]
    assert not failed, failed[0].message
    return results


def assert_same(got: list[Any], want: list[Any], key: str) -> None:
    assert [g["label"] for g in got] == [w["label"] for w in want]
    for g, w in zip(got, want, strict=True):
        a, b = (np.array(list(x[key].values()) if isinstance(x[key], dict) else x[key]) for x in (g, w))
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.fixture(scope="module")
def local_runner(models_dir: Path, pipelines_file: Path) -> Iterator[PipelineRunner]:
    """The example pipelines in process, each step on its own backend (torch or ONNX Runtime)."""
    runner = PipelineRunner(load_pipelines(pipelines_file), ModelRepository(models_dir))
    yield runner
    runner.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.triton
@pytest.mark.slow
def test_example_pipelines_on_triton_match_in_process(
    protocol: str,
    triton_server: TritonProcess,
    local_runner: PipelineRunner,
    models_dir: Path,
    pipelines_file: Path,
) -> None:
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    catalog = load_pipelines(pipelines_file)
    runner = PipelineRunner(catalog, ModelRepository(models_dir), backend="triton", triton_url=url)
    try:
        runner.warm()  # every deployment's models: minilm, minilm_onnx, topics 1 and 2 on Triton
        texts = [{"text": t} for t in TEXTS]
        assert_same(
            outputs(runner, "digits", DIGITS), outputs(local_runner, "digits", DIGITS), "probabilities"
        )
        for deployment in ("v1", "v2"):
            want = outputs(local_runner, "topics", texts, deployment)
            assert_same(outputs(runner, "topics", texts, deployment), want, "scores")
    finally:
        runner.close()


def inference_count(server: TritonProcess, model: str, version: int | None = None) -> int:
    path = f"/v2/models/{model}" + ("" if version is None else f"/versions/{version}") + "/stats"
    stats = httpx.get(f"{server.http_url}{path}", timeout=5).json()
    return int(sum(s["inference_count"] for s in stats["model_stats"]))


@pytest.mark.triton
@pytest.mark.slow
def test_mixed_backends_in_one_pipeline_match_torch(
    triton_server: TritonProcess, local_runner: PipelineRunner, models_dir: Path
) -> None:
    texts = [{"text": t} for t in TEXTS]
    want = outputs(local_runner, "topics", texts)
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


# -- ONNX models and several versions ---------------------------------------------------------


@pytest.mark.triton
@pytest.mark.slow
def test_the_whole_example_repository_is_served_every_version(
    triton_server: TritonProcess, models_dir: Path
) -> None:
    repo = ModelRepository(models_dir)
    assert {name: triton_server.served[name] for name in repo.names()} == {
        name: tuple(repo.served_versions(name)) for name in repo.names()
    }
    assert triton_server.served["topics"] == (1, 2)
    for version in (1, 2):
        ready = f"{triton_server.http_url}/v2/models/topics/versions/{version}/ready"
        assert httpx.get(ready, timeout=5).status_code == 200


@pytest.mark.triton
@pytest.mark.slow
def test_each_version_answers_with_its_own_model(triton_server: TritonProcess, models_dir: Path) -> None:
    repo = ModelRepository(models_dir)
    x = np.random.default_rng(2).normal(size=(6, 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    backend = TritonBackend(repo, triton_server.grpc_url)
    try:
        got = {v: backend.infer("topics", v, {"INPUT__0": x})["OUTPUT__0"] for v in (1, 2)}
    finally:
        backend.close()
    local = TorchBackend(repo)
    for version, scores in got.items():
        want = local.infer("topics", version, {"INPUT__0": x})["OUTPUT__0"]
        np.testing.assert_allclose(scores, want, atol=1e-6)
    assert not np.allclose(got[1], got[2], atol=1e-3), "topics 1 and 2 are different heads"


def token_batch(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    ids = rng.integers(1000, 20000, size=(n, 12)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[n // 2 :, 8:] = 0  # padded rows too
    return {"INPUT__0": ids, "INPUT__1": mask}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.triton
@pytest.mark.slow
def test_onnx_models_on_triton_equal_onnx_runtime_in_process(
    protocol: str, triton_server: TritonProcess, models_dir: Path
) -> None:
    repo = ModelRepository(models_dir)
    rng = np.random.default_rng(4)
    cases = {
        ("digits_onnx", 1): {"INPUT__0": rng.uniform(0, 16, size=(20, 64)).astype(np.float32)},
        ("topics_onnx", 1): {"INPUT__0": rng.normal(size=(9, 384)).astype(np.float32)},
    }
    for version in repo.served_versions("minilm_onnx"):  # 2, the int8 one, when the build kept it
        cases[("minilm_onnx", version)] = token_batch(7)
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    backend, local = TritonBackend(repo, url), OnnxBackend(repo)
    try:
        for (model, version), inputs in cases.items():
            backend.load(model, version)
            got = backend.infer(model, version, inputs)["OUTPUT__0"]
            want = local.infer(model, version, inputs)["OUTPUT__0"]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"{model} v{version}")
    finally:
        backend.close()
        local.close()


@pytest.mark.triton
@pytest.mark.slow
def test_a_worker_on_triton_runs_both_deployments_of_the_example_endpoint(
    triton_server: TritonProcess, local_runner: PipelineRunner, models_dir: Path, pipelines_file: Path
) -> None:
    """What ``python -m workers --model-backend triton`` does: every step of both ``topics``
    deployments on Triton (v1: minilm + topics 1; v2: minilm_onnx + topics 2)."""
    broker = MemoryBroker()
    runner = PipelineRunner(
        load_pipelines(pipelines_file),
        ModelRepository(models_dir),
        backend="triton",
        triton_url=triton_server.grpc_url,
    )
    runner.warm()
    worker = Worker(broker, runner, config=WorkerConfig(max_batch=8, max_wait_ms=20, lease_s=60))
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    counted = [("minilm", 1), ("minilm_onnx", 1), ("topics", 1), ("topics", 2)]
    before = {m: inference_count(triton_server, *m) for m in counted}
    thread.start()
    try:
        for deployment in ("v1", "v2"):
            for i, text in enumerate(TEXTS):
                job = RequestMessage(f"{deployment}-{i}", "topics", {"text": text}, time.time())
                job = dataclasses.replace(job, deployment=deployment)
                broker.send(REQUEST_QUEUE, job.to_json(), message_id=job.id)
        got = {r.id: r for r in collect(broker, 2 * len(TEXTS), 60)}
    finally:
        stop.set()
        thread.join(15)
        runner.close()
    assert len(got) == 2 * len(TEXTS), "every job exactly one result"
    assert {r.status for r in got.values()} == {"Completed"}, [r.error for r in got.values() if r.error]
    for deployment in ("v1", "v2"):
        want = outputs(local_runner, "topics", [{"text": t} for t in TEXTS], deployment)
        assert_same([got[f"{deployment}-{i}"].output for i in range(len(TEXTS))], want, "scores")
    ran = {m: inference_count(triton_server, *m) - before[m] for m in counted}
    assert ran == dict.fromkeys(counted, len(TEXTS)), "v1 on minilm + topics 1, v2 on minilm_onnx + topics 2"


@pytest.mark.triton
@pytest.mark.slow
def test_version_policies_and_instance_counts_are_served_as_configured(
    models_dir: Path, tmp_path: Path
) -> None:
    """Without ``version_policy`` Triton's default serves the latest version only, and a worker
    asking for another is told why; with two instances per version each version's requests still
    reach that version's model (the instance numbering of nearline/triton/versions.py)."""
    shutil.copytree(models_dir / "topics", tmp_path / "topics")
    config = tmp_path / "topics" / "config.pbtxt"
    config.write_text(re.sub(r"version_policy \{\s*all \{\s*\}\s*\}", "", config.read_text()))
    shutil.copytree(models_dir / "topics", tmp_path / "twice")
    config = tmp_path / "twice" / "config.pbtxt"
    text = config.read_text().replace('name: "topics"', 'name: "twice"')
    config.write_text(re.sub(r"instance_group \{\s*count: 1\s*\}", "instance_group { count: 2 }", text))
    repo = ModelRepository(tmp_path)
    assert repo.served_versions("topics") == [2]
    assert [g.count for g in repo.model("twice").config.instance_group] == [2]
    x = np.random.default_rng(5).normal(size=(4, 384)).astype(np.float32)
    server = TritonProcess(tmp_path)
    try:
        server.start()
        assert server.served == {"topics": (2,), "twice": (1, 2)}
        backend = TritonBackend(repo, f"{server.grpc_url}?retry_s=0.5")
        try:
            backend.load("topics", 2)
            with pytest.raises(ConfigError, match=r"version 1 is not .*serves versions \[2\], not 1"):
                backend.load("topics", 1)
            # Concurrent requests, so that both instances of each version take some.
            jobs = [(version, i) for version in (1, 2) for i in range(8)]
            got: dict[tuple[int, int], np.ndarray] = {}

            def call(version: int, i: int) -> None:
                got[version, i] = backend.infer("twice", version, {"INPUT__0": x})["OUTPUT__0"]

            threads = [threading.Thread(target=call, args=job) for job in jobs]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert sorted(got) == sorted(jobs)
            local = TorchBackend(repo)
            for (version, i), scores in got.items():
                want = local.infer("twice", version, {"INPUT__0": x})["OUTPUT__0"]
                # float32 in two processes, two instances: a few ulps apart (CI saw 2e-6 on 0.79);
                # topics' two versions differ by more than 1e-3 (test above)
                np.testing.assert_allclose(scores, want, atol=1e-5, err_msg=f"twice v{version} #{i}")
        finally:
            backend.close()
    finally:
        server.stop()


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


@pytest.fixture(scope="module")
def outage_triton_process(models_dir: Path) -> Iterator[TritonProcess]:
    """A Triton of these tests' own (digits only, separate ports), stopped for sure at the end."""
    server = TritonProcess(models_dir, models=["digits"])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def outage_triton(outage_triton_process: TritonProcess) -> TritonProcess:
    """That Triton, running, for a test to stop and restart. Shared: a test that leaves it
    running (stopped, then started again) saves the next one a start of several seconds."""
    if not outage_triton_process.running:
        outage_triton_process.start()
    return outage_triton_process


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
