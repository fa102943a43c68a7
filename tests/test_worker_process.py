"""`python -m workers` as a process: SIGKILL mid-batch loses nothing, SIGTERM drains, probes answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serving import free_port

from nearline.brokers.sqlite import SqliteBroker
from nearline.constants import REQUEST_QUEUE
from nearline.jobs import JobRecord, JobStatus
from nearline.lifecycle import Lifecycle
from nearline.messages import RequestMessage
from nearline.store.sqlite import SqliteStore

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
PIPELINES = TESTS / "data" / "worker_pipelines.yaml"


def start_worker(url: str, tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [
        sys.executable,
        "-m",
        "workers",
        "--broker",
        url,
        "--models",
        str(tmp_path),
        "--pipelines",
        str(PIPELINES),
        *args,
    ]
    with (tmp_path / "worker.log").open("ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture
def system(tmp_path: Path) -> Iterator[tuple[str, SqliteBroker, SqliteStore]]:
    url = f"sqlite:///{tmp_path / 'nearline.db'}"
    broker, store = SqliteBroker(url), SqliteStore(url)
    life = Lifecycle(broker, store)
    life.start()
    yield url, broker, store
    life.stop()
    broker.close()
    store.close()


def submit(broker: SqliteBroker, store: SqliteStore, job_id: str, pipeline: str, input: object) -> None:
    store.create(JobRecord(job_id, pipeline, input, created=time.time(), updated=time.time()))
    broker.send(
        REQUEST_QUEUE, RequestMessage(job_id, pipeline, input, time.time()).to_json(), message_id=job_id
    )


def poll(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_sigkill_mid_batch_then_a_second_worker_finishes_everything(system, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, broker, store = system
    ids = [f"job{i:03d}" for i in range(40)]
    for job_id in ids:
        submit(broker, store, job_id, "slow", {"sleep": 0.3, "id": job_id})
    first = start_worker(url, tmp_path, "--lease-s", "2", "--max-batch", "4", "--port", "-1")
    try:
        # Kill it once it has finished a few batches and holds a batch in the middle of computing.
        assert poll(lambda: sum(store.get(i).status is JobStatus.COMPLETED for i in ids) >= 8, 60)
        assert poll(lambda: any(store.get(i).status is JobStatus.RUNNING for i in ids), 10)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        interrupted = [i for i in ids if store.get(i).status is JobStatus.RUNNING]
        assert interrupted, "the kill should land while a batch is being computed"
    finally:
        first.kill()
    second = start_worker(url, tmp_path, "--lease-s", "2", "--max-batch", "8", "--port", "-1")
    try:
        assert poll(lambda: all(store.get(i).status.terminal for i in ids), 90)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    docs = {i: store.get(i) for i in ids}
    assert {d.status for d in docs.values()} == {JobStatus.COMPLETED}
    assert all(d.output == {"sleep": 0.3, "id": i} for i, d in docs.items()), "one result per job, its own"
    assert broker.depth(REQUEST_QUEUE) == 0 and broker.dead_letters(REQUEST_QUEUE) == []


def test_sigterm_finishes_the_batch_in_hand_and_exits_0(system, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, broker, store = system
    submit(broker, store, "long", "slow", {"sleep": 1.5})
    worker = start_worker(url, tmp_path, "--port", "-1")
    try:
        assert poll(lambda: store.get("long").status is JobStatus.RUNNING, 30)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, (tmp_path / "worker.log").read_text()
    finally:
        worker.kill()
    assert poll(lambda: store.get("long").status is JobStatus.COMPLETED, 10)


def test_health_readiness_and_metrics_endpoints(system, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, broker, store = system
    port = free_port()
    worker = start_worker(url, tmp_path, "--port", str(port), "--host", "127.0.0.1")
    try:
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        assert poll(ready, 30)
        assert httpx.get(f"{base}/healthz").status_code == 200
        submit(broker, store, "m1", "record", {"x": 1})
        assert poll(lambda: store.get("m1").status is JobStatus.COMPLETED, 30)
        metrics = httpx.get(f"{base}/metrics").text
        for name in (
            "nearline_worker_batch_size_messages",
            "nearline_worker_ready 1.0",
            "nearline_worker_queue_wait_seconds",
            "nearline_worker_step_seconds",
            "nearline_worker_results_total",
        ):
            assert name in metrics
        assert httpx.get(f"{base}/nope").status_code == 404
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)


def test_a_worker_without_a_broker_says_so_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NEARLINE_BROKER"}
    r = subprocess.run(
        [sys.executable, "-m", "workers", "--models", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 2 and "--broker" in r.stderr and "Traceback" not in r.stderr


def test_a_worker_freezes_what_it_loaded_before_it_says_ready(tmp_path: Path) -> None:
    """Models and modules loaded, they are out of the collector's sight (gc.freeze): a full
    collection no longer walks them (75 ms a pass with the example models) on a batch's time."""
    import gc

    from nearline.settings import WorkerSettings
    from nearline.worker.cli import run_worker

    class Ready(Exception):
        pass

    frozen: list[int] = []

    def on_ready() -> None:
        frozen.append(gc.get_freeze_count())
        raise Ready  # stop here: the worker would now receive until a signal

    settings = WorkerSettings(
        broker=f"sqlite:///{tmp_path / 'q.db'}", pipelines=(PIPELINES,), models=tmp_path, port=-1
    )
    try:
        with pytest.raises(Ready):
            run_worker(settings, on_ready)
    finally:
        gc.unfreeze()
    assert frozen and frozen[0] > 0
