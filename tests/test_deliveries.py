"""The callback dispatcher (`nearline.deliveries`): retries, giving up, leases across replicas,
and, through a real `nearline serve`, deliveries that survive `kill -9`.

Receivers are on 127.0.0.1 and reached because the allow-list names it; every event they get is
verified with the Standard Webhooks reference library (`standardwebhooks`).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import require_server
from serving import free_port, running_server, start_server
from standardwebhooks.webhooks import Webhook
from waiting import wait_until

from nearline.addresses import AllowList
from nearline.brokers import open_broker
from nearline.callback_sender import CallbackSender
from nearline.callbacks import CallbackGuard
from nearline.client import Client
from nearline.constants import RESPONSE_QUEUE, WEBHOOK_MAX_RETRY_S
from nearline.deliveries import Dispatcher, retry_delay
from nearline.jobs import JobRecord, JobStatus
from nearline.messages import ResultMessage
from nearline.settings import WebhookSettings
from nearline.store.base import StatusStore
from nearline.store.memory import MemoryStore
from nearline.store.sqlite import SqliteStore
from nearline.webhooks import parse_secrets, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#: Redis database of the Redis variant of the kill -9 test (issue #14's), emptied around it.
REDIS_DB = 3
FAST = WebhookSettings(secrets=parse_secrets(SECRET), retry_s=0.05, max_age_s=60, max_attempts=5)


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: answers each request with the next of ``answers``
    (the last one repeats) and keeps what it got."""

    answers: list[tuple[int, dict[str, str]]]
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def events(self) -> list[dict[str, Any]]:
        """Every request, verified by the reference library (raises if one does not verify)."""
        return [Webhook(SECRET).verify(body, headers) for headers, body in self.got]


@contextmanager
def receiver(*answers: int | tuple[int, dict[str, str]]) -> Iterator[Receiver]:
    r = Receiver([a if isinstance(a, tuple) else (a, {}) for a in answers] or [(204, {})])
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                r.got.append((dict(self.headers), body))
                status, headers = r.answers[min(len(r.got), len(r.answers)) - 1]
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    r.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield r
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def dispatcher(store: StatusStore, settings: WebhookSettings = FAST, **kw: Any) -> Dispatcher:
    return Dispatcher(store, CallbackSender(CallbackGuard(AllowList.parse("127.0.0.1/32"))), settings, **kw)


def end_job(store: StatusStore, url: str, status: JobStatus = JobStatus.COMPLETED, output: Any = None) -> str:
    job_id = f"{time.time_ns():032x}"[-32:]
    now = time.time()
    store.create(JobRecord(job_id, "identity", {"n": 1}, created=now, updated=now, callback_url=url))
    store.finish(job_id, status, {"n": 1} if output is None else output, time.time())
    return job_id


def callback(store: StatusStore, job_id: str) -> dict[str, Any]:
    job = store.get(job_id)
    assert job is not None and isinstance(job.custom_status, dict)
    state: dict[str, Any] = job.custom_status["callback"]
    return state


@contextmanager
def running(d: Dispatcher) -> Iterator[Dispatcher]:
    d.start()
    try:
        yield d
    finally:
        d.stop()


def settled(store: StatusStore, job_id: str) -> Callable[[], bool]:
    return lambda: callback(store, job_id)["state"] != "Pending"


# --- retries ----------------------------------------------------------------------------------


def test_a_receiver_that_fails_twice_then_accepts_gets_the_event_on_the_third_attempt() -> None:
    store = MemoryStore()
    with receiver(503, 502, 200) as hook, running(dispatcher(store)) as d:
        job_id = end_job(store, hook.url)
        d.wake()
        wait_until(settled(store, job_id), 10, "the delivery to settle")
    events = hook.events()
    assert len(events) == 3 and all(e == events[0] for e in events)  # the same event each time
    assert events[0]["type"] == "job.completed" and events[0]["data"]["instanceId"] == job_id
    assert events[0]["data"]["customStatus"] is None  # the delivery's own state is not in it
    assert {h["webhook-id"] for h, _ in hook.got} == {f"msg_{job_id}"}  # receivers can deduplicate
    state = callback(store, job_id)
    assert (state["state"], state["attempts"], state["lastStatus"]) == ("Delivered", 3, 200)
    assert {
        s.labels["outcome"]: s.value for s in d.outcomes.collect()[0].samples if s.name.endswith("_total")
    } == {
        "retried": 2.0,
        "delivered": 1.0,
    }


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422, 301])
def test_a_refusing_answer_ends_the_delivery_at_once(status: int) -> None:
    store = MemoryStore()
    with receiver(status) as hook, running(dispatcher(store)) as d:
        job_id = end_job(store, hook.url, JobStatus.FAILED, {"error": {"code": "ModelError", "message": "x"}})
        d.wake()  # what the lifecycle does when a job ends
        wait_until(settled(store, job_id), 10, "the delivery to settle")
    assert len(hook.got) == 1
    state = callback(store, job_id)
    assert (state["state"], state["attempts"], state["lastStatus"]) == ("GivenUp", 1, status)
    assert hook.events()[0]["type"] == "job.failed"


