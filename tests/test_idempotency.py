"""Idempotency keys and purge (docs/api.md, Idempotency and Purge), black-box on a real server.

What a careless or hostile client could do before (issue #12): purge a job that had not ended and
have a later request with the same key complete with the purged job's input; reuse a key with
another body and silently get the first job; compute any keyed job's id from its key alone; meet
another caller's job through an equal key. Each test here failed on that code.

The servers run on SQLite and, where Redis is there, on Redis (database 15, emptied first).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pipeline_steps
import pytest
import redis
from conftest import require_server
from serving import Server, identity_pipelines, running_server

from nearline.brokers.memory import MemoryBroker
from nearline.constants import REQUEST_QUEUE, RESPONSE_QUEUE
from nearline.idempotency import caller_scope, fingerprint, slot
from nearline.jobs import JobRecord, JobStatus
from nearline.messages import RequestMessage
from nearline.models.repository import ModelRepository
from nearline.pipelines.runner import PipelineRunner
from nearline.pipelines.spec import load_pipelines
from nearline.store.memory import MemoryStore
from nearline.store.sqlite import SqliteStore
from nearline.submissions import Submission
from nearline.worker import Worker, WorkerConfig

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/15"
#: The id a keyed job had before: uuid5 of a namespace written in the source.
OLD_NAMESPACE = uuid.UUID("6f1b7f43-5a51-4d0e-9a43-0c7d6c1e5a10")
WORKER_PIPELINES = Path(__file__).parent / "data" / "worker_pipelines.yaml"


def _sqlite() -> Iterator[tuple[str, ...]]:
    yield ()


def _redis() -> Iterator[tuple[str, ...]]:
    require_server("Redis", "127.0.0.1", 6379)
    with redis.Redis.from_url(REDIS_URL) as r:
        r.flushdb()
        try:
            yield ("--broker", REDIS_URL)
        finally:
            r.flushdb()


BROKERS = [
    pytest.param(_sqlite, id="sqlite"),
    pytest.param(_redis, id="redis", marks=pytest.mark.redis),
]


@pytest.fixture(params=BROKERS)
def broker_args(request: pytest.FixtureRequest) -> Iterator[tuple[str, ...]]:
    """``nearline serve`` arguments for a broker of each kind (SQLite: the default)."""
    yield from request.param()


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No workers: jobs stay Pending, so what is enqueued can be counted."""
    with running_server(tmp_path_factory.mktemp("idle"), "--no-workers") as s:
        yield s


def post(server: Server, body: Any, key: str | None, pipeline: str = "identity", **kw: Any) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return httpx.post(
        f"{server.url}/api/score/{pipeline}", json=body, headers={**headers, **kw.pop("headers", {})}, **kw
    )


def depth(server: Server) -> int:
    return int(httpx.get(f"{server.url}/api/health").json()["queueDepth"])


def error(resp: httpx.Response) -> tuple[int, str, str]:
    body = resp.json()["error"]
    return resp.status_code, body["code"], body["message"]


def fresh_key() -> str:
    return f"order-{uuid.uuid4().hex[:8]}"


# --- reuse of a key -------------------------------------------------------------------------


def test_a_repeat_of_the_same_request_returns_the_original_job(idle: Server) -> None:
    key, before = fresh_key(), depth(idle)
    first = post(idle, {"input": {"n": 1}}, key)
    # The same request, spelled differently: defaults written out, fields in another order.
    again = post(idle, {"priority": "normal", "timeout_s": 60, "input": {"n": 1}}, key)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"]
    assert depth(idle) == before + 1


@pytest.mark.parametrize(
    "other",
    [
        {"input": {"n": 2}},
        {"input": {"n": 1}, "timeout_s": 5},
        {"input": {"n": 1}, "priority": "high"},
        {"input": {"n": 1}, "callback_url": "https://93.184.215.14/done"},  # a literal: no DNS at submit
    ],
    ids=["input", "timeout_s", "priority", "callback_url"],
)
def test_a_repeat_with_another_body_is_422_naming_the_key(idle: Server, other: dict[str, Any]) -> None:
    key, before = fresh_key(), depth(idle)
    first = post(idle, {"input": {"n": 1}}, key)
    status, code, message = error(post(idle, other, key))
    assert (status, code) == (422, "IdempotencyKeyReused") and key in message
    assert depth(idle) == before + 1  # nothing new was queued
    assert post(idle, {"input": {"n": 1}}, key).json()["id"] == first.json()["id"]


def test_the_same_key_on_another_pipeline_is_another_job(idle: Server) -> None:
    key = fresh_key()
    ours = post(idle, {"input": {"n": 1}}, key).json()["id"]
    pixels = {"input": {"pixels": [0] * 64}}
    assert post(idle, pixels, key, pipeline="digits").json()["id"] != ours


def test_a_repeat_while_the_first_is_being_created_is_409(idle: Server) -> None:
    """An API replica has claimed the key's slot and not yet sent the job's message (or died
    between the two): a repeat cannot be handed a job that may never be queued."""
    key, body, now = fresh_key(), {"n": 1}, time.time()
    claimed = JobRecord(
        id=uuid.uuid4().hex,
        pipeline="identity",
        input=body,
        created=now,
        updated=now,
        deadline=now + 60,
        idempotency_key=key,
        idempotency_slot=slot(caller_scope(None), "identity", key),
        fingerprint=fingerprint(Submission("identity", body, 60.0, "normal", None)),
        enqueued=False,
    )
    store = SqliteStore(f"sqlite:///{idle.data_dir / 'nearline.db'}")
    try:
        assert store.create(claimed) == (claimed, True)
        status, code, message = error(post(idle, {"input": body}, key))
        assert (status, code) == (409, "Conflict") and key in message
        store.mark_enqueued(claimed.id)
        assert post(idle, {"input": body}, key).json()["id"] == claimed.id
    finally:
        store.close()


