"""One request table of the HTTP contract (docs/api.md), run through both adapters.

Every route, status code and header of the contract is a row; each row runs through the
Starlette app (``nearline serve``'s, over the store-backed job seam on ``memory://``) and through
the Azure Functions routes (over the Durable-backed seam and the durable-client double), and
both must answer alike: the same status, the same contract headers, the same body shape and
error code. The black-box suites (test_api.py, ...) check the real server end to end; this
checks that the two front doors cannot drift apart.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
import httpx
import pytest
from durable_history import FakeDurableClient
from test_azure_entity import EntityClient

from nearline.api import create_app
from nearline.brokers import open_broker
from nearline.constants import MAX_BODY_BYTES
from nearline.jobs import JobRecord, JobStatus, status_document
from nearline.pipelines.spec import Catalog
from nearline.store import open_store
from nearline.store_jobs import StoreJobs
from orchestrations import http_api, split_readings
from orchestrations.split_readings import SplitReadings

BASE = "https://nearline.example"
ACCEPTED_KEYS = {"id", "statusQueryGetUri", "terminatePostUri", "purgeHistoryDeleteUri"}
DOCUMENT_KEYS = set(status_document(JobRecord("x", "p", None)))
#: Fields one profile adds (docs/api.md): health's queueDepth where the queue is cheap to count.
PROFILE_FIELDS = {"queueDepth"}


@dataclass(frozen=True)
class Answer:
    """What the table compares: status, the contract's headers, body shape and error code."""

    status: int
    headers: dict[str, str]
    body: Any

    def shape(self) -> tuple[Any, ...]:
        body = self.body
        keys = tuple(sorted(set(body) - PROFILE_FIELDS)) if isinstance(body, dict) else None
        code = body.get("error", {}).get("code") if isinstance(body, dict) else None
        status = body.get("runtimeStatus") if isinstance(body, dict) else None
        headers = {k: v for k, v in self.headers.items() if k in ("location", "retry-after")}
        return self.status, tuple(sorted(headers)), headers.get("retry-after"), keys, code, status


