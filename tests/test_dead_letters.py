"""Dead-letter tools (nearline/dead_letters.py, ``nearline dlq``) on the embedded profile's SQLite
file and on Redis: find, show, redrive (job back to Pending, delivery count reset), purge.

The broker methods they stand on are in the contract suite (tests/test_brokers.py); here a real
``nearline dlq`` process works on the same file or database a worker would use.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_server
from waiting import wait_until

from nearline import dead_letters as dl
from nearline.brokers import Broker, open_broker
from nearline.constants import REQUEST_QUEUE
from nearline.jobs import JobRecord, JobStatus
from nearline.lifecycle import Lifecycle
from nearline.messages import RequestMessage
from nearline.store import open_store
from nearline.store.base import StatusStore

#: This suite's Redis database, emptied before and after.
REDIS_DB = 7


def _url(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'nearline.db'}"
    require_server("Redis", "127.0.0.1", 6379)
    import redis

    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    with redis.Redis.from_url(url) as r:
        r.flushdb()
    return url


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    u = _url(request.param, tmp_path)
    yield u
    if request.param == "redis":
        import redis

        with redis.Redis.from_url(u) as r:
            r.flushdb()


def dead_job(broker: Broker, store: StatusStore, job_id: str, pipeline: str, reason: str) -> None:
    """A job as a worker leaves a poison request: message dead-lettered, record Failed."""
    store.create(JobRecord(job_id, pipeline, {"x": 1}, created=time.time(), updated=time.time()))
    msg = RequestMessage(job_id, pipeline, {"x": 1}, time.time())
    broker.send(REQUEST_QUEUE, msg.to_json(), message_id=job_id)
    [d] = broker.receive(REQUEST_QUEUE, 1, wait_s=3)
    broker.dead_letter(d, reason)
    error = {"code": "PoisonMessage", "message": reason}
    assert store.finish(job_id, JobStatus.FAILED, {"error": error}, time.time())


def dlq(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nearline", "dlq", *args, "--broker", url],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_dead_lettered_job_is_found_shown_and_redriven_from_the_cli(url: str) -> None:
    broker, store = open_broker(url), open_store(url)
    try:
        dead_job(broker, store, "job-a", "iris", "delivered 5 times without being settled")
        dead_job(broker, store, "job-b", "churn", "malformed request message: no pipeline")
        listed = dlq(url, "list", "--json", "--pipeline", "iris")
        assert listed.returncode == 0, listed.stderr
        [row] = json.loads(listed.stdout)
        assert (row["id"], row["pipeline"], row["lane"]) == ("job-a", "iris", "normal")
        assert row["deliveryCount"] == 1
        assert row["reason"] == "delivered 5 times without being settled" and row["deadLetteredTime"]
        text = dlq(url, "list", "--reason", "MALFORMED")
        assert text.returncode == 0 and "job-b" in text.stdout and "job-a" not in text.stdout
        shown = dlq(url, "show", "job-a")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["message"]["input"] == {"x": 1}

        redriven = dlq(url, "redrive", "job-a", "--json")
        assert redriven.returncode == 0, redriven.stderr
        assert json.loads(redriven.stdout) == {"redriven": ["job-a"]}
        job = store.get("job-a")
        assert job is not None and (job.status, job.output) == (JobStatus.PENDING, None)
        [again] = broker.receive(REQUEST_QUEUE, 10, wait_s=3)
        assert (again.message_id, again.delivery_count) == ("job-a", 1)
        assert [d.message_id for d in broker.dead_letters(REQUEST_QUEUE)] == ["job-b"]
        assert store.get("job-b").status == JobStatus.FAILED  # type: ignore[union-attr]
    finally:
        broker.close()
        store.close()


def test_purge_with_filters_and_refusals(url: str) -> None:
    broker, store = open_broker(url), open_store(url)
    try:
        for n in range(3):
            dead_job(broker, store, f"job-{n}", "iris" if n < 2 else "churn", "boom")
        too_young = dlq(url, "purge", "--all", "--pipeline", "iris", "--older-than", "3600")
        assert too_young.stdout.startswith("0 dead letter(s) purged"), too_young.stderr
        purged = dlq(url, "purge", "--all", "--pipeline", "iris", "--json")
        assert purged.returncode == 0, purged.stderr
        assert json.loads(purged.stdout) == {"purged": 2, "ids": ["job-0", "job-1"]}
        assert [d.message_id for d in broker.dead_letters(REQUEST_QUEUE)] == ["job-2"]
        assert store.get("job-0") is not None  # purging a dead letter keeps its job's record
        # Requests that cannot succeed: one line naming the problem, exit 2, nothing changed.
        both = dlq(url, "purge", "job-2", "--all")
        neither = dlq(url, "redrive")
        missing = dlq(url, "show", "nope")
        negative = dlq(url, "list", "--older-than", "nan")
        assert negative.returncode == 2 and "--older-than must be" in negative.stderr
        if url.startswith("sqlite"):
            elsewhere = dlq(url.replace("nearline.db", "elsewhere.db"), "list")
            assert elsewhere.returncode == 2 and "no SQLite file at" in elsewhere.stderr
        partly = dlq(url, "redrive", "nope", "job-2")
        assert (both.returncode, neither.returncode, missing.returncode, partly.returncode) == (2, 2, 2, 2)
        assert "ids or --all" in both.stderr and "nope: no such dead letter" in missing.stderr
        assert "nope: no such dead letter" in partly.stderr and "Traceback" not in partly.stderr
        assert broker.dead_letters(REQUEST_QUEUE) == []  # the id that was there was redriven
    finally:
        broker.close()
        store.close()


def test_filter_matches_pipeline_reason_and_age() -> None:
    from nearline.brokers.base import DeadLetter

    now = time.time()
    body = RequestMessage("j", "iris", None, now).to_json()
    old = DeadLetter("q", "j", body, "Delivered too often", 6, dead_at=now - 600)
    unknown_age = DeadLetter("q", "k", b"\xff not json", "malformed", 1)
    assert dl.Filter("iris", "too OFTEN", 300).matches(old, now)
    assert not dl.Filter(older_than_s=900).matches(old, now)
    assert not dl.Filter(pipeline="churn").matches(old, now)
    assert not dl.Filter(older_than_s=0).matches(unknown_age, now)
    assert dl.pipeline_of(unknown_age) is None
    assert dl.detail(unknown_age)["message"] == "\ufffd not json"


@pytest.mark.slow
def test_a_job_a_real_worker_dead_lettered_is_redriven_and_completes(tmp_path: Path) -> None:
    """The whole way: a worker process dead-letters a request delivered too often (its job ends
    Failed through the real lifecycle), ``nearline dlq redrive`` puts it back, and the same
    worker computes it: the job ends Completed with the pipeline's output."""
    from test_worker_process import start_worker, submit

    url = f"sqlite:///{tmp_path / 'nearline.db'}"
    broker, store = open_broker(url), open_store(url)
    life = Lifecycle(broker, store)
    life.start()
    worker = None
    try:
        submit(broker, store, "job-1", "record", {"n": 1})  # type: ignore[arg-type]
        for count in (1, 2):  # two workers that died holding it: leases that ran out
            [held] = broker.receive(REQUEST_QUEUE, 1, wait_s=5, lease_s=0.05)
            assert held.delivery_count == count
        worker = start_worker(url, tmp_path, "--max-deliveries", "2", "--port", "-1")
        failed = wait_until(lambda: _ended(store, "job-1"), 60, lambda: (tmp_path / "worker.log").read_text())
        assert failed.output["error"]["code"] == "PoisonMessage"  # type: ignore[index]
        [row] = json.loads(dlq(url, "list", "--json").stdout)
        assert (row["id"], row["reason"]) == ("job-1", "delivered 2 times without being settled")

        assert dlq(url, "redrive", "job-1").returncode == 0
        done = wait_until(lambda: _ended(store, "job-1"), 60, lambda: (tmp_path / "worker.log").read_text())
        assert (done.status, done.output) == (JobStatus.COMPLETED, {"echo": {"n": 1}})
        assert broker.dead_letters(REQUEST_QUEUE) == []
    finally:
        if worker is not None:
            worker.kill()
            worker.wait(10)
        life.stop()
        broker.close()
        store.close()


def _ended(store: StatusStore, job_id: str) -> JobRecord | None:
    job = store.get(job_id)
    return job if job is not None and job.status.terminal else None