def test_a_receiver_that_keeps_failing_is_given_up_after_max_attempts() -> None:
    store = MemoryStore()
    with receiver(500) as hook, running(dispatcher(store)) as d:
        job_id = end_job(store, hook.url, JobStatus.TERMINATED, "stop")
        d.wake()
        wait_until(settled(store, job_id), 20, "the delivery to settle")
    assert len(hook.got) == FAST.max_attempts
    state = callback(store, job_id)
    assert (state["state"], state["attempts"], state["lastStatus"]) == ("GivenUp", 5, 500)
    assert state["nextAttemptTime"] is None


def test_retry_after_is_honoured_and_shown() -> None:
    store = MemoryStore()
    with receiver((429, {"Retry-After": "30"})) as hook:
        d = dispatcher(store)
        job_id = end_job(store, hook.url)
        (delivery,) = store.claim_deliveries(time.time(), 60, 1)
        before = time.time()
        assert d.attempt(delivery) == "retried"
    state = callback(store, job_id)
    assert (state["state"], state["lastStatus"]) == ("Pending", 429)
    assert store.claim_deliveries(before + 29, 60, 1) == []
    assert len(store.claim_deliveries(time.time() + 31, 60, 1)) == 1


def test_a_delivery_older_than_max_age_is_given_up_unsent() -> None:
    store = MemoryStore()
    with receiver() as hook:
        job_id = end_job(store, hook.url)
        (delivery,) = store.claim_deliveries(time.time(), 60, 1)
        short = WebhookSettings(retry_s=0.05, max_age_s=0.001, max_attempts=5)
        time.sleep(0.01)  # older than max_age_s: the point of the test, not a wait for something
        assert dispatcher(store, short).attempt(delivery) == "given_up"
    assert hook.got == []
    assert "older than" in callback(store, job_id)["lastError"]


def test_a_purged_job_is_not_called_back() -> None:
    store = MemoryStore()
    with receiver() as hook:
        job_id = end_job(store, hook.url)
        store.delete(job_id)
        (delivery,) = store.claim_deliveries(time.time(), 60, 1)
        assert dispatcher(store).attempt(delivery) == "given_up"
    assert hook.got == []


def test_a_url_refused_when_sent_is_given_up_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    job_id = end_job(store, "http://127.0.0.1:9/hook")
    (delivery,) = store.claim_deliveries(time.time(), 60, 1)
    d = Dispatcher(store, CallbackSender(CallbackGuard()), FAST)  # loopback not allowed
    assert d.attempt(delivery) == "given_up"
    state = callback(store, job_id)
    assert state["attempts"] == 1 and "not a public address (loopback)" in state["lastError"]
    assert any(f"callback of job {job_id} given up" in r.getMessage() for r in caplog.records)


def test_retry_delays_double_with_jitter_up_to_the_cap_and_respect_retry_after() -> None:
    cfg = WebhookSettings(retry_s=5.0)
    for attempts, base in [
        (1, 5.0),
        (2, 10.0),
        (3, 20.0),
        (12, WEBHOOK_MAX_RETRY_S),
        (60, WEBHOOK_MAX_RETRY_S),
    ]:
        delays = [retry_delay(cfg, attempts) for _ in range(200)]
        assert base * 0.5 <= min(delays) and max(delays) <= base
        assert max(delays) - min(delays) > base * 0.1  # jittered, not all at once
    assert retry_delay(cfg, 1, retry_after=120) == 120
    assert retry_delay(cfg, 1, retry_after=10**9) == WEBHOOK_MAX_RETRY_S