class Side:
    """One front door with its own jobs; ``finish`` ends a job as its profile's lifecycle would."""

    def call(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Answer:
        raise NotImplementedError

    def finish(self, job_id: str, output: Any) -> None:
        raise NotImplementedError


class StarletteSide(Side):
    def __init__(self, catalog: Catalog) -> None:
        url = f"memory://table-{uuid.uuid4().hex}"
        self.store = open_store(url)
        jobs = StoreJobs(catalog, open_broker(url), self.store)
        self.app = create_app(jobs)

    def call(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Answer:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
                return await client.request(method, path, content=body, headers=headers)

        r = asyncio.run(go())
        return Answer(r.status_code, {k.lower(): v for k, v in r.headers.items()}, _json(r.content))

    def finish(self, job_id: str, output: Any) -> None:
        assert self.store.finish(job_id, JobStatus.COMPLETED, output, 0.0)


class AzureSide(Side):
    ROUTES = {  # (method, first path segment after /api) → the registered handler's call
        ("POST", "score"): lambda req, c, cat: http_api.submit(req, c, cat),
        ("GET", "jobs"): lambda req, c, cat: http_api.get_job(req, c),
        ("POST", "jobs"): lambda req, c, cat: http_api.terminate(req, c),
        ("DELETE", "jobs"): lambda req, c, cat: http_api.purge(req, c),
        ("GET", "pipelines"): lambda req, c, cat: http_api.list_pipelines(req, cat),
        ("GET", "health"): lambda req, c, cat: http_api.health(req, cat),
        ("GET", "openapi.json"): lambda req, c, cat: http_api.openapi(req, cat),
        ("GET", "endpoints"): lambda req, c, cat: (
            http_api.read_endpoint(req, cat, c) if req.route_params else http_api.list_endpoints(req, cat, c)
        ),
        ("PUT", "endpoints"): lambda req, c, cat: http_api.set_traffic(req, c, cat),
    }

    def __init__(self, catalog: Catalog) -> None:
        self.client: FakeDurableClient = EntityClient()  # with the traffic split's entity
        self.catalog = catalog

    def call(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Answer:
        parts = urlsplit(BASE + path)
        segments = parts.path.removeprefix("/api/").split("/")
        route = {"pipeline": segments[1]} if segments[0] == "score" else {}
        if segments[0] == "jobs":
            route = {"id": segments[1]}
        if segments[0] == "endpoints" and len(segments) > 1:
            route = {"name": segments[1]}
        req = func.HttpRequest(
            method,
            BASE + path,
            headers=headers or {},
            params=dict(parse_qsl(parts.query)),
            route_params=route,
            body=body,
        )
        handler = self.ROUTES[(method, segments[0])]
        resp = asyncio.run(handler(req, self.client, lambda: self.catalog))
        return Answer(
            resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, _json(resp.get_body())
        )

    def finish(self, job_id: str, output: Any) -> None:
        self.client.set(job_id, "Completed", output=output)


def _json(content: bytes) -> Any:
    return json.loads(content) if content else None


@dataclass(frozen=True)
class Row:
    """One request: ``path`` may name ``{pending}``, ``{done}`` or ``{unknown}`` jobs."""

    name: str
    method: str
    path: str
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    expect: int = 200
    code: str | None = None
    #: A body sent first, to the same path with the same headers (a key's first request).
    first: Any = None


IDENTITY = {"input": {"x": 1}}
ROWS = [
    Row("submit", "POST", "/api/score/identity", IDENTITY, expect=202),
    Row("submit with wait=0", "POST", "/api/score/identity?wait=0", IDENTITY, expect=202),
    Row("submit with a key", "POST", "/api/score/identity", IDENTITY, {"Idempotency-Key": "k-1"}, 202),
    Row(
        "reuse a key with another body",
        "POST",
        "/api/score/identity",
        {"input": {"x": 2}},
        {"Idempotency-Key": "k-2"},
        expect=422,
        code="IdempotencyKeyReused",
        first=IDENTITY,
    ),
    Row("malformed JSON", "POST", "/api/score/identity", b"{nope", expect=400, code="BadRequest"),
    Row("body not an object", "POST", "/api/score/identity", [1], expect=400, code="BadRequest"),
    Row("unknown field", "POST", "/api/score/identity", {"input": 1, "x": 2}, expect=400, code="BadRequest"),
    Row("input fails schema", "POST", "/api/score/digits", {"input": {"pixels": [1]}}, expect=400),
    Row("bad priority", "POST", "/api/score/identity", {"input": 1, "priority": "now"}, expect=400),
    Row("bad wait", "POST", "/api/score/identity?wait=31", IDENTITY, expect=400, code="BadRequest"),
    Row("unknown pipeline", "POST", "/api/score/nope", IDENTITY, expect=404, code="UnknownPipeline"),
    Row("body too large", "POST", "/api/score/identity", {"input": "a" * MAX_BODY_BYTES}, expect=413),
    Row("status of a pending job", "GET", "/api/jobs/{pending}", expect=202),
    Row("status of an ended job", "GET", "/api/jobs/{done}", expect=200),
    Row("status with wait of an ended job", "GET", "/api/jobs/{done}?wait=1", expect=200),
    Row("status of an unknown job", "GET", "/api/jobs/{unknown}", expect=404, code="NotFound"),
    Row("terminate a pending job", "POST", "/api/jobs/{pending}/terminate?reason=r", expect=202),
    Row("terminate an ended job", "POST", "/api/jobs/{done}/terminate", expect=410, code="Gone"),
    Row("terminate an unknown job", "POST", "/api/jobs/{unknown}/terminate", expect=404),
    Row("purge an ended job", "DELETE", "/api/jobs/{done}", expect=200),
    Row("purge a pending job", "DELETE", "/api/jobs/{pending}", expect=409, code="Conflict"),
    Row("purge an unknown job", "DELETE", "/api/jobs/{unknown}", expect=404, code="NotFound"),
    Row("pipelines", "GET", "/api/pipelines"),
    Row("health", "GET", "/api/health"),
    Row("OpenAPI", "GET", "/api/openapi.json"),
    Row("endpoints", "GET", "/api/endpoints"),
    Row("one endpoint", "GET", "/api/endpoints/topics"),
    Row("an unknown endpoint", "GET", "/api/endpoints/nope", expect=404, code="UnknownPipeline"),
    Row("change traffic", "PUT", "/api/endpoints/topics/traffic", {"traffic": {"v1": 100}, "reason": "r"}),
    Row(
        "traffic that breaks a rule",
        "PUT",
        "/api/endpoints/topics/traffic",
        {"traffic": {"v1": 90}},
        expect=400,
        code="BadRequest",
    ),
    Row("traffic of an unknown endpoint", "PUT", "/api/endpoints/nope/traffic", {}, expect=404),
]


def answer(side: Side, row: Row) -> Answer:
    """Run ``row`` on ``side``, making the jobs its path names first."""
    path = row.path
    for slot in ("pending", "done"):
        if "{" + slot + "}" in path:
            job = side.call("POST", "/api/score/identity", json.dumps(IDENTITY).encode())
            assert job.status == 202, job
            if slot == "done":
                side.finish(job.body["id"], {"x": 1})
            path = path.replace("{" + slot + "}", job.body["id"])
    path = path.replace("{unknown}", uuid.uuid4().hex)
    headers = {"Content-Type": "application/json", **row.headers}
    if row.first is not None:
        assert side.call(row.method, path, json.dumps(row.first).encode(), headers).status == 202
    body = (
        row.body
        if isinstance(row.body, bytes)
        else b""
        if row.body is None
        else json.dumps(row.body).encode()
    )
    return side.call(row.method, path, body, headers)


SIDES: dict[str, Callable[[Catalog], Side]] = {"starlette": StarletteSide, "azure": AzureSide}


@pytest.fixture(autouse=True)
def fresh_split_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Azure side reads each endpoint's live split once a second per process: not another row's."""
    monkeypatch.setattr(split_readings, "_readings", SplitReadings())


@pytest.fixture(autouse=True)
def installation_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Azure side's keyed ids are HMACs under the app's secret (docs/azure.md, Settings)."""
    monkeypatch.setenv("NEARLINE_SECRET", "contract-table-secret-" + "x" * 16)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_both_front_doors_answer_alike(row: Row, catalog: Catalog) -> None:
    answers = {name: answer(make(catalog), row) for name, make in SIDES.items()}
    for name, got in answers.items():
        assert got.status == row.expect, f"{name}: {got}"
        if row.code:
            assert got.body["error"]["code"] == row.code, f"{name}: {got}"
        if got.status == 202:
            assert got.headers["location"].startswith(BASE + "/api/jobs/"), f"{name}: {got}"
            assert got.headers["retry-after"] == "1"
        if got.status == 202 and row.method == "POST" and "/score/" in row.path:
            assert set(got.body) == ACCEPTED_KEYS
        if row.path.startswith("/api/jobs/") and row.method == "GET":
            assert set(got.body) == (DOCUMENT_KEYS if got.status < 400 else {"error"})
    assert answers["starlette"].shape() == answers["azure"].shape()


def test_idempotent_resubmission_returns_the_same_job_on_both(catalog: Catalog) -> None:
    for name, make in SIDES.items():
        side = make(catalog)
        body = json.dumps(IDENTITY).encode()
        ids = {
            side.call("POST", "/api/score/identity", body, {"Idempotency-Key": "same"}).body["id"]
            for _ in range(3)
        }
        assert len(ids) == 1, name


def test_urls_carry_the_callers_code_on_both(catalog: Catalog) -> None:
    for name, make in SIDES.items():
        got = make(catalog).call("POST", "/api/score/identity?code=k%2B1", json.dumps(IDENTITY).encode())
        assert got.body["statusQueryGetUri"].endswith("?code=k%2B1"), name
        assert got.headers["location"] == got.body["statusQueryGetUri"], name
