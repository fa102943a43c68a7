"""A worker rides out broker outages of any length, in process and as ``python -m workers``.

The in-process tests put a switch in front of a memory broker (every call fails with
``BrokerError`` while it is off); the process test kills a ``redis-server`` of its own
(own port, AOF fsynced on every write) with SIGKILL mid-load and restarts it on the same port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from conftest import unavailable
from serving import free_port
from waiting import wait_until

from nearline.brokers.base import Broker, DeadLetter, Delivery
from nearline.brokers.memory import MemoryBroker
from nearline.brokers.redis_streams import RedisBroker, redis_error
from nearline.constants import DEFAULT_LANE, LEASE_S, REQUEST_QUEUE, RESPONSE_QUEUE
from nearline.errors import BrokerError, NearlineError
from nearline.jobs import JobStatus
from nearline.lifecycle import Lifecycle
from nearline.messages import RequestMessage, ResultMessage
from nearline.models.repository import ModelRepository
from nearline.pipelines.runner import PipelineRunner
from nearline.pipelines.spec import load_pipelines
from nearline.store.redis_hashes import RedisStore
from nearline.store_jobs import StoreJobs
from nearline.worker import Worker, WorkerConfig
from nearline.worker.outage import Backoff

TESTS = Path(__file__).resolve().parent
PIPELINES = TESTS / "data" / "worker_pipelines.yaml"


# --- in process: a broker with an off switch ----------------------------------------------


class SwitchedBroker(Broker):
    """A memory broker behind a switch: while ``down`` is set, every call fails as Redis's do."""

    def __init__(self) -> None:
        self.inner = MemoryBroker()
        self.down = threading.Event()
        self.failed_calls = 0

    def _check(self) -> None:
        if self.down.is_set():
            self.failed_calls += 1
            raise BrokerError("broker down (test switch)")

    def send_many(
        self,
        queue: str,
        messages: Sequence[tuple[str, bytes]],
        *,
        lane: str = DEFAULT_LANE,
        ttl_s: float | None = None,
    ) -> None:
        self._check()
        self.inner.send_many(queue, messages, lane=lane, ttl_s=ttl_s)

    def receive(
        self, queue: str, max_messages: int, wait_s: float, lease_s: float = LEASE_S
    ) -> list[Delivery]:
        self._check()
        return self.inner.receive(queue, max_messages, min(wait_s, 0.05), lease_s)

    def complete(self, delivery: Delivery) -> None:
        self._check()
        self.inner.complete(delivery)

    def complete_many(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        self._check()
        return self.inner.complete_many(deliveries)

    def abandon(self, delivery: Delivery) -> None:
        self._check()
        self.inner.abandon(delivery)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._check()
        self.inner.dead_letter(delivery, reason)

    def depth(self, queue: str) -> int:
        return self.inner.depth(queue)

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        return self.inner.dead_letters(queue, limit)

    def purge_dead_letters(self, queue: str, message_ids: Sequence[str]) -> int:
        return self.inner.purge_dead_letters(queue, message_ids)


def send(broker: SwitchedBroker, job_id: str, pipeline: str, input: object) -> None:
    msg = RequestMessage(job_id, pipeline, input, time.time())
    broker.inner.send(REQUEST_QUEUE, msg.to_json(), message_id=job_id)


def drain_results(broker: SwitchedBroker, into: dict[str, ResultMessage]) -> int:
    for d in broker.inner.receive(RESPONSE_QUEUE, 100, 0.0):
        r = ResultMessage.from_json(d.body)
        into[r.id] = r
        broker.inner.complete(d)
    return len(into)


def batches_started(worker: Worker) -> int:
    (histogram,) = worker.metrics.batch_size.collect()
    return int(next(s.value for s in histogram.samples if s.name.endswith("_count")))


@pytest.fixture
def runner(tmp_path: Path) -> PipelineRunner:
    return PipelineRunner(load_pipelines(PIPELINES), ModelRepository(tmp_path))


@pytest.fixture
def switched(
    runner: PipelineRunner,
) -> Iterator[tuple[SwitchedBroker, Worker, threading.Event, threading.Thread]]:
    broker = SwitchedBroker()
    worker = Worker(
        broker,
        runner,
        config=WorkerConfig(max_batch=4, max_wait_ms=0, lease_s=30, idle_wait_s=0.05),
        backoff=Backoff(first_s=0.01, max_s=0.1),
    )
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    yield broker, worker, stop, thread
    stop.set()
    thread.join(10)


def test_backoff_doubles_to_its_cap_with_jitter() -> None:
    backoff = Backoff(first_s=0.1, max_s=5.0)
    rng = random.Random(7)
    delays = [backoff.delay(attempt, rng) for attempt in range(12)]
    for attempt, delay in enumerate(delays):
        ceiling = min(0.1 * 2**attempt, 5.0)
        assert ceiling / 2 <= delay <= ceiling, (attempt, delay)
    assert len({round(d, 6) for d in delays[8:]}) > 1, "capped delays are jittered, not one value"


def test_an_outage_mid_batch_is_ridden_out_and_every_job_completes(
    switched: tuple[SwitchedBroker, Worker, threading.Event, threading.Thread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker, worker, _, thread = switched
    caplog.set_level(logging.INFO, logger="nearline.worker")
    for i in range(12):
        send(broker, f"s{i}", "slow", {"sleep": 0.3, "n": i})
    wait_until(lambda: worker.ready.is_set(), 10, "the worker to be ready")
    wait_until(lambda: batches_started(worker) >= 1, 10, "a batch to be computing")
    broker.down.set()  # the batch in hand finishes computing with the broker gone
    wait_until(lambda: not worker.ready.is_set(), 10, "the worker to report not ready")
    wait_until(lambda: broker.failed_calls >= 20, 10, "the worker to keep retrying")
    assert thread.is_alive(), "a broker outage must not end the worker"
    broker.down.clear()
    got: dict[str, ResultMessage] = {}
    wait_until(lambda: drain_results(broker, got) >= 12, 20, lambda: f"12 results, have {sorted(got)}")
    assert all(
        r.status == "Completed" and r.output == {"sleep": 0.3, "n": int(r.id[1:])} for r in got.values()
    )
    wait_until(lambda: broker.inner.depth(REQUEST_QUEUE) == 0, 10, "every request to be completed")
    assert worker.ready.is_set() and thread.is_alive()
    messages = [r.getMessage() for r in caplog.records if r.name == "nearline.worker"]
    assert sum("broker unreachable" in m for m in messages) == 1, messages
    assert sum("broker reachable again" in m for m in messages) == 1, messages


def test_stop_during_an_outage_gives_up_the_batch_instead_of_retrying_forever(
    switched: tuple[SwitchedBroker, Worker, threading.Event, threading.Thread],
) -> None:
    broker, worker, stop, thread = switched
    for i in range(8):
        send(broker, f"s{i}", "slow", {"sleep": 1.0})
    wait_until(lambda: batches_started(worker) >= 1, 10, "a batch to be computing")
    broker.down.set()  # before the batch in hand is done computing: it can publish nothing
    wait_until(lambda: not worker.ready.is_set(), 10, "the worker to report not ready")
    stop.set()
    thread.join(10)
    assert not thread.is_alive(), "stop must end the worker while the broker is still down"
    broker.down.clear()
    # Nothing was settled: every request is still on the queue (leased: it comes back when
    # its lease ends, to whichever worker receives it then).
    assert broker.inner.depth(REQUEST_QUEUE) == 8


# --- as a process: python -m workers against a redis-server that is killed ---------------


@dataclass
class RedisServer:
    """A ``redis-server`` of the test's own, durable on every write, on a fixed port."""

    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = [
            *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)),
            *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
            *("--logfile", str(self.directory / "redis.log")),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        try:
            wait_until(lambda: self._answers(client), 20, f"redis-server on port {self.port}")
        finally:
            client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    @staticmethod
    def _answers(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        unavailable("redis-server", "redis-server is not installed")
    server = RedisServer(tmp_path / "redis")
    server.directory.mkdir()
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


def test_what_redis_answers_decides_what_is_an_outage(redis_server: RedisServer) -> None:
    broker, client = RedisBroker(redis_server.url), redis.Redis(port=redis_server.port)
    try:
        client.set(f"{REQUEST_QUEUE}:normal", "not a stream")  # someone else's key in the way
        with pytest.raises(NearlineError) as refused:
            broker.receive(REQUEST_QUEUE, 1, 0.0)
        assert not isinstance(refused.value, BrokerError), "WRONGTYPE fails the same way on every retry"
        assert "WRONGTYPE" in refused.value.message
        client.config_set("maxmemory", 1)  # full under noeviction: writes refused until memory is freed
        with pytest.raises(BrokerError, match="maxmemory"):
            broker.send(RESPONSE_QUEUE, b"{}", message_id="r1")
        client.config_set("maxmemory", 0)
        broker.send(RESPONSE_QUEUE, b"{}", message_id="r1")
        redis_server.kill()
        with pytest.raises(BrokerError, match="redis broker"):
            broker.receive(RESPONSE_QUEUE, 1, 0.0)
    finally:
        client.close()
        broker.close()


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (redis.ResponseError("Command # 1 (EVALSHA) of pipeline caused error: BUSY Redis is busy"), True),
        (redis.ResponseError("NOREPLICAS Not enough good replicas to write."), True),
        (redis.exceptions.ReadOnlyError("You can't write against a read only replica."), True),
        (redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"), True),
        (redis.exceptions.NoPermissionError("this user has no permissions to run the 'xadd' command"), False),
        (redis.ResponseError("ERR Error running script (call to f_0): @user_script:3: bad argument"), False),
    ],
)
def test_redis_replies_that_pass_are_broker_errors(error: redis.RedisError, transient: bool) -> None:
    assert isinstance(redis_error("redis broker", error), BrokerError) is transient


def start_worker(url: str, tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [
        *(sys.executable, "-m", "workers", "--broker", url, "--models", str(tmp_path)),
        *("--pipelines", str(PIPELINES), "--port", str(port), "--host", "127.0.0.1"),
        *("--lease-s", "5", "--max-batch", "8"),
    ]
    with (tmp_path / "worker.log").open("ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def readyz(port: int) -> int:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
    except httpx.HTTPError:
        return 0


@dataclass
class Submitter:
    """Submits ``slow`` jobs through the job seam; remembers the accepted ones and their inputs."""

    jobs: StoreJobs
    accepted: dict[str, dict[str, object]] = field(default_factory=dict)
    refused: int = 0

    def submit(self, n: int) -> None:
        asyncio.run(self._submit(n))

    async def _submit(self, n: int) -> None:
        for _ in range(n):
            body: dict[str, object] = {"sleep": 0.05, "n": len(self.accepted) + self.refused}
            try:
                job, _ = await self.jobs.submit(
                    "slow", json.dumps({"input": body, "timeout_s": 600}).encode()
                )
            except NearlineError:
                self.refused += 1
                continue
            self.accepted[job.id] = body

    def unfinished(self, store: RedisStore) -> list[str]:
        statuses = store.statuses(self.accepted)
        return [i for i in self.accepted if statuses.get(i) is not JobStatus.COMPLETED]


@pytest.mark.slow
def test_a_worker_process_rides_out_a_redis_restart_under_load(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    broker, store = RedisBroker(redis_server.url), RedisStore(redis_server.url)
    life = Lifecycle(broker, store)
    life.start()
    submitter = Submitter(StoreJobs(load_pipelines(PIPELINES), broker, store))
    submitter.submit(200)
    assert len(submitter.accepted) == 200
    port = free_port()
    worker = start_worker(redis_server.url, tmp_path, port)
    log = tmp_path / "worker.log"
    try:
        wait_until(lambda: readyz(port) == 200, 60, lambda: f"the worker to be ready:\n{log.read_text()}")
        wait_until(lambda: len(submitter.unfinished(store)) <= 120, 60, "80 jobs to complete")
        redis_server.kill()  # mid-load: the worker holds a batch computing and one received ahead
        killed = time.monotonic()
        wait_until(lambda: readyz(port) == 503, 10, "/readyz to say 503 while Redis is down")
        submitter.submit(20)  # refused while Redis is down: never accepted, never counted
        # The outage: ~8 s, with the worker alive and not ready all along.
        while time.monotonic() - killed < 8:
            assert worker.poll() is None, f"the worker exited during the outage:\n{log.read_text()}"
            assert readyz(port) == 503
            time.sleep(0.2)
        redis_server.start()
        back = time.monotonic()
        wait_until(lambda: readyz(port) == 200, 30, lambda: f"/readyz 200 again:\n{log.read_text()}")
        ready_after = time.monotonic() - back
        submitter.submit(100)
        wait_until(
            lambda: not submitter.unfinished(store),
            60,
            lambda: f"every accepted job to complete; left {submitter.unfinished(store)[:10]}",
        )
        done_after = time.monotonic() - back
        assert worker.poll() is None, log.read_text()
        print(f"Redis back: ready in {ready_after:.2f} s, all jobs done in {done_after:.2f} s")
        records = {i: store.get(i) for i in submitter.accepted}
        assert all(r is not None and r.output == submitter.accepted[i] for i, r in records.items())
    finally:
        worker.send_signal(signal.SIGTERM)
        status = worker.wait(30)
        life.stop()
        broker.close()
        store.close()
    assert status == 0, log.read_text()
    assert submitter.refused == 20 and len(submitter.accepted) == 300
    text = log.read_text()
    assert text.count("broker unreachable") == 1 and text.count("broker reachable again") == 1, text