# --- several replicas ---------------------------------------------------------------------------


def test_dispatchers_of_several_replicas_deliver_each_event_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nearline.db'}"
    stores = [SqliteStore(url) for _ in range(3)]
    with receiver() as hook:
        ids = {end_job(stores[0], hook.url) for _ in range(30)}
        ds = [dispatcher(s) for s in stores]
        for d in ds:
            d.start()
        try:
            wait_until(lambda: len(hook.got) >= len(ids), 20, lambda: f"30 deliveries, got {len(hook.got)}")
            wait_until(
                lambda: all(callback(stores[0], i)["state"] == "Delivered" for i in ids), 10, "settles"
            )
        finally:
            for d in ds:
                d.stop()
    delivered = [h["webhook-id"] for h, _ in hook.got]
    assert sorted(delivered) == sorted(f"msg_{i}" for i in ids)  # each exactly once
    for s in stores:
        s.close()


# --- black box: nearline serve ------------------------------------------------------------------


def serve_env(**extra: str) -> dict[str, str]:
    return {
        "NEARLINE_CALLBACK_ALLOW": "127.0.0.1/32",
        "NEARLINE_WEBHOOK_SECRET": SECRET,
        "NEARLINE_WEBHOOK_RETRY_S": "0.2",
        **extra,
    }


def submit(base: str, url: str, **body: Any) -> str:
    answer = httpx.post(f"{base}/api/score/identity", json={"input": {"n": 1}, "callback_url": url, **body})
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def custom_callback(base: str, job_id: str) -> dict[str, Any] | None:
    custom = httpx.get(f"{base}/api/jobs/{job_id}").json()["customStatus"]
    return custom["callback"] if custom else None


@pytest.mark.slow
def test_serve_delivers_every_kind_of_event_on_the_third_attempt_after_two_failures(tmp_path: Path) -> None:
    """The issue's "done when": completed, failed and terminated events, each verified by the
    reference library on the third attempt, the state visible in the status document."""
    with (
        receiver(503, 500, 204) as first,
        receiver(503, 500, 204) as second,
        receiver(503, 500, 204) as third,
        running_server(tmp_path, "--no-workers", env=serve_env()) as server,
    ):
        with Client(server.url) as client:  # the Python client registers a callback too
            done = client.submit("identity", {"n": 1}, callback_url=first.url).id
        late = submit(server.url, second.url, timeout_s=0.5)  # fails DeadlineExceeded
        stopped = submit(server.url, third.url)
        broker = open_broker(f"sqlite:///{tmp_path / 'nearline.db'}")
        try:  # what a worker does: the result goes on the response queue
            broker.send(RESPONSE_QUEUE, ResultMessage.completed(done, {"n": 2}).to_json(), message_id=done)
        finally:
            broker.close()
        httpx.post(f"{server.url}/api/jobs/{stopped}/terminate?reason=enough")
        for job_id in (done, late, stopped):
            state = wait_until(
                lambda j=job_id: (c := custom_callback(server.url, j)) and c["state"] != "Pending" and c,  # type: ignore[misc]
                20,
                f"the callback of {job_id} to settle",
            )
            assert (state["state"], state["attempts"], state["lastStatus"]) == ("Delivered", 3, 204)
        metrics = httpx.get(f"{server.url}/metrics").text
    for hook, kind, output in [
        (first, "job.completed", {"n": 2}),
        (second, "job.failed", None),
        (third, "job.terminated", "enough"),
    ]:
        events = hook.events()
        assert len(events) == 3 and events[0] == events[2]
        assert events[0]["type"] == kind
        if output is not None:
            assert events[0]["data"]["output"] == output
    assert events[0]["data"]["instanceId"] == stopped
    headers, body = first.got[-1]
    assert verify(body, headers, SECRET)["data"]["instanceId"] == done  # and nearline's own check
    assert second.events()[0]["data"]["output"]["error"]["code"] == "DeadlineExceeded"
    assert 'nearline_callback_deliveries_total{outcome="delivered"} 3.0' in metrics
    assert 'nearline_callback_deliveries_total{outcome="retried"} 6.0' in metrics


