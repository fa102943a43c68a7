"""The client's own logic, without a server: URLs, Retry-After, error mapping, polling plans.

Plans are driven by hand (no sleeping: the test reads the Sleep they ask for) or run through
``httpx.MockTransport``. What the server does is tested in test_client.py against a real one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from nearline.client import (
    ApiBadRequest,
    ApiError,
    ApiGone,
    ApiNotFound,
    ApiOverloaded,
    ApiPayloadTooLarge,
    ApiUnauthorized,
    AsyncClient,
    Client,
    ClientError,
    ConnectionFailed,
    JobFailed,
    JobTerminated,
    JobTimeout,
)
from nearline.client.plans import MIN_POLL_S, POLL_FAILURES, wait_plan
from nearline.client.protocol import (
    Call,
    JobLinks,
    Sleep,
    auth_headers,
    retry_after,
    terminate_target,
    with_query,
)
from nearline.errors import NearlineError

BASE = "http://api.test"
AZURE_STATUS = "https://app.azurewebsites.net/api/jobs/j1?code=Ab3%2Fk==&x=1"


def doc(status: str, output: Any = None, job_id: str = "j1") -> dict[str, Any]:
    return {"instanceId": job_id, "name": "identity", "runtimeStatus": status, "output": output}


def reply(
    call: Call | Sleep, status: int = 202, body: Any = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    """The response to ``call``, which must be a Call (not a Sleep)."""
    assert isinstance(call, Call), call
    content = b"" if body is None else json.dumps(body).encode()
    return httpx.Response(
        status, content=content, headers=headers, request=httpx.Request(call.method, call.url)
    )


def accepted(job_id: str = "j1", status_url: str = f"{BASE}/api/jobs/j1") -> dict[str, str]:
    return {
        "id": job_id,
        "statusQueryGetUri": status_url,
        "terminatePostUri": f"{status_url}/terminate?reason={{text}}",
        "purgeHistoryDeleteUri": status_url,
    }


def mock_client(
    handler: Callable[[httpx.Request], httpx.Response], **kw: Any
) -> tuple[Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return Client(BASE, transport=httpx.MockTransport(record), **kw), seen


# --- URLs ---------------------------------------------------------------------------------


def test_with_query_keeps_an_existing_query_verbatim() -> None:
    assert with_query(AZURE_STATUS, wait="30") == f"{AZURE_STATUS}&wait=30"
    assert with_query(f"{BASE}/api/jobs/j1", wait="2.5") == f"{BASE}/api/jobs/j1?wait=2.5"
    assert with_query(f"{BASE}/j?wait=1&code=k", wait="5") == f"{BASE}/j?code=k&wait=5"


def test_terminate_target_fills_durables_placeholder_or_adds_a_query() -> None:
    assert terminate_target(f"{BASE}/t?reason={{text}}&code=k", "no longer needed") == (
        f"{BASE}/t?reason=no%20longer%20needed&code=k"
    )
    assert terminate_target(f"{BASE}/t", "a&b") == f"{BASE}/t?reason=a%26b"


def test_key_header_is_not_sent_to_urls_that_carry_their_own_code() -> None:
    assert auth_headers(f"{BASE}/api/jobs/j1", "k1") == {"x-functions-key": "k1"}
    assert auth_headers(AZURE_STATUS, "k1") == {}
    assert auth_headers(f"{BASE}/api/jobs/j1", None) == {}


def test_base_url_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="absolute"):
        Client("localhost:7071")


# --- Retry-After and errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, 1.0), ("3", 3.0), ("0.5", 0.5), ("-2", 0.0), ("soon", 1.0)],
)
def test_retry_after_delta_seconds(header: str | None, expected: float) -> None:
    call = Call("GET", BASE)
    assert retry_after(reply(call, headers={"Retry-After": header} if header else {}), 1.0) == expected


def test_retry_after_http_date() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    assert 17 < retry_after(reply(Call("GET", BASE), headers={"Retry-After": when}), 1.0) <= 20


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, ApiBadRequest),
        (401, ApiUnauthorized),
        (403, ApiUnauthorized),
        (404, ApiNotFound),
        (410, ApiGone),
        (413, ApiPayloadTooLarge),
        (429, ApiOverloaded),
        (503, ApiOverloaded),
        (500, ApiError),
    ],
)
def test_error_statuses_map_to_typed_errors(status: int, cls: type[ApiError]) -> None:
    body = {"error": {"code": "Code", "message": "what went wrong"}}
    client, _ = mock_client(lambda r: httpx.Response(status, json=body, headers={"Retry-After": "7"}))
    with pytest.raises(cls) as info:
        client.get("j1")
    exc = info.value
    # The client's own tree: the API's error handler must never serve one as a response.
    assert type(exc) is cls and isinstance(exc, ClientError) and not isinstance(exc, NearlineError)
    assert (exc.status, exc.code, exc.message) == (status, "Code", "what went wrong")
    assert str(exc) == f"HTTP {status} Code: what went wrong"
    if isinstance(exc, ApiOverloaded):
        assert exc.retry_after == 7.0


def test_an_error_without_nearlines_body_still_reads_well() -> None:
    client, _ = mock_client(lambda r: httpx.Response(401))  # Azure's front end: empty body
    with pytest.raises(ApiUnauthorized) as info:
        client.pipelines()
    assert info.value.code == "Unauthorized"
    assert f"GET {BASE}/api/pipelines" in str(info.value)


def test_a_non_json_success_body_is_an_api_error() -> None:
    client, _ = mock_client(lambda r: httpx.Response(200, text="<html>proxy</html>"))
    with pytest.raises(ApiError, match="not JSON"):
        client.health()


def test_connection_failure_names_the_url_without_its_key() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    client, _ = mock_client(refuse)
    job = client.job("j1")
    job.links = JobLinks("j1", AZURE_STATUS, AZURE_STATUS, AZURE_STATUS)
    with pytest.raises(ConnectionFailed) as info:
        job.status()
    assert str(info.value) == "cannot reach https://app.azurewebsites.net/api/jobs/j1: Connection refused"


def test_job_failed_and_terminated_carry_the_document() -> None:
    failed = doc("Failed", {"error": {"code": "DeadlineExceeded", "message": "too late"}})
    exc = JobFailed(failed)
    assert (exc.code, exc.message, exc.document, exc.job_id) == ("DeadlineExceeded", "too late", failed, "j1")
    assert str(exc) == "job j1 failed: DeadlineExceeded: too late"
    assert JobTerminated(doc("Terminated", "user asked")).reason == "user asked"
    timeout = JobTimeout("j1", 2.0, doc("Running"))
    assert isinstance(timeout, TimeoutError) and "Running" in str(timeout)


# --- submit -------------------------------------------------------------------------------


def test_submit_takes_urls_from_the_answer_and_sends_the_body() -> None:
    client, seen = mock_client(lambda r: httpx.Response(202, json=accepted(status_url=AZURE_STATUS)))
    job = client.submit("digits", {"x": 1}, priority="high", timeout_s=5, idempotency_key="k")
    assert job.id == "j1" and job.status_url == AZURE_STATUS and job.document is None
    request = seen[0]
    assert request.url == f"{BASE}/api/score/digits"
    assert json.loads(request.content) == {"input": {"x": 1}, "priority": "high", "timeout_s": 5}
    assert request.headers["idempotency-key"] == "k"


def test_submit_falls_back_to_location_when_the_body_has_no_urls() -> None:
    where = "https://elsewhere.test/status/j1?sig=abc"
    client, _ = mock_client(lambda r: httpx.Response(202, json={"id": "j1"}, headers={"Location": where}))
    job = client.submit("identity", {})
    assert job.status_url == where
    assert job.terminate_url == "https://elsewhere.test/status/j1/terminate?sig=abc"


def test_submit_with_wait_that_ends_in_time_needs_no_more_requests() -> None:
    client, seen = mock_client(lambda r: httpx.Response(200, json=doc("Completed", {"y": 2})))
    job = client.submit("identity", {"y": 2}, wait=2.5)
    assert seen[0].url.params["wait"] == "2.5"
    assert job.result() == {"y": 2} and len(seen) == 1
    with pytest.raises(ValueError, match="wait"):
        client.submit("identity", {}, wait=31)


def overloaded_then_accepted(refusals: int, body: Any) -> Callable[[httpx.Request], httpx.Response]:
    count = iter(range(1_000))

    def handle(request: httpx.Request) -> httpx.Response:
        if next(count) < refusals:
            return httpx.Response(503, json=body, headers={"Retry-After": "0"})
        return httpx.Response(202, json=accepted())

    return handle


def test_submit_resends_nearlines_overloaded_refusal() -> None:
    client, seen = mock_client(
        overloaded_then_accepted(2, {"error": {"code": "Overloaded", "message": "full"}})
    )
    assert client.submit("identity", {}).id == "j1"
    assert len(seen) == 3


def test_submit_resends_a_bare_503_only_with_an_idempotency_key() -> None:
    client, seen = mock_client(overloaded_then_accepted(1, None))
    with pytest.raises(ApiOverloaded):
        client.submit("identity", {})
    assert len(seen) == 1
    client, seen = mock_client(overloaded_then_accepted(1, None))
    assert client.submit("identity", {}, idempotency_key="k").id == "j1"
    assert len(seen) == 2


def test_submit_gives_up_after_max_retries() -> None:
    body = {"error": {"code": "Overloaded", "message": "full"}}
    client, seen = mock_client(overloaded_then_accepted(10, body), max_retries=2)
    with pytest.raises(ApiOverloaded, match="full"):
        client.submit("identity", {})
    assert len(seen) == 3


# --- waiting for the end ------------------------------------------------------------------


def test_wait_long_polls_then_honours_retry_after_when_wait_is_ignored() -> None:
    links = JobLinks("j1", AZURE_STATUS, AZURE_STATUS, AZURE_STATUS)
    plan = wait_plan(links, timeout=60)
    first = next(plan)
    assert isinstance(first, Call) and first.url == f"{AZURE_STATUS}&wait=30"
    assert first.hold == 30.0  # min(remaining, 30 s)
    # The server answers at once, twice, with the same status: it ignores `wait`.
    second = plan.send(reply(first, body=doc("Pending"), headers={"Retry-After": "3"}))
    assert isinstance(second, Call) and "wait=" in second.url
    pause = plan.send(reply(second, body=doc("Pending"), headers={"Retry-After": "3"}))
    assert pause == Sleep(3.0)
    third = next(plan)
    assert isinstance(third, Call) and third.url == AZURE_STATUS and third.hold == 0
    with pytest.raises(StopIteration) as done:
        plan.send(reply(third, 200, doc("Completed", 1)))
    assert done.value.value["output"] == 1


def test_wait_follows_location_and_paces_by_retry_after_zero_with_a_floor() -> None:
    plan = wait_plan(JobLinks.for_id(BASE, "j1"), timeout=60)
    call = next(plan)
    moved = f"{BASE}/moved/j1"
    call = plan.send(reply(call, body=doc("Pending"), headers={"Location": moved, "Retry-After": "0"}))
    assert isinstance(call, Call) and call.url.startswith(f"{moved}?wait=")
    assert plan.send(reply(call, body=doc("Pending"), headers={"Retry-After": "0"})) == Sleep(MIN_POLL_S)


def test_wait_drops_the_wait_parameter_when_a_server_refuses_it() -> None:
    plan = wait_plan(JobLinks.for_id(BASE, "j1"), timeout=60)
    call = next(plan)
    refused = {"error": {"code": "BadRequest", "message": "unknown parameter wait"}}
    call = plan.send(reply(call, 400, refused))
    assert isinstance(call, Call) and call.url == f"{BASE}/api/jobs/j1"


def test_wait_rides_out_a_few_connection_failures() -> None:
    plan = wait_plan(JobLinks.for_id(BASE, "j1"), timeout=60)
    step = next(plan)
    for n in range(1, POLL_FAILURES + 1):
        assert plan.throw(ConnectionFailed(BASE, "reset")) == Sleep(0.5 * n)
        step = next(plan)
        assert isinstance(step, Call)
    with pytest.raises(ConnectionFailed):
        plan.throw(ConnectionFailed(BASE, "reset"))


def test_with_a_callback_the_first_read_is_plain_and_changes_are_reported() -> None:
    seen: list[str] = []
    plan = wait_plan(
        JobLinks.for_id(BASE, "j1"), timeout=60, on_update=lambda d: seen.append(d["runtimeStatus"])
    )
    call = next(plan)
    assert isinstance(call, Call) and call.hold == 0
    call = plan.send(reply(call, body=doc("Pending")))
    assert isinstance(call, Call) and call.hold > 0
    call = plan.send(reply(call, body=doc("Running")))
    with pytest.raises(StopIteration):
        plan.send(reply(call, 200, doc("Completed")))
    assert seen == ["Pending", "Running", "Completed"]


def test_result_raises_job_timeout_when_the_time_runs_out() -> None:
    client, seen = mock_client(
        lambda r: httpx.Response(202, json=doc("Pending"), headers={"Retry-After": "0"})
    )
    started = time.monotonic()
    with pytest.raises(JobTimeout) as info:
        client.job("j1").result(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 2
    assert info.value.document == doc("Pending") and 2 <= len(seen) <= 6


def test_async_client_runs_the_same_plans() -> None:
    answers = iter(
        [httpx.Response(202, json=accepted()), httpx.Response(200, json=doc("Failed", {"error": {}}))]
    )

    async def main() -> None:
        transport = httpx.MockTransport(lambda r: next(answers))
        async with AsyncClient(BASE, "k1", transport=transport) as client:
            job = await client.submit("identity", {})
            with pytest.raises(JobFailed) as info:
                await job.result(timeout=5)
            assert info.value.code == "JobFailed"

    asyncio.run(main())
