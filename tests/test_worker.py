"""The worker loop on a real broker: batching, per-item failure, deadlines, poison, termination."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pipeline_steps
import pytest
from waiting import wait_until

from nearline.brokers.memory import MemoryBroker
from nearline.constants import REQUEST_QUEUE, RESPONSE_QUEUE
from nearline.jobs import JobRecord, JobStatus
from nearline.messages import RequestMessage, ResultMessage
from nearline.models.repository import ModelRepository
from nearline.pipelines.runner import PipelineRunner
from nearline.pipelines.spec import load_pipelines
from nearline.store.memory import MemoryStore
from nearline.worker import Worker, WorkerConfig

PIPELINES = Path(__file__).parent / "data" / "worker_pipelines.yaml"


def send(
    broker: MemoryBroker, job_id: str, pipeline: str, input: object, deadline: float | None = None
) -> None:
    msg = RequestMessage(job_id, pipeline, input, time.time(), deadline=deadline)
    broker.send(REQUEST_QUEUE, msg.to_json(), message_id=job_id)


def results(broker: MemoryBroker, expect: int, timeout: float = 10.0) -> dict[str, ResultMessage]:
    """Drain the response queue until ``expect`` results are in (bounded)."""
    out: dict[str, ResultMessage] = {}
    end = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < end:
        for d in broker.receive(RESPONSE_QUEUE, 100, 0.1):
            r = ResultMessage.from_json(d.body)
            out[r.id] = r
            broker.complete(d)
    return out


@pytest.fixture
def runner(tmp_path: Path) -> PipelineRunner:
    return PipelineRunner(load_pipelines(PIPELINES), ModelRepository(tmp_path))


@pytest.fixture
def system(runner: PipelineRunner) -> Iterator[tuple[MemoryBroker, MemoryStore, Worker]]:
    """A worker without a status store (as on Azure): the tests send requests without records.
    With a store, a worker skips a request whose record is gone (tests/test_idempotency.py)."""
    broker, store = MemoryBroker(), MemoryStore()
    worker = Worker(
        broker,
        runner,
        config=WorkerConfig(max_batch=8, max_wait_ms=20, lease_s=5, max_deliveries=3, idle_wait_s=0.05),
    )
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    yield broker, store, worker
    stop.set()
    if thread.is_alive():
        thread.join(10)


def batches_started(worker: Worker) -> int:
    """Batches the worker has begun to compute (the count of its batch-size histogram)."""
    (histogram,) = worker.metrics.batch_size.collect()
    return int(next(s.value for s in histogram.samples if s.name.endswith("_count")))


def in_flight(worker: Worker) -> int:
    """Messages the worker has received and not yet settled (its in-flight gauge)."""
    (gauge,) = worker.metrics.in_flight.collect()
    return int(gauge.samples[0].value)


def start(worker: Worker) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def test_every_request_gets_one_result_and_is_completed(system) -> None:  # type: ignore[no-untyped-def]
    broker, _, worker = system
    for i in range(20):
        send(broker, f"j{i}", "record", {"n": i})
    stop, thread = start(worker)
    got = results(broker, 20)
    stop.set()
    thread.join(10)
    assert sorted(got) == sorted(f"j{i}" for i in range(20))
    assert all(r.status == "Completed" and r.output == {"echo": {"n": int(r.id[1:])}} for r in got.values())
    assert broker.depth(REQUEST_QUEUE) == 0
    sizes = worker.metrics.batch_size.collect()[0].samples
    count = next(s.value for s in sizes if s.name.endswith("_count"))
    assert count < 20, "twenty queued requests should be computed in fewer than twenty batches"


def test_one_bad_item_fails_alone(system) -> None:  # type: ignore[no-untyped-def]
    broker, _, worker = system
    send(broker, "good1", "picky", {"x": 1})
    send(broker, "bad", "picky", {"bad": True})
    send(broker, "good2", "picky", {"x": 2})
    worker.process(broker.receive(REQUEST_QUEUE, 10, 1.0))
    got = results(broker, 3)
    assert got["good1"].status == got["good2"].status == "Completed"
    assert got["bad"].status == "Failed" and got["bad"].error["code"] == "InvalidInput"
    assert "this item is bad" in got["bad"].error["message"]


def test_a_step_bug_fails_the_jobs_not_the_worker(system) -> None:  # type: ignore[no-untyped-def]
    broker, _, worker = system
    send(broker, "e1", "explode", {})
    send(broker, "r1", "record", {"ok": 1})
    worker.process(broker.receive(REQUEST_QUEUE, 10, 1.0))
    got = results(broker, 2)
    assert got["e1"].error["code"] == "StepError" and "kaboom" in got["e1"].error["message"]
    assert got["r1"].status == "Completed"


def test_an_unknown_pipeline_fails_its_job(system) -> None:  # type: ignore[no-untyped-def]
    broker, _, worker = system
    send(broker, "u1", "no-such-pipeline", {})
    worker.process(broker.receive(REQUEST_QUEUE, 10, 1.0))
    assert results(broker, 1)["u1"].error["code"] == "UnknownPipeline"


def test_an_expired_request_is_never_computed(system) -> None:  # type: ignore[no-untyped-def]
    broker, _, worker = system
    pipeline_steps.COMPUTED.clear()
    send(broker, "late", "record", {"late": True}, deadline=time.time() - 1)
    send(broker, "ok", "record", {"late": False}, deadline=time.time() + 60)
    worker.process(broker.receive(REQUEST_QUEUE, 10, 1.0))
    got = results(broker, 2)
    assert got["late"].error["code"] == "DeadlineExceeded"
    assert pipeline_steps.COMPUTED == [{"late": False}]


def test_terminated_jobs_are_skipped_and_others_marked_running(system, runner) -> None:  # type: ignore[no-untyped-def]
    broker, store, _ = system
    worker = Worker(broker, runner, store=store)
    pipeline_steps.COMPUTED.clear()
    for job_id in ("t", "p"):
        store.create(JobRecord(job_id, "record", {"id": job_id}))
    store.finish("t", JobStatus.TERMINATED, "user said so", time.time())
    send(broker, "t", "record", {"id": "t"})
    send(broker, "p", "record", {"id": "p"})
    deliveries = broker.receive(REQUEST_QUEUE, 10, 1.0)
    worker.process(deliveries)
    assert pipeline_steps.COMPUTED == [{"id": "p"}]
    assert set(results(broker, 1, timeout=0.5)) == {"p"}
    assert store.get("p").status is JobStatus.RUNNING  # the lifecycle, not the worker, completes it
    assert broker.depth(REQUEST_QUEUE) == 0


def test_a_message_delivered_too_often_is_dead_lettered_as_poison(system) -> None:  # type: ignore[no-untyped-def]
    broker, _, worker = system
    send(broker, "poison", "record", {})
    for _ in range(3):  # three deliveries that never settled (a worker crashed each time)
        (d,) = broker.receive(REQUEST_QUEUE, 1, 1.0)
        broker.abandon(d)
    worker.process(broker.receive(REQUEST_QUEUE, 10, 1.0))
    assert results(broker, 1)["poison"].error["code"] == "PoisonMessage"
    (dead,) = broker.dead_letters(REQUEST_QUEUE)
    assert dead.message_id == "poison" and dead.delivery_count == 4
    assert broker.depth(REQUEST_QUEUE) == 0


def test_a_malformed_message_is_dead_lettered_with_a_result(system) -> None:  # type: ignore[no-untyped-def]
    broker, _, worker = system
    broker.send(REQUEST_QUEUE, b"\x80garbage", message_id="m1")
    worker.process(broker.receive(REQUEST_QUEUE, 10, 1.0))
    assert results(broker, 1)["m1"].error["code"] == "PoisonMessage"
    assert broker.dead_letters(REQUEST_QUEUE)[0].reason.startswith("malformed request message")


def test_stop_gives_back_what_was_not_started(runner: PipelineRunner) -> None:
    broker = MemoryBroker()
    worker = Worker(
        broker, runner, config=WorkerConfig(max_batch=1, max_wait_ms=0, lease_s=30, idle_wait_s=0.05)
    )
    send(broker, "s1", "slow", {"sleep": 0.5})
    for i in range(5):
        send(broker, f"q{i}", "record", {})
    stop, thread = start(worker)
    wait_until(
        lambda: batches_started(worker) == 1 and in_flight(worker) >= 2,
        10,
        "s1 to be computed while the receiver holds the next batch",
    )
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    got = results(broker, 1, timeout=1)
    assert "s1" in got, "the batch in hand is finished"
    # Nothing else is lost: what was not computed is back on the queue at once, not after a lease.
    assert broker.depth(REQUEST_QUEUE) == 5 - (len(got) - 1)
    assert len(broker.receive(REQUEST_QUEUE, 10, 0.1)) == broker.depth(REQUEST_QUEUE)


def test_result_messages_carry_worker_and_timings(system) -> None:  # type: ignore[no-untyped-def]
    broker, _, worker = system
    send(broker, "w1", "record", {"a": 1})
    worker.process(broker.receive(REQUEST_QUEUE, 10, 1.0))
    (d,) = broker.receive(RESPONSE_QUEUE, 1, 1.0)
    doc = json.loads(d.body)
    assert doc["worker"] == worker.name and "record" in doc["timings"]
    assert doc["started_at"] <= doc["finished_at"]


def test_a_redelivered_message_runs_alone_after_its_batch_mates(system) -> None:  # type: ignore[no-untyped-def]
    broker, _, worker = system
    pipeline_steps.COMPUTED.clear()
    send(broker, "suspect", "record", {"n": "suspect"})
    (d,) = broker.receive(REQUEST_QUEUE, 1, 1.0)
    broker.abandon(d)  # as if the worker that held it had died
    send(broker, "a", "record", {"n": "a"})
    send(broker, "b", "record", {"n": "b"})
    deliveries = broker.receive(REQUEST_QUEUE, 10, 1.0)
    assert {d.message_id: d.delivery_count for d in deliveries} == {"suspect": 2, "a": 1, "b": 1}
    worker.process(deliveries)
    assert pipeline_steps.COMPUTED == [{"n": "a"}, {"n": "b"}, {"n": "suspect"}]
    (histogram,) = worker.metrics.batch_size.collect()
    observed = {
        s.name.rsplit("_", 1)[-1]: s.value for s in histogram.samples if not s.name.endswith("bucket")
    }
    assert observed["count"] == 2 and observed["sum"] == 3  # [a, b] together, then the suspect alone
    assert len(results(broker, 3)) == 3


def test_a_worker_leases_at_most_the_batch_in_hand_and_one_ahead(runner: PipelineRunner) -> None:
    broker = MemoryBroker()
    worker = Worker(
        broker,
        runner,
        config=WorkerConfig(max_batch=2, max_wait_ms=0, batch_window=1, lease_s=30, idle_wait_s=0.05),
    )
    for i in range(12):
        send(broker, f"s{i}", "slow", {"sleep": 0.3})
    stop, thread = start(worker)
    try:
        # The first batch is settled and the second computing: its slot has let the receiver
        # lease the next batch ahead (and a worker that ignored its slots would have leased more).
        wait_until(
            lambda: batches_started(worker) >= 2 and in_flight(worker) >= 4,
            10,
            "the second batch to be computed with the third received ahead",
        )
        waiting = len(broker.receive(REQUEST_QUEUE, 100, 0.0))  # what nobody holds a lease on
        settled = 12 - broker.depth(REQUEST_QUEUE)
        assert 12 - settled - waiting <= 4, "two batches of two at most are leased at once"
    finally:
        stop.set()
        thread.join(10)