def _redis_broker() -> tuple[str, ...]:
    require_server("Redis", "127.0.0.1", 6379)
    import redis

    with redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB) as r:
        r.flushdb()
    return ("--broker", f"redis://127.0.0.1:6379/{REDIS_DB}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_a_delivery_pending_when_serve_is_killed_arrives_after_the_restart(
    tmp_path: Path, backend: str
) -> None:
    args = ("--no-workers", *(_redis_broker() if backend == "redis" else ()))
    env = serve_env(NEARLINE_WEBHOOK_RETRY_S="3")  # the retry comes due after the kill
    try:
        with receiver(503, 204) as hook:
            server = start_server(tmp_path, *args, env=env)
            try:
                job_id = submit(server.url, hook.url)
                httpx.post(f"{server.url}/api/jobs/{job_id}/terminate?reason=stop")
                wait_until(
                    lambda: (custom_callback(server.url, job_id) or {}).get("attempts") == 1,
                    10,
                    "the first attempt",
                )
            finally:
                server.kill()  # SIGKILL: nothing is flushed or handed over
            assert len(hook.got) == 1
            with running_server(tmp_path, *args, env=env, port=int(server.url.rsplit(":", 1)[1])) as again:
                state = wait_until(
                    lambda: (c := custom_callback(again.url, job_id)) and c["state"] == "Delivered" and c,
                    30,
                    "the delivery after the restart",
                )
        assert (state["attempts"], state["lastStatus"]) == (2, 204)
        events = hook.events()
        assert len(events) == 2 and events[0] == events[1] and events[1]["type"] == "job.terminated"
    finally:
        if backend == "redis":
            import redis

            with redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB) as r:
                r.flushdb()


@pytest.mark.slow
def test_serve_refuses_a_callback_to_loopback_unless_allowed_and_names_why(tmp_path: Path) -> None:
    with running_server(tmp_path, "--no-workers") as server:
        answer = httpx.post(
            f"{server.url}/api/score/identity",
            json={"input": {}, "callback_url": f"{server.url}/api/jobs/x/terminate"},
        )
    error = answer.json()["error"]
    assert (answer.status_code, error["code"]) == (400, "CallbackRefused")
    assert "127.0.0.1, not a public address (loopback)" in error["message"]
    assert "NEARLINE_CALLBACK_ALLOW" in error["message"]


@pytest.mark.slow
def test_a_large_jobs_event_links_to_the_job_instead_of_carrying_it(tmp_path: Path) -> None:
    big = {"values": list(range(30_000))}  # ~170 KB of input: over the inline limit
    with receiver() as hook, running_server(tmp_path, "--no-workers", env=serve_env()) as server:
        urls = httpx.post(
            f"{server.url}/api/score/identity", json={"input": big, "callback_url": hook.url}
        ).json()
        httpx.post(urls["terminatePostUri"].replace("{text}", "enough"))
        wait_until(lambda: hook.got, 10, "the event")
        (event,) = hook.events()
        assert event["omitted"] == ["input", "output"] and event["data"]["input"] is None
        assert event["statusQueryGetUri"] == urls["statusQueryGetUri"]
        assert httpx.get(event["statusQueryGetUri"]).json()["input"] == big
    assert len(hook.got[0][1]) < 64 * 1024


@pytest.mark.slow
def test_the_receiver_in_the_docs_verifies_events_and_refuses_forgeries(tmp_path: Path) -> None:
    """docs/webhooks.md's ten-line receiver, run as written (on a free loopback port)."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "webhooks.md").read_text()
    code = doc.split("<!-- webhooks-test: receiver -->\n```python\n", 1)[1].split("```", 1)[0]
    port = free_port()
    code = code.replace('("0.0.0.0", 8000)', f'("127.0.0.1", {port})')
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        wait_until(lambda: _listening(port), 20, "the receiver to listen")
        store = MemoryStore()
        job_id = end_job(store, f"http://127.0.0.1:{port}/hook")
        (delivery,) = store.claim_deliveries(time.time(), 60, 1)
        assert dispatcher(store).attempt(delivery) == "delivered"
        forged = httpx.post(f"http://127.0.0.1:{port}/", content=b"{}", headers={"webhook-id": "x"})
        assert forged.status_code == 401
        assert proc.stdout is not None and proc.stdout.readline().split() == ["job.completed", job_id]
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False
