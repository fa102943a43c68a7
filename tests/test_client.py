"""The client against real ``nearline serve`` subprocesses (memory:// broker).

Two servers, shared with test_client_cli.py (conftest.py): ``server`` scores jobs; ``idle`` runs
no workers (jobs stay Pending until they are terminated or their deadline passes) and requires
the key ``k1``.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from conftest import IDLE_KEY
from serving import Server, free_port

from nearline.client import (
    ApiBadRequest,
    ApiError,
    ApiGone,
    ApiNotFound,
    ApiPayloadTooLarge,
    ApiUnauthorized,
    AsyncClient,
    Client,
    ConnectionFailed,
    JobFailed,
    JobTerminated,
    JobTimeout,
)

pytestmark = pytest.mark.slow
KEY = IDLE_KEY
PIXELS = [float((i * 7) % 17) for i in range(64)]


@pytest.fixture(scope="module")
def server(memory_server: Server) -> Server:
    """The session's ``memory://`` server with a worker (conftest.py; test_client_cli.py's too)."""
    return memory_server


@pytest.fixture(scope="module")
def idle(memory_idle_server: Server) -> Server:
    """The session's ``memory://`` server with no workers, requiring :data:`KEY` (conftest.py)."""
    return memory_idle_server


class CountingTransport(httpx.HTTPTransport):
    """A real HTTP transport that remembers the requests it sent."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return super().handle_request(request)


def test_health_and_pipelines(server: Server) -> None:
    with Client(server.url) as client:
        assert client.health()["status"] == "ok"
        pipelines = {p["name"]: p for p in client.pipelines()}
    assert {"digits", "topics", "identity"} <= set(pipelines)
    assert pipelines["digits"]["inputSchema"]["required"] == ["pixels"]


def test_identity_round_trip(server: Server) -> None:
    payload = {"a": [1, 2.5, "x"], "b": {"c": None}}
    with Client(server.url) as client:
        job = client.submit("identity", payload)
        assert job.status_url.startswith(f"{server.url}/api/jobs/{job.id}")
        assert job.result(timeout=30) == payload
        assert job.document is not None and job.document["runtimeStatus"] == "Completed"
        assert client.get(job.id)["output"] == payload


def test_digits_round_trip(server: Server) -> None:
    with Client(server.url) as client:
        output = client.submit("digits", {"pixels": PIXELS}).result(timeout=30)
    assert output["label"] in range(10)
    assert len(output["probabilities"]) == 10 and sum(output["probabilities"]) == pytest.approx(1.0, abs=1e-3)


def test_submit_with_wait_brings_the_document_back(server: Server) -> None:
    transport = CountingTransport()
    with Client(server.url, transport=transport) as client:
        job = client.submit("identity", {"n": 1}, wait=10)
        assert job.document is not None and job.document["runtimeStatus"] == "Completed"
        assert job.result() == {"n": 1}
        assert job.status()["instanceId"] == job.id
    assert [r.method for r in transport.requests] == ["POST", "GET"]


def test_idempotency_key_maps_to_one_job(server: Server) -> None:
    with Client(server.url) as client:
        first = client.submit("identity", {"v": 1}, idempotency_key="order-17")
        again = client.submit("identity", {"v": 1}, idempotency_key="order-17")
        other = client.submit("digits", {"pixels": PIXELS}, idempotency_key="order-17")
        assert again.id == first.id != other.id
        assert again.result(timeout=30) == {"v": 1}
        with pytest.raises(ApiError) as reused:  # the key, for another request (docs/api.md)
            client.submit("identity", {"v": 2}, idempotency_key="order-17")
        assert (reused.value.status, reused.value.code) == (422, "IdempotencyKeyReused")


def test_request_errors_are_typed(server: Server) -> None:
    with Client(server.url) as client:
        with pytest.raises(ApiBadRequest, match="pixels") as bad:
            client.submit("digits", {"pixels": [1, 2, 3]})
        assert bad.value.status == 400 and bad.value.code == "InvalidInput"
        with pytest.raises(ApiNotFound):
            client.submit("no-such-pipeline", {})
        with pytest.raises(ApiNotFound):
            client.get("0" * 32)
        with pytest.raises(ApiPayloadTooLarge):
            client.submit("identity", {"blob": "x" * 1_100_000})


def test_keys(idle: Server) -> None:
    with Client(idle.url) as client, pytest.raises(ApiUnauthorized):
        client.pipelines()
    with Client(idle.url, "wrong") as client, pytest.raises(ApiUnauthorized, match="not valid"):
        client.pipelines()
    with Client(idle.url, KEY) as client:
        assert client.pipelines()


def test_terminate_then_purge(idle: Server) -> None:
    with Client(idle.url, KEY) as client:
        job = client.submit("identity", {})
        job.terminate("not needed any more")
        with pytest.raises(JobTerminated) as info:
            job.result(timeout=10)
        assert info.value.reason == "not needed any more" and info.value.job_id == job.id
        with pytest.raises(ApiGone):
            job.terminate()
        job.purge()
        with pytest.raises(ApiNotFound):
            client.get(job.id)


def test_a_job_past_its_deadline_fails(idle: Server) -> None:
    with Client(idle.url, KEY) as client:
        job = client.submit("identity", {}, timeout_s=0.2)
        with pytest.raises(JobFailed) as info:
            job.result(timeout=10)
    assert info.value.code == "DeadlineExceeded"
    assert info.value.document["runtimeStatus"] == "Failed"


def test_result_long_polls_and_times_out(idle: Server) -> None:
    transport = CountingTransport()
    with Client(idle.url, KEY, transport=transport) as client:
        job = client.submit("identity", {}, timeout_s=60)
        started = time.monotonic()
        with pytest.raises(JobTimeout) as info:
            job.result(timeout=1.5)
        assert 1.5 <= time.monotonic() - started < 3
        job.terminate()
    assert isinstance(info.value, TimeoutError) and info.value.document is not None
    polls = [r for r in transport.requests if r.method == "GET"]
    # Held requests, not polling: one (or two, when the hold ends a hair before our deadline).
    assert 1 <= len(polls) <= 2 and all("wait" in r.url.params for r in polls)
    assert polls[0].url.params["wait"] == "1.5"


def test_unreachable_server() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url) as client, pytest.raises(ConnectionFailed, match=f"cannot reach {url}/api/health"):
        client.health()


def test_async_client(server: Server, idle: Server) -> None:
    async def main() -> None:
        async with AsyncClient(server.url) as client:
            jobs = [await client.submit("identity", {"i": i}) for i in range(5)]
            assert await asyncio.gather(*(j.result(timeout=30) for j in jobs)) == [{"i": i} for i in range(5)]
            waited = await client.submit("digits", {"pixels": PIXELS}, wait=10)
            assert waited.document is not None and (await waited.result())["label"] in range(10)
            assert (await client.get(waited.id))["runtimeStatus"] == "Completed"
            assert {p["name"] for p in await client.pipelines()} >= {"digits", "identity"}
            with pytest.raises(ApiNotFound):
                await client.get("0" * 32)
        async with AsyncClient(idle.url, KEY) as client:
            job = await client.submit("identity", {})
            await job.terminate("bye")
            with pytest.raises(JobTerminated):
                await job.result(timeout=10)

    asyncio.run(main())
