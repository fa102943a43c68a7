"""The local lifecycle: results end jobs once, deadlines end jobs no worker took, callbacks fire."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nearline.addresses import AllowList
from nearline.brokers.memory import MemoryBroker
from nearline.callback_sender import CallbackSender
from nearline.callbacks import CallbackGuard
from nearline.constants import RESPONSE_QUEUE
from nearline.deliveries import Dispatcher
from nearline.errors import BrokerError
from nearline.jobs import JobRecord, JobStatus
from nearline.lifecycle import Lifecycle
from nearline.messages import ResultMessage
from nearline.settings import WebhookSettings
from nearline.store.memory import MemoryStore


def _job(job_id: str, deadline: float | None = None, callback_url: str | None = None) -> JobRecord:
    now = time.time()
    return JobRecord(
        job_id, "identity", {"x": 1}, created=now, updated=now, deadline=deadline, callback_url=callback_url
    )


def _poll(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def parts() -> Iterator[tuple[MemoryBroker, MemoryStore, Lifecycle]]:
    broker, store = MemoryBroker(), MemoryStore()
    # The callback receivers of these tests are on loopback, which callbacks reach only when allowed.
    sender = CallbackSender(CallbackGuard(AllowList.parse("127.0.0.1/32")))
    life = Lifecycle(broker, store, deliveries=Dispatcher(store, sender, WebhookSettings()))
    life.start()
    yield broker, store, life
    life.stop()


def test_a_result_message_completes_its_job_and_the_queue_drains(parts) -> None:  # type: ignore[no-untyped-def]
    broker, store, _ = parts
    store.create(_job("a"))
    broker.send(RESPONSE_QUEUE, ResultMessage.completed("a", {"y": 2}).to_json(), message_id="a")
    assert _poll(lambda: store.get("a").status is JobStatus.COMPLETED)
    assert store.get("a").output == {"y": 2}
    assert _poll(lambda: broker.depth(RESPONSE_QUEUE) == 0)


def test_a_second_result_for_the_same_job_changes_nothing(parts) -> None:  # type: ignore[no-untyped-def]
    _, store, life = parts
    store.create(_job("b"))
    assert life.apply(ResultMessage.completed("b", {"first": True}))
    assert not life.apply(ResultMessage.failed("b", "ModelError", "late duplicate"))
    assert store.get("b").status is JobStatus.COMPLETED and store.get("b").output == {"first": True}


def test_a_failed_result_carries_code_and_message(parts) -> None:  # type: ignore[no-untyped-def]
    _, store, life = parts
    store.create(_job("c"))
    life.apply(ResultMessage.failed("c", "ModelError", "the model fell over"))
    job = store.get("c")
    assert job.status is JobStatus.FAILED
    assert job.output == {"error": {"code": "ModelError", "message": "the model fell over"}}


def test_a_malformed_result_is_dead_lettered_not_retried(parts) -> None:  # type: ignore[no-untyped-def]
    broker, _, _ = parts
    broker.send(RESPONSE_QUEUE, b"{not json", message_id="junk")
    assert _poll(lambda: len(broker.dead_letters(RESPONSE_QUEUE)) == 1)
    assert broker.depth(RESPONSE_QUEUE) == 0


def test_deadline_fails_a_job_no_worker_took(parts) -> None:  # type: ignore[no-untyped-def]
    _, store, _ = parts
    store.create(_job("late", deadline=time.time() + 0.2))
    store.create(_job("fine", deadline=time.time() + 60))
    assert _poll(lambda: store.get("late").status is JobStatus.FAILED)
    assert store.get("late").output["error"]["code"] == "DeadlineExceeded"
    assert store.get("fine").status is JobStatus.PENDING


def test_sweep_leaves_terminal_jobs_alone() -> None:
    broker, store = MemoryBroker(), MemoryStore()
    life = Lifecycle(broker, store)
    store.create(_job("done", deadline=time.time() - 1))
    store.finish("done", JobStatus.COMPLETED, {"ok": 1}, time.time())
    assert life.sweep(time.time()) == 0
    assert store.get("done").output == {"ok": 1}


@pytest.mark.parametrize("end", ["result", "terminate"])
def test_callback_receives_the_status_document(parts, end: str) -> None:  # type: ignore[no-untyped-def]
    _, store, life = parts
    got: list[dict] = []
    done = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()
            done.set()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store.create(_job("cb", callback_url=f"http://127.0.0.1:{server.server_address[1]}/hook"))
        if end == "result":
            life.apply(ResultMessage.completed("cb", {"label": 7}))
        else:  # what JobService.terminate does: the lifecycle hears it from the store
            store.finish("cb", JobStatus.TERMINATED, "stop", time.time())
        assert done.wait(5)
    finally:
        server.shutdown()
        server.server_close()
    assert got[0]["type"] == ("job.completed" if end == "result" else "job.terminated")
    assert got[0]["data"]["instanceId"] == "cb"
    assert got[0]["data"]["output"] == ({"label": 7} if end == "result" else "stop")
    assert got[0]["data"]["runtimeStatus"] == ("Completed" if end == "result" else "Terminated")


class FlakyBroker(MemoryBroker):
    """A memory broker whose settles fail ``failures`` times, as Redis does while it restarts."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def complete_many(self, deliveries):  # type: ignore[no-untyped-def]
        if self.failures > 0 and deliveries:
            self.failures -= 1
            raise BrokerError("Connection closed by server")
        return super().complete_many(deliveries)


def test_the_results_loop_rides_out_a_failing_broker() -> None:
    """A BrokerError while settling results must not end the results thread: later results
    are still applied (the unsettled ones come back after their lease)."""
    broker, store = FlakyBroker(failures=1), MemoryStore()
    life = Lifecycle(broker, store)
    life.start()
    try:
        store.create(_job("f1"))
        broker.send(RESPONSE_QUEUE, ResultMessage.completed("f1", {"n": 1}).to_json(), message_id="f1")
        assert _poll(lambda: broker.failures == 0)
        store.create(_job("f2"))
        broker.send(RESPONSE_QUEUE, ResultMessage.completed("f2", {"n": 2}).to_json(), message_id="f2")
        assert _poll(lambda: store.get("f2").status is JobStatus.COMPLETED, timeout=10)
        assert store.get("f1").status is JobStatus.COMPLETED
    finally:
        life.stop()
