"""Comparing an endpoint's deployments (docs/deployments.md, "Comparing deployments"): the
outcomes log each status store writes as jobs end, and ``GET /api/endpoints/{name}/compare``
over real jobs scored by a real worker behind a real ``nearline serve``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import compare_steps
import httpx
import pytest
import redis
from conftest import require_server
from serving import Server, project_server
from waiting import wait_until

from nearline.errors import RequestError
from nearline.jobs import JobRecord, JobStatus
from nearline.outcomes import MAX_WINDOW_S, WINDOW_S, agree, compare, parse_window, percentile
from nearline.store.base import StatusStore
from nearline.store.redis_hashes import RedisStore
from nearline.store.sqlite import SqliteStore

REDIS_DB = 5
STEPS = Path(compare_steps.__file__)
T0 = 1_800_000_000.0


@pytest.fixture(params=["sqlite", "redis"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[StatusStore, StatusStore]]:
    """Two instances of one store, as two API replicas open it: one ends jobs, one compares."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/nearline.db"
        pair: tuple[StatusStore, StatusStore] = (SqliteStore(url), SqliteStore(url))
    else:
        require_server("Redis", "127.0.0.1", 6379)
        client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
        client.flushdb()
        url = f"redis://127.0.0.1:6379/{REDIS_DB}"
        pair = (RedisStore(url), RedisStore(url))
    yield pair
    for store in pair:
        store.close()
    if request.param == "redis":
        client.flushdb()
        client.close()


def job(
    store: StatusStore, job_id: str, deployment: str, shadow_of: str | None = None, at: float = T0
) -> None:
    """Create job ``job_id`` of endpoint ``ab`` for ``deployment``, submitted at ``at``."""
    record = JobRecord(job_id, "ab", {}, created=at, updated=at, deployment=deployment, shadow_of=shadow_of)
    assert store.create(record)[1]


def figures(store: StatusStore, window_s: int = WINDOW_S, now: float = T0 + 10) -> dict[str, Any]:
    return compare(store.outcomes(), "ab", ["v1", "v2", "v3"], window_s, now)


def test_counts_failure_rate_and_latency_per_deployment(stores: tuple[StatusStore, StatusStore]) -> None:
    writer, reader = stores
    for i in range(4):
        job(writer, f"a{i}", "v1")
    job(writer, "b0", "v2")
    job(writer, "b1", "v2")
    ends = [(f"a{i}", JobStatus.COMPLETED, {"label": "x"}) for i in range(3)]
    writer.finish_many([*ends, ("b0", JobStatus.FAILED, {"error": {"code": "StepError"}})], T0 + 0.040)
    writer.finish("a3", JobStatus.FAILED, {"error": {"code": "ModelError"}}, T0 + 0.200)
    writer.finish("b1", JobStatus.TERMINATED, "stopped", T0 + 0.5)  # the caller's doing: not counted

    doc = figures(reader)
    assert doc["endpoint"] == "ab" and doc["window_s"] == WINDOW_S
    v1, v2, v3 = doc["deployments"]["v1"], doc["deployments"]["v2"], doc["deployments"]["v3"]
    assert (v1["requests"], v1["succeeded"], v1["failed"], v1["failure_rate"]) == (4, 3, 1, 0.25)
    assert (v1["p50_ms"], v1["p99_ms"], v1["shadow"]) == (40.0, 200.0, 0)
    assert (v2["requests"], v2["failed"], v2["failure_rate"], v2["p99_ms"]) == (1, 1, 1.0, 40.0)
    assert v3 == {
        "requests": 0, "succeeded": 0, "failed": 0, "failure_rate": None,
        "p50_ms": None, "p99_ms": None, "shadow": 0,
    }  # fmt: skip
    assert doc["mirrors"] == []


def test_the_window_leaves_out_jobs_that_ended_before_it(stores: tuple[StatusStore, StatusStore]) -> None:
    writer, reader = stores
    job(writer, "old", "v1", at=T0 - 100)
    job(writer, "new", "v1")
    writer.finish("old", JobStatus.FAILED, {"error": {}}, T0 - 99)
    writer.finish("new", JobStatus.COMPLETED, {}, T0 + 1)
    assert figures(reader, window_s=60)["deployments"]["v1"]["requests"] == 1
    assert figures(reader, window_s=300)["deployments"]["v1"]["requests"] == 2


