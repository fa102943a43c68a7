"""The admin API for dead letters (nearline/http/admin.py) over HTTP against a real ``nearline
serve``: list with filters, show, redrive (job back to Pending, request back on the queue),
purge; keys (401 without, 403 with an API key); every bad request a 400 naming the parameter.

The serve runs no workers, so the dead letters this test makes in the server's SQLite file
(as a worker leaves a poison request, see tests/test_dead_letters.py) stay where they are.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
from serving import Server, running_server
from test_dead_letters import dead_job, dlq

from nearline.brokers import open_broker
from nearline.brokers.base import Broker
from nearline.constants import REQUEST_QUEUE
from nearline.http.handlers import Handlers, Request
from nearline.jobs import JobStatus
from nearline.pipelines.spec import Catalog
from nearline.store import open_store
from nearline.store.base import StatusStore
from orchestrations.durable_jobs import DurableJobs

API_KEY, ADMIN_KEY = "api-key-1", "admin-key-1"
ADMIN = {"x-functions-key": ADMIN_KEY}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("admin-api")
    env = {"NEARLINE_API_KEYS": API_KEY, "NEARLINE_ADMIN_KEYS": ADMIN_KEY}
    with running_server(data, "--no-workers", env=env) as s:
        yield s


@pytest.fixture
def system(server: Server) -> Iterator[tuple[Broker, StatusStore]]:
    """The server's own queue and store, with its dead letters emptied first."""
    url = f"sqlite:///{server.data_dir / 'nearline.db'}"
    broker, store = open_broker(url), open_store(url)
    broker.purge_dead_letters(REQUEST_QUEUE, [d.message_id for d in broker.dead_letters(REQUEST_QUEUE)])
    yield broker, store
    broker.close()
    store.close()


def test_dead_letters_are_listed_shown_redriven_and_purged(
    server: Server, system: tuple[Broker, StatusStore]
) -> None:
    broker, store = system
    dead_job(broker, store, "adm-a", "identity", "delivered 5 times without being settled")
    dead_job(broker, store, "adm-b", "digits", "malformed request message")
    dead_job(broker, store, "adm-c", "digits", "delivered 5 times without being settled")
    base = f"{server.url}/api/admin/deadletters"

    listed = httpx.get(base, params={"pipeline": "digits", "reason": "DELIVERED"}, headers=ADMIN)
    assert listed.status_code == 200, listed.text
    [row] = listed.json()["deadLetters"]
    assert (row["id"], row["pipeline"], row["lane"], row["deliveryCount"]) == ("adm-c", "digits", "normal", 1)
    assert [r["id"] for r in httpx.get(base, params={"limit": 2}, headers=ADMIN).json()["deadLetters"]] == [
        "adm-a", "adm-b",
    ]  # fmt: skip
    assert httpx.get(base, params={"older_than_s": 3600}, headers=ADMIN).json()["deadLetters"] == []
    shown = httpx.get(f"{base}/adm-a", headers=ADMIN)
    assert shown.status_code == 200 and shown.json()["message"]["input"] == {"x": 1}

    redriven = httpx.post(f"{base}/redrive", json={"ids": ["adm-a", "nope"]}, headers=ADMIN)
    assert redriven.status_code == 200, redriven.text
    assert redriven.json() == {"redriven": ["adm-a"], "missing": ["nope"]}
    job = store.get("adm-a")
    assert job is not None and (job.status, job.output) == (JobStatus.PENDING, None)
    [again] = broker.receive(REQUEST_QUEUE, 10, wait_s=3)
    assert (again.message_id, again.delivery_count) == ("adm-a", 1)
    broker.complete(again)

    purged = httpx.delete(
        base, params={"all": "true", "pipeline": "digits", "reason": "malformed"}, headers=ADMIN
    )
    assert purged.status_code == 200 and purged.json() == {"purged": 1, "ids": ["adm-b"]}
    assert httpx.delete(base, params={"ids": "adm-c,nope"}, headers=ADMIN).json() == {
        "purged": 1,
        "ids": ["adm-c"],
    }
    assert broker.dead_letters(REQUEST_QUEUE) == []
    assert store.get("adm-b") is not None  # purging a dead letter keeps its job's record
    missing = httpx.get(f"{base}/adm-b", headers=ADMIN)
    assert missing.status_code == 404 and "adm-b" in missing.json()["error"]["message"]


