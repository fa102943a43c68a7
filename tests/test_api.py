"""Black-box tests of the HTTP contract (docs/api.md) against a real `nearline serve` subprocess."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serving import Server, running_server

from nearline.jobs import JobRecord, status_document

pytestmark = pytest.mark.slow

DIGIT_ZERO = [
    0,
    0,
    5,
    13,
    9,
    1,
    0,
    0,
    0,
    0,
    13,
    15,
    10,
    15,
    5,
    0,
    0,
    3,
    15,
    2,
    0,
    11,
    8,
    0,
    0,
    4,
    12,
    0,
    0,
    8,
    8,
    0,
    0,
    5,
    8,
    0,
    0,
    9,
    8,
    0,
    0,
    4,
    11,
    0,
    1,
    12,
    7,
    0,
    0,
    2,
    14,
    5,
    10,
    12,
    0,
    0,
    0,
    0,
    6,
    13,
    10,
    0,
    0,
    0,
]  # load_digits().data[0], a zero
STATUS_KEYS = set(status_document(JobRecord("x", "p", None)))


@pytest.fixture(scope="module")
def server(example_server: Server) -> Server:
    """The session's default ``nearline serve`` (conftest.py; test_readme.py's too)."""
    return example_server


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with no workers: jobs stay queued, so what is enqueued can be counted."""
    with running_server(tmp_path_factory.mktemp("idle"), "--no-workers", "--max-body", "4096") as s:
        yield s


def depth(server: Server) -> int:
    return int(httpx.get(f"{server.url}/api/health").json()["queueDepth"])


def score(
    server: Server, pipeline: str, input: object, wait: float | None = None, **kw: object
) -> httpx.Response:
    params = {"wait": wait} if wait is not None else {}
    return httpx.post(
        f"{server.url}/api/score/{pipeline}", params=params, json={"input": input, **kw}, timeout=40
    )


def test_digits_end_to_end_with_long_poll(server: Server) -> None:
    r = score(server, "digits", {"pixels": DIGIT_ZERO}, wait=20)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert set(doc) == STATUS_KEYS and doc["runtimeStatus"] == "Completed" and doc["name"] == "digits"
    assert doc["output"]["label"] == 0 and len(doc["output"]["probabilities"]) == 10
    assert doc["createdTime"].endswith("Z") and doc["lastUpdatedTime"] >= doc["createdTime"]


def test_topics_through_202_and_polling(server: Server) -> None:
    r = score(server, "topics", {"text": "The central bank raised interest rates to fight inflation."})
    assert r.status_code == 202
    body = r.json()
    assert set(body) == {"id", "statusQueryGetUri", "terminatePostUri", "purgeHistoryDeleteUri"}
    assert r.headers["Location"] == body["statusQueryGetUri"].split("?")[0]
    assert r.headers["Location"].startswith(server.url + "/api/jobs/") and r.headers["Retry-After"] == "1"
    status = httpx.get(body["statusQueryGetUri"], params={"wait": 20}, timeout=30)
    assert status.status_code == 200 and status.json()["output"]["label"] == "business"


def test_status_is_202_with_location_while_pending(idle: Server) -> None:
    job = score(idle, "identity", {"a": 1}).json()
    r = httpx.get(job["statusQueryGetUri"])
    assert r.status_code == 202 and r.json()["runtimeStatus"] == "Pending"
    assert r.headers["Location"] == job["statusQueryGetUri"] and r.headers["Retry-After"] == "1"
    httpx.post(f"{idle.url}/api/jobs/{job['id']}/terminate")


def test_long_poll_gives_202_when_the_job_does_not_end_in_time(idle: Server) -> None:
    started = time.monotonic()
    r = score(idle, "identity", {"b": 1}, wait=0.5)
    assert r.status_code == 202 and 0.4 < time.monotonic() - started < 5
    httpx.post(f"{idle.url}/api/jobs/{r.json()['id']}/terminate")