def test_shadow_pairs_agree_on_a_classifier_label_and_on_equal_output(
    stores: tuple[StatusStore, StatusStore],
) -> None:
    writer, reader = stores
    for live, shadow in (("l1", "s1"), ("l2", "s2"), ("l3", "s3"), ("l4", "s4")):
        job(writer, live, "v1")
        job(writer, shadow, "v2", shadow_of=live)
    writer.finish_many(
        [
            ("l1", JobStatus.COMPLETED, {"label": "sport", "scores": {"sport": 0.9}}),
            ("s1", JobStatus.COMPLETED, {"label": "sport", "scores": {"sport": 0.7}}),  # same label
            ("l2", JobStatus.COMPLETED, {"label": "sport"}),
            ("s2", JobStatus.COMPLETED, {"label": "politics"}),  # another label
            ("l3", JobStatus.COMPLETED, [1, 2]),
            ("s3", JobStatus.FAILED, {"error": {"code": "StepError"}}),  # a failed shadow disagrees
        ],
        T0 + 0.1,
    )
    writer.finish("s4", JobStatus.COMPLETED, {"label": "sport"}, T0 + 0.1)  # its live job runs on

    doc = figures(reader)
    assert doc["deployments"]["v2"]["shadow"] == 4 and doc["deployments"]["v2"]["requests"] == 4
    assert doc["deployments"]["v1"]["requests"] == 3
    assert doc["mirrors"] == [{"live": "v1", "shadow": "v2", "pairs": 3, "agreed": 1, "agreement": 0.333333}]


def test_a_pair_not_ended_yet_is_listed_without_agreement(stores: tuple[StatusStore, StatusStore]) -> None:
    writer, reader = stores
    job(writer, "live", "v1")
    job(writer, "shadow", "v3", shadow_of="live")
    writer.finish("shadow", JobStatus.COMPLETED, {"label": "x"}, T0 + 0.1)
    assert figures(reader)["mirrors"] == [
        {"live": "v1", "shadow": "v3", "pairs": 0, "agreed": 0, "agreement": None}
    ]


def test_the_log_keeps_the_longest_window_and_no_more(stores: tuple[StatusStore, StatusStore]) -> None:
    writer, reader = stores
    job(writer, "early", "v1")
    writer.finish("early", JobStatus.COMPLETED, {}, T0 + 1)
    later = T0 + MAX_WINDOW_S + 60
    job(writer, "late", "v1", at=later)
    writer.finish("late", JobStatus.COMPLETED, {}, later + 1)
    log = reader.outcomes()
    assert log is not None
    log.trim(later - MAX_WINDOW_S)  # a lifecycle's retention run (Redis trims as it writes)
    assert [o.job_id for o in log.read("ab", 0)] == ["late"]


def test_equal_outputs_agree_and_labels_decide_for_classifiers() -> None:
    from nearline.outcomes import Ended

    assert agree(Ended("Completed", "v1", {"a": 1}), Ended("Completed", "v2", {"a": 1}))
    assert not agree(Ended("Completed", "v1", {"a": 1}), Ended("Completed", "v2", {"a": 2}))
    assert agree(Ended("Completed", "v1", {"label": 3, "p": 0.1}), Ended("Completed", "v2", {"label": 3}))
    assert not agree(Ended("Failed", "v1", None), Ended("Failed", "v2", None))


def test_percentiles_are_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([10.0, 20.0, 30.0, 40.0], 50) == 20.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([5.0], 99) == 5.0


@pytest.mark.parametrize("value", ["0", "3601", "-5", "1.5", "abc", "", " "])
def test_a_window_out_of_range_is_refused_naming_the_parameter(value: str) -> None:
    with pytest.raises(RequestError, match="window_s"):
        parse_window(value)


def test_a_window_defaults_to_five_minutes() -> None:
    assert parse_window(None) == 300 and parse_window("3600") == 3600 and parse_window("1") == 1


# --- end to end: a real server, a real worker -------------------------------------------------