def test_only_an_admin_key_opens_the_admin_routes(server: Server, system: tuple[Broker, StatusStore]) -> None:
    dead_job(*system, "adm-k", "identity", "boom")
    base = f"{server.url}/api/admin/deadletters"
    assert httpx.get(base).status_code == 401
    assert httpx.get(base, headers={"x-functions-key": "wrong"}).status_code == 401
    for response in (
        httpx.get(base, headers={"x-functions-key": API_KEY}),
        httpx.post(f"{base}/redrive", json={"ids": ["adm-k"]}, headers={"x-functions-key": API_KEY}),
        httpx.delete(base, params={"all": "true"}, headers={"x-functions-key": API_KEY}),
    ):
        assert response.status_code == 403 and response.json()["error"]["code"] == "Forbidden"
    assert [d.message_id for d in system[0].dead_letters(REQUEST_QUEUE)] == ["adm-k"]  # nothing changed
    assert httpx.get(base, params={"code": ADMIN_KEY}).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "named"),
    [
        ("GET", "", {"params": {"older_than_s": "nan"}}, "'older_than_s'"),
        ("GET", "", {"params": {"limit": "0"}}, "'limit'"),
        ("GET", "", {"params": {"limit": "2.5"}}, "'limit'"),
        ("GET", "", {"params": {"pipeline": "p" * 300}}, "'pipeline'"),
        ("POST", "/redrive", {"content": b"{not json"}, "request body"),
        ("POST", "/redrive", {"json": ["adm-1"]}, "JSON object"),
        ("POST", "/redrive", {"json": {}}, "'ids'"),
        ("POST", "/redrive", {"json": {"ids": ["a"], "all": True}}, "not both"),
        ("POST", "/redrive", {"json": {"ids": "adm-1"}}, "'ids' must be a list"),
        ("POST", "/redrive", {"json": {"all": True, "limit": -1}}, "'limit'"),
        ("DELETE", "", {}, "'ids'"),
        ("DELETE", "", {"params": {"all": "yes"}}, "'all'"),
    ],
)
def test_a_bad_admin_request_is_a_400_naming_the_parameter(
    server: Server, method: str, path: str, kwargs: dict[str, object], named: str
) -> None:
    r = httpx.request(method, f"{server.url}/api/admin/deadletters{path}", headers=ADMIN, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == 400, r.text
    assert named in r.json()["error"]["message"]


def test_where_the_front_door_cannot_reach_dead_letters_it_says_so(catalog: Catalog) -> None:
    """Azure's job seam has no dead-letter tools (Service Bus's DLQ: `nearline dlq` instead): a 404
    ``NotSupported``, never a 5xx (asking again cannot succeed)."""
    handlers = Handlers(DurableJobs(None, lambda: catalog))
    r = asyncio.run(handlers.handle("admin_deadletters", Request("http://127.0.0.1:7071")))
    assert r.status == 404 and r.body["error"]["code"] == "NotSupported"
    assert "nearline dlq" in r.body["error"]["message"]


def test_the_cli_and_the_api_see_the_same_dead_letters(
    server: Server, system: tuple[Broker, StatusStore]
) -> None:
    dead_job(*system, "adm-x", "identity", "boom")
    url = f"sqlite:///{server.data_dir / 'nearline.db'}"
    listed = dlq(url, "list", "--json")
    api = httpx.get(f"{server.url}/api/admin/deadletters", headers=ADMIN).json()["deadLetters"]
    assert json.loads(listed.stdout) == api