def test_concurrent_repeats_make_one_job(idle: Server) -> None:
    key, before = fresh_key(), depth(idle)
    answers: list[httpx.Response] = []
    go = threading.Barrier(12)

    def send() -> None:
        go.wait()
        answers.append(post(idle, {"input": {"n": 1}}, key, timeout=30))

    threads = [threading.Thread(target=send) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {r.status_code for r in answers} <= {202, 409}, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers if r.status_code == 202}) == 1
    assert depth(idle) == before + 1


def test_an_idempotency_key_out_of_bounds_is_400(idle: Server) -> None:
    for key in ("", "k" * 201):
        status, code, message = error(post(idle, {"input": {}}, key))
        assert (status, code) == (400, "BadRequest") and "Idempotency-Key" in message


# --- ids and scope --------------------------------------------------------------------------


def test_a_keyed_id_cannot_be_computed_from_the_key(idle: Server) -> None:
    key = fresh_key()
    job_id = post(idle, {"input": {}}, key).json()["id"]
    assert len(job_id) == 32 and int(job_id, 16) >= 0
    assert job_id != uuid.uuid5(OLD_NAMESPACE, f"identity\n{key}").hex
    # Not a function of the key at all: once the job is gone, the key names a new job.
    httpx.post(f"{idle.url}/api/jobs/{job_id}/terminate")
    assert httpx.delete(f"{idle.url}/api/jobs/{job_id}").status_code == 200
    assert post(idle, {"input": {}}, key).json()["id"] != job_id


def test_keys_are_scoped_to_the_caller(tmp_path: Path) -> None:
    with running_server(tmp_path, "--no-workers", env={"NEARLINE_API_KEYS": "k1,k2"}) as s:
        key = fresh_key()
        one = post(s, {"input": {"n": 1}}, key, headers={"x-functions-key": "k1"})
        two = post(s, {"input": {"n": 2}}, key, headers={"x-functions-key": "k2"})
        assert (one.status_code, two.status_code) == (202, 202), two.text
        assert one.json()["id"] != two.json()["id"]
        # The same caller, by query string this time: its own job again.
        again = post(s, {"input": {"n": 1}}, key, params={"code": "k1"})
        assert again.json()["id"] == one.json()["id"]
        assert depth(s) == 2


# --- purge ----------------------------------------------------------------------------------


def test_purge_of_a_job_that_has_not_ended_is_409(idle: Server) -> None:
    job = post(idle, {"input": {}}, None).json()
    status, code, message = error(httpx.delete(job["purgeHistoryDeleteUri"]))
    assert (status, code) == (409, "Conflict")
    assert job["id"] in message and "Pending" in message and "terminate" in message
    assert httpx.get(job["statusQueryGetUri"]).status_code == 202  # still there, still queued
    assert httpx.post(f"{idle.url}/api/jobs/{job['id']}/terminate").status_code == 202
    assert httpx.delete(job["purgeHistoryDeleteUri"]).status_code == 200
    assert httpx.get(job["statusQueryGetUri"]).status_code == 404


def test_nothing_a_purge_leaves_behind_is_applied_to_a_later_job(
    broker_args: tuple[str, ...], tmp_path: Path
) -> None:
    """The issue's case: a job terminated while queued keeps its message until a worker takes
    it; once purged, a new request with the same key must complete with its own input."""
    # The identity pipeline only: the worker starts without torch (seconds less per server).
    args, key = (*broker_args, "--pipelines", str(identity_pipelines(tmp_path))), fresh_key()
    with running_server(tmp_path, "--no-workers", *args) as s:
        old = post(s, {"input": {"v": "A"}}, key).json()
        assert httpx.post(f"{s.url}/api/jobs/{old['id']}/terminate").status_code == 202
        assert httpx.delete(old["purgeHistoryDeleteUri"]).status_code == 200
        new = post(s, {"input": {"v": "B"}}, key)
        assert new.status_code == 202, new.text
    with running_server(tmp_path, *args) as s:  # now with a worker
        jobs = f"{s.url}/api/jobs"
        done = httpx.get(f"{jobs}/{new.json()['id']}", params={"wait": 30}, timeout=40).json()
        assert (done["runtimeStatus"], done["output"]) == ("Completed", {"v": "B"})
        assert httpx.get(f"{jobs}/{old['id']}").status_code == 404


# --- the worker -----------------------------------------------------------------------------


def test_a_worker_skips_a_message_whose_job_is_gone(tmp_path: Path) -> None:
    """Records are created before their messages are sent, so a message without a record is
    what a purged job left behind: it is settled without being computed or answered."""
    broker, store = MemoryBroker(), MemoryStore()
    runner = PipelineRunner(load_pipelines(WORKER_PIPELINES), ModelRepository(tmp_path))
    worker = Worker(broker, runner, store=store, config=WorkerConfig(max_batch=8, max_wait_ms=0))
    store.create(JobRecord("live", "record", {"id": "live"}))
    for job_id in ("purged", "live"):
        msg = RequestMessage(job_id, "record", {"id": job_id}, time.time())
        broker.send(REQUEST_QUEUE, msg.to_json(), message_id=job_id)
    pipeline_steps.COMPUTED.clear()
    worker.process(broker.receive(REQUEST_QUEUE, 10, 1.0))
    assert pipeline_steps.COMPUTED == [{"id": "live"}]
    assert [d.message_id for d in broker.receive(RESPONSE_QUEUE, 10, 0.2)] == ["live"]
    assert broker.depth(REQUEST_QUEUE) == 0
    assert store.statuses(["live"]) == {"live": JobStatus.RUNNING}