PIPELINES = """
pipelines:
  ab:
    input_schema: {type: object}
    deployments:
      v1: {steps: [{name: classify, function: "compare_steps:classify"}]}
      v2: {steps: [{name: classify, function: "compare_steps:fragile"}]}
      v3: {steps: [{name: classify, function: "compare_steps:contrary"}]}
    traffic: {v1: 100, v2: 0, v3: 0}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with project_server(tmp_path_factory.mktemp("compare"), PIPELINES, STEPS) as s:
        yield s


def score(server: Server, item: dict[str, Any], deployment: str | None = None) -> dict[str, Any]:
    headers = {"nearline-deployment": deployment} if deployment else {}
    r = httpx.post(f"{server.url}/api/score/ab?wait=20", json={"input": item}, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def compared(server: Server, window: str = "300") -> dict[str, Any]:
    r = httpx.get(f"{server.url}/api/endpoints/ab/compare", params={"window_s": window}, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_compare_counts_real_jobs_of_each_deployment(server: Server) -> None:
    before = compared(server)["deployments"]
    for _ in range(5):
        assert score(server, {"topic": "sport"})["runtimeStatus"] == "Completed"
    for item in ({}, {}, {"ok": True}):
        score(server, item, "v2")
    after = compared(server)["deployments"]
    v1, v2 = after["v1"], after["v2"]
    assert v1["requests"] - before["v1"]["requests"] == 5
    assert v1["succeeded"] - before["v1"]["succeeded"] == 5
    assert v2["failed"] - before["v2"]["failed"] == 2
    assert v2["succeeded"] - before["v2"]["succeeded"] == 1
    assert 0 < v1["p50_ms"] <= v1["p99_ms"]
    assert v2["failure_rate"] == round(v2["failed"] / v2["requests"], 6)


def test_compare_pairs_mirrored_jobs_with_their_live_jobs(server: Server) -> None:
    r = httpx.put(
        f"{server.url}/api/endpoints/ab/traffic",
        json={"traffic": {"v1": 100, "v2": 0, "v3": 0}, "mirror": {"v3": 50}, "reason": "test mirror"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    for _ in range(20):
        score(server, {"topic": "sport"})  # v3 agrees with v1 on these

    def agreeing() -> dict[str, Any] | None:
        pairs = compared(server)["mirrors"]
        return pairs[0] if pairs and pairs[0]["pairs"] > 0 else None

    first = wait_until(agreeing, 30, "a mirrored pair")
    assert (first["live"], first["shadow"], first["agreement"]) == ("v1", "v3", 1.0)
    for _ in range(20):
        score(server, {"topic": "sport", "flip": True})  # v3 answers "other"
    wait_until(lambda: compared(server)["mirrors"][0]["agreed"] < compared(server)["mirrors"][0]["pairs"],
               30, "a pair that disagrees")  # fmt: skip
    assert compared(server)["deployments"]["v3"]["shadow"] >= first["pairs"]


@pytest.mark.parametrize("window", ["0", "3601", "soon"])
def test_a_bad_window_is_a_400_naming_it(server: Server, window: str) -> None:
    r = httpx.get(f"{server.url}/api/endpoints/ab/compare", params={"window_s": window}, timeout=10)
    assert r.status_code == 400
    assert "window_s" in r.json()["error"]["message"]


def test_an_unknown_endpoint_is_a_404(server: Server) -> None:
    r = httpx.get(f"{server.url}/api/endpoints/nope/compare", timeout=10)
    assert r.status_code == 404


def test_outcomes_are_written_in_the_step_that_ends_the_job(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path}/n.db")
    job(store, "j", "v1", at=time.time())
    assert store.outcomes() is not None and store.outcomes().read("ab", 0) == []  # type: ignore[union-attr]
    store.finish("j", JobStatus.COMPLETED, {}, time.time())
    assert [o.job_id for o in store.outcomes().read("ab", 0)] == ["j"]  # type: ignore[union-attr]
    assert not store.finish("j", JobStatus.FAILED, {}, time.time())  # a second end writes nothing
    assert len(store.outcomes().read("ab", 0)) == 1  # type: ignore[union-attr]
    store.close()


def test_both_clients_read_the_comparison(server: Server) -> None:
    from nearline.client import AsyncClient, Client

    async def read() -> dict[str, Any]:
        async with AsyncClient(server.url) as client:
            return await client.compare("ab", 60)

    with Client(server.url) as client:
        doc = client.compare("ab", 60)
    assert doc["window_s"] == 60 and set(doc["deployments"]) == {"v1", "v2", "v3"}
    assert asyncio.run(read())["endpoint"] == "ab"