def test_idempotent_resubmission_returns_the_same_job_and_enqueues_once(idle: Server) -> None:
    before = depth(idle)
    headers = {"Idempotency-Key": "order-42"}
    ids = {
        httpx.post(f"{idle.url}/api/score/identity", json={"input": {"n": 1}}, headers=headers).json()["id"]
        for _ in range(3)
    }
    assert len(ids) == 1 and depth(idle) == before + 1
    other = httpx.post(
        f"{idle.url}/api/score/identity", json={"input": {"n": 1}}, headers={"Idempotency-Key": "x"}
    )
    assert other.json()["id"] not in ids
    for job_id in (*ids, other.json()["id"]):
        httpx.post(f"{idle.url}/api/jobs/{job_id}/terminate")


@pytest.mark.parametrize(
    ("pipeline", "body", "status", "needle"),
    [
        ("digits", b"{not json", 400, "not valid JSON"),
        ("digits", b'{"input": {"pixels": [1, 2, 3]}}', 400, "input.pixels"),
        ("digits", b'{"input": {"pixels": [' + b"99," * 63 + b"99]}}", 400, "greater than the maximum"),
        ("topics", b'{"input": {"text": ""}}', 400, "input.text"),
        ("topics", b'{"input": {"text": "hi"}, "priority": "urgent"}', 400, "priority"),
        ("topics", b'{"input": {"text": "hi"}, "surprise": 1}', 400, "surprise"),
        ("topics", b'{"text": "hi"}', 400, "input"),
        ("nope", b'{"input": {}}', 404, "nope"),
        ("identity", b'{"input": {"x": "' + b"a" * 5000 + b'"}}', 413, "limit"),
    ],
)
def test_rejected_requests_enqueue_nothing(
    idle: Server, pipeline: str, body: bytes, status: int, needle: str
) -> None:
    before = depth(idle)
    r = httpx.post(
        f"{idle.url}/api/score/{pipeline}", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    assert depth(idle) == before


def test_bad_wait_is_a_400(idle: Server) -> None:
    before = depth(idle)
    assert score(idle, "identity", {}, wait=31).status_code == 400
    assert depth(idle) == before


def test_queue_over_its_depth_answers_503_with_retry_after(tmp_path: Path) -> None:
    with running_server(tmp_path, "--no-workers", "--max-queue-depth", "3") as s:
        for i in range(3):
            assert score(s, "identity", {"fill": i}).status_code == 202
        r = score(s, "identity", {"one": "too many"})
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert r.json()["error"]["code"] == "Overloaded"
        assert depth(s) == 3


def test_shedding_logs_once_per_interval_with_a_count_and_counts_in_metrics(tmp_path: Path) -> None:
    with running_server(tmp_path, "--no-workers", "--max-queue-depth", "1") as s:
        assert score(s, "identity", {"fill": 1}).status_code == 202
        with httpx.Client(timeout=10) as client:
            shed = [client.post(f"{s.url}/api/score/identity", json={"input": {"n": i}}) for i in range(200)]
        assert {r.status_code for r in shed} == {503}
        metrics = httpx.get(f"{s.url}/metrics").text
        assert 'nearline_api_shed_total{pipeline="identity"} 200.0' in metrics
        lines = [line for line in s.output().splitlines() if "shed" in line]
        assert 1 <= len(lines) <= 2, lines  # one line an interval (10 s), not one a request


def test_terminate_then_410_then_purge(idle: Server) -> None:
    job = score(idle, "identity", {"t": 1}).json()
    r = httpx.post(job["terminatePostUri"].replace("{text}", "changed my mind"))
    assert r.status_code == 202
    doc = httpx.get(job["statusQueryGetUri"]).json()
    assert doc["runtimeStatus"] == "Terminated" and doc["output"] == "changed my mind"
    assert httpx.post(f"{idle.url}/api/jobs/{job['id']}/terminate").status_code == 410
    assert httpx.delete(job["purgeHistoryDeleteUri"]).status_code == 200
    assert httpx.get(job["statusQueryGetUri"]).status_code == 404
    assert httpx.delete(job["purgeHistoryDeleteUri"]).status_code == 404
    assert httpx.post(f"{idle.url}/api/jobs/{job['id']}/terminate").status_code == 404


def test_deadline_expires_with_no_worker_running(idle: Server) -> None:
    job = score(idle, "identity", {"d": 1}, timeout_s=0.5).json()
    doc = httpx.get(job["statusQueryGetUri"], params={"wait": 10}, timeout=15).json()
    assert doc["runtimeStatus"] == "Failed" and doc["output"]["error"]["code"] == "DeadlineExceeded"


def test_pipelines_health_metrics_openapi(server: Server) -> None:
    pipelines = {p["name"]: p for p in httpx.get(f"{server.url}/api/pipelines").json()["pipelines"]}
    assert {"digits", "topics", "identity"} <= set(pipelines)
    assert pipelines["digits"]["inputSchema"]["properties"]["pixels"]["minItems"] == 64
    assert httpx.get(f"{server.url}/api/health").json()["status"] == "ok"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "nearline_api_requests_total" in metrics and "nearline_queue_depth" in metrics
    doc = httpx.get(f"{server.url}/api/openapi.json").json()
    assert (
        doc["openapi"].startswith("3.")
        and "/api/score/digits" in doc["paths"]
        and "/api/jobs/{id}" in doc["paths"]
    )


def test_unknown_job_is_404(server: Server) -> None:
    r = httpx.get(f"{server.url}/api/jobs/does-not-exist")
    assert r.status_code == 404 and r.json()["error"]["code"] == "NotFound"


def test_auth_required_when_keys_are_configured(tmp_path: Path) -> None:
    with running_server(tmp_path, "--no-workers", env={"NEARLINE_API_KEYS": "k1,k2"}) as s:
        url = f"{s.url}/api/score/identity"
        assert httpx.post(url, json={"input": {}}).status_code == 401
        assert httpx.post(url, json={"input": {}}, headers={"x-functions-key": "wrong"}).status_code == 401
        ok = httpx.post(url, json={"input": {}}, headers={"x-functions-key": "k2"})
        assert ok.status_code == 202
        assert httpx.get(ok.json()["statusQueryGetUri"], params={"code": "k1"}).status_code == 202
        assert httpx.get(ok.json()["statusQueryGetUri"]).status_code == 401
        assert httpx.get(f"{s.url}/api/health").status_code == 200  # probes carry no key
        # A client that authenticates with ?code= gets URLs that carry it, as Durable's do.
        by_code = httpx.post(url, params={"code": "k1"}, json={"input": {}}).json()
        assert "code=k1" in by_code["statusQueryGetUri"] and "code=k1" in by_code["terminatePostUri"]
        assert httpx.get(by_code["statusQueryGetUri"]).status_code == 202


def test_keys_guard_every_route_but_health(tmp_path: Path) -> None:
    """The OpenAPI document shows the input schemas that /api/pipelines protects; /metrics shows
    traffic: with keys configured only the health probe answers without one (as on Azure)."""
    with running_server(tmp_path, "--no-workers", env={"NEARLINE_API_KEYS": "k1"}) as s:
        for path in ("/metrics", "/api/openapi.json", "/api/pipelines"):
            assert httpx.get(f"{s.url}{path}").status_code == 401, path
            assert httpx.get(f"{s.url}{path}", headers={"x-functions-key": "k1"}).status_code == 200, path
        assert httpx.get(f"{s.url}/api/health").status_code == 200


def test_refuses_a_public_address_without_keys(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nearline",
            "serve",
            "--host",
            "0.0.0.0",
            "--no-workers",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "NEARLINE_API_KEYS" in r.stderr and "--insecure" in r.stderr and "Traceback" not in r.stderr
