"""Changing an endpoint's split while it runs (docs/deployments.md): the split stores, the cache
every replica reads through, ``PUT /api/endpoints/{name}/traffic`` and its rules and keys, and a
change that survives a restart (SQLite) and reaches a second replica (Redis)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from conftest import redis_database
from serving import Server, running_server
from test_deployments import STEPS, catalog, endpoint
from waiting import wait_until

from nearline.brokers import open_broker
from nearline.client import AsyncClient, Client
from nearline.client.errors import ApiBadRequest, ApiUnauthorized
from nearline.errors import RequestError
from nearline.pipelines.traffic import Split
from nearline.splits.base import HISTORY, Change, SplitStore
from nearline.splits.live import MAX_AGE_S, LiveSplits
from nearline.splits.memory import MemorySplits
from nearline.splits.redis import RedisSplits
from nearline.splits.sqlite import SqliteSplits
from nearline.store import open_store
from nearline.store_jobs import StoreJobs

DB = 4  # this suite's Redis database, flushed by every test that uses it
REDIS_URL = f"redis://127.0.0.1:6379/{DB}"
ADMIN, USER = "admin-key-for-traffic", "api-key-for-traffic"


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    with redis_database(DB) as client:
        yield client


# --- the split stores: one contract, every backend -------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "redis"])
def splits(request: pytest.FixtureRequest, tmp_path: Path) -> SplitStore:
    if request.param == "memory":
        return MemorySplits()
    if request.param == "sqlite":
        return SqliteSplits(f"sqlite:///{tmp_path}/nearline.db")
    return RedisSplits(request.getfixturevalue("redis_db"))


def change(n: int, endpoint: str = "ab") -> Change:
    return Change(endpoint, Split({"blue": 100 - n % 101, "green": n % 101}, {}), f"step {n}", 1000.0 + n)


def test_a_store_keeps_the_last_split_and_the_last_50_changes_newest_first(splits: SplitStore) -> None:
    assert splits.load("ab") is None and splits.history("ab") == []
    mirrored = Change("ab", Split({"blue": 100, "green": 0}, {"green": 10}), "shadow green", 999.0)
    splits.save(mirrored)
    assert splits.load("ab") == mirrored
    for n in range(HISTORY + 5):
        splits.save(change(n))
    assert splits.load("ab") == change(HISTORY + 4)
    history = splits.history("ab")
    assert history == [change(n) for n in reversed(range(5, HISTORY + 5))]
    assert splits.load("other") is None  # endpoints never meet


def test_a_cached_split_is_read_again_once_it_is_half_a_second_old(tmp_path: Path) -> None:
    """Every replica applies a change within a second: its cache is never older than MAX_AGE_S."""
    ab, now = catalog(tmp_path, endpoint()).get("ab"), [0.0]
    store = MemorySplits()
    here, there = LiveSplits(store, clock=lambda: now[0]), LiveSplits(store, clock=lambda: now[0])
    assert there.read(ab) == Split({"blue": 70, "green": 30})  # the file's until changed
    here.save(Change("ab", Split({"blue": 10, "green": 90}), "", 1.0))
    assert here.fresh(ab) == Split({"blue": 10, "green": 90})  # the replica that changed it: at once
    now[0] = MAX_AGE_S - 0.01
    assert there.fresh(ab) == Split({"blue": 70, "green": 30})  # still the cached read
    now[0] = MAX_AGE_S
    assert MAX_AGE_S <= 1.0 and there.fresh(ab) is None  # stale: the next submit reads the store
    assert there.read(ab) == Split({"blue": 10, "green": 90})


# --- the job seam ---------------------------------------------------------------------------


def service(tmp_path: Path, traffic: str = "{blue: 100, green: 0}") -> StoreJobs:
    url = f"sqlite:///{tmp_path}/nearline.db"
    return StoreJobs(catalog(tmp_path, endpoint(traffic)), open_broker(url), open_store(url))


def drawn(jobs: StoreJobs, n: int) -> Counter[str | None]:
    body = json.dumps({"input": {"id": 1}}).encode()
    return Counter(asyncio.run(jobs.submit("ab", body))[0].deployment for _ in range(n))


def test_submits_follow_a_changed_split_within_a_few_points(tmp_path: Path) -> None:
    jobs = service(tmp_path)
    assert asyncio.run(jobs.set_split("ab", Split({"blue": 25, "green": 75}), "try green")).traffic == {
        "blue": 25,
        "green": 75,
    }
    chosen = drawn(jobs, 400)
    assert abs(chosen["green"] / 400 - 0.75) < 0.08  # 3.7 standard deviations of a 400-draw share
    (entry,) = asyncio.run(jobs.split_history("ab"))
    assert entry["reason"] == "try green" and entry["traffic"] == {"blue": 25, "green": 75}
    assert entry["at"].endswith("Z")


def test_set_split_checks_what_it_stores_whoever_calls(tmp_path: Path) -> None:
    jobs = service(tmp_path)
    with pytest.raises(RequestError, match="the weights sum to 90"):
        asyncio.run(jobs.set_split("ab", Split({"blue": 60, "green": 30})))
    assert asyncio.run(jobs.split_history("ab")) == []


def test_a_reload_that_drops_a_deployment_the_stored_split_uses_falls_back_to_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = service(tmp_path)
    asyncio.run(jobs.set_split("ab", Split({"blue": 0, "green": 100})))
    assert set(drawn(jobs, 20)) == {"green"}
    green = endpoint().splitlines(keepends=True)[7:9]  # the green deployment's two lines
    assert green[0].strip() == "green:"
    only_blue = endpoint("{blue: 100}").replace("".join(green), "")
    jobs.use_catalog(catalog(tmp_path, only_blue))
    with caplog.at_level(logging.WARNING, "nearline.splits"):
        assert set(drawn(jobs, 20)) == {"blue"}  # submits keep working, on the file's split
    (warning,) = [r for r in caplog.records if "no longer has" in r.getMessage()]  # once, not per submit
    assert "green" in warning.getMessage()


# --- over HTTP: rules and keys --------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    project = tmp_path_factory.mktemp("traffic")
    (project / "pipelines.yaml").write_text(endpoint("{blue: 100, green: 0}"))
    shutil.copy(STEPS, project / STEPS.name)
    env = {"NEARLINE_API_KEYS": USER, "NEARLINE_ADMIN_KEYS": ADMIN}
    args = ("--pipelines", str(project / "pipelines.yaml"), "--no-workers")
    with running_server(project / "data", *args, env=env) as s:
        yield s


def put(server: Server, body: Any, key: str | None = ADMIN, name: str = "ab") -> httpx.Response:
    headers = {"x-functions-key": key} if key else {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.put(
        f"{server.url}/api/endpoints/{name}/traffic", content=content, headers=headers, timeout=5
    )


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"traffic": {"blue": 60, "green": 30}}, "traffic: the weights sum to 90; make them 100"),
        ({"traffic": {"blue": 90, "red": 10}}, "traffic: 'red' is not a deployment; the deployments are"),
        ({"traffic": {"blue": 100}, "mirror": {"green": 60}}, "mirror: the percents sum to 60; at most 50"),
        (
            {"traffic": {"blue": 90, "green": 10}, "mirror": {"green": 5}},
            "mirror: green has 10% of the traffic",
        ),
        ({"traffic": {"blue": 100}, "mirror": {"red": 5}}, "mirror: 'red' is not a deployment"),
        ({"traffic": {"blue": 99.5, "green": 0.5}}, "traffic: blue: the weight must be an integer"),
        ({"traffic": {"blue": "100"}}, "traffic: blue: the weight must be an integer"),
        (
            {"traffic": {"blue": 100}, "mirror": {"green": True}},
            "mirror: green: the percent must be an integer",
        ),
        ([{"blue": 100}], "request body: must be a JSON object"),
        ({"traffic": [100]}, "'traffic' must map deployment names to weights"),
        ({"traffic": {"blue": 100}, "weights": 1}, "unknown field(s): weights"),
        ({"mirror": {"green": 10}}, "'traffic' is required"),
        ({"traffic": {"blue": 100}, "reason": 7}, "'reason' must be a string"),
        (b"{not json", "request body"),
    ],
)
def test_each_broken_rule_is_a_400_naming_it(server: Server, body: Any, needle: str) -> None:
    r = put(server, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "BadRequest"
    assert needle in r.json()["error"]["message"]


def test_changing_traffic_needs_an_admin_key(server: Server) -> None:
    body = {"traffic": {"blue": 100, "green": 0}}
    assert put(server, body, key=None).status_code == 401
    refused = put(server, body, key=USER)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "Forbidden"
    assert put(server, body, key="not-a-key").status_code == 401
    assert put(server, body, key=ADMIN).status_code == 200
    assert put(server, body, name="nope").status_code == 404


def test_a_put_answers_the_endpoint_and_submits_follow_it(server: Server) -> None:
    r = put(server, {"traffic": {"blue": 20, "green": 80}, "mirror": {}, "reason": "canary"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["traffic"] == {"blue": 20, "green": 80} and doc["mirror"] == {}
    assert [(d["name"], d["traffic"]) for d in doc["deployments"]] == [("blue", 20), ("green", 80)]
    assert doc["history"][0]["reason"] == "canary"
    seen = httpx.get(f"{server.url}/api/endpoints/ab", headers={"x-functions-key": USER}, timeout=5).json()
    assert seen == doc
    with httpx.Client(base_url=server.url, headers={"x-functions-key": USER}, timeout=5) as client:
        got = Counter(
            client.post("/api/score/ab", json={"input": {"id": i}}).headers["nearline-deployment"]
            for i in range(300)
        )
    assert abs(got["green"] / 300 - 0.80) < 0.08  # 3.5 standard deviations of a 300-draw share


# --- a restart (SQLite) and a second replica (Redis) ----------------------------------------


def project(tmp_path: Path) -> Path:
    (tmp_path / "pipelines.yaml").write_text(endpoint("{blue: 100, green: 0}"))
    shutil.copy(STEPS, tmp_path / STEPS.name)
    return tmp_path / "pipelines.yaml"


def live_split(server: Server) -> dict[str, Any]:
    return dict(httpx.get(f"{server.url}/api/endpoints/ab", timeout=5).json())


def test_a_change_survives_a_restart_of_nearline_serve(tmp_path: Path) -> None:
    args = ("--pipelines", str(project(tmp_path)), "--no-workers")
    with running_server(tmp_path / "data", *args) as first:
        assert put(first, {"traffic": {"blue": 0, "green": 100}, "reason": "all green"}).status_code == 200
    with running_server(tmp_path / "data", *args) as again:
        doc = live_split(again)
        assert doc["traffic"] == {"blue": 0, "green": 100}
        assert [h["reason"] for h in doc["history"]] == ["all green"]
        r = httpx.post(f"{again.url}/api/score/ab", json={"input": {"id": 1}}, timeout=5)
        assert r.headers["nearline-deployment"] == "green"


def test_a_change_on_one_redis_replica_reaches_another(tmp_path: Path, redis_db: redis.Redis) -> None:
    args = ("--pipelines", str(project(tmp_path)), "--no-workers", "--broker", REDIS_URL)
    with running_server(tmp_path / "a", *args) as a, running_server(tmp_path / "b", *args) as b:
        assert live_split(b)["traffic"] == {"blue": 100, "green": 0}  # b has read (and cached) it
        assert put(a, {"traffic": {"blue": 0, "green": 100}, "reason": "switch"}).status_code == 200

        def b_draws_green() -> bool:
            r = httpx.post(f"{b.url}/api/score/ab", json={"input": {"id": 1}}, timeout=5)
            return r.headers["nearline-deployment"] == "green"

        wait_until(b_draws_green, 10, "replica b to draw under the split set on replica a")
        assert live_split(b)["history"][0]["reason"] == "switch"


# --- the clients and the command line -------------------------------------------------------


def test_the_clients_read_and_change_the_split(server: Server) -> None:
    with Client(server.url, ADMIN) as client:
        doc = client.set_traffic("ab", {"blue": 50, "green": 50}, mirror={}, reason="half")
        assert doc["traffic"] == {"blue": 50, "green": 50}
        assert client.endpoint("ab") == doc
        assert [e["name"] for e in client.endpoints()] == ["ab"]
    with Client(server.url, USER) as client, pytest.raises(ApiUnauthorized, match="admin key"):
        client.set_traffic("ab", {"blue": 100})

    async def go() -> dict[str, Any]:
        async with AsyncClient(server.url, ADMIN) as client:
            with pytest.raises(ApiBadRequest, match="the weights sum to 90"):
                await client.set_traffic("ab", {"blue": 90})
            return await client.set_traffic("ab", {"blue": 100, "green": 0}, mirror={"green": 10})

    assert asyncio.run(go())["mirror"] == {"green": 10}


def nearline(*args: str, key: str | None = ADMIN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NEARLINE_URL", "NEARLINE_KEY")}
    env.update({"NEARLINE_KEY": key} if key else {})
    cmd = [sys.executable, "-m", "nearline", "endpoints", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def test_the_cli_changes_the_split_and_shows_it(server: Server) -> None:
    done = nearline(
        "traffic",
        "ab",
        "blue=100",
        "green=0",
        "--mirror",
        "green=10",
        "--reason",
        "shadow",
        "--url",
        server.url,
    )
    assert done.returncode == 0, done.stderr
    assert "green" in done.stdout and "10%" in done.stdout  # the mirror column
    shown = nearline("show", "ab", "--url", server.url, key=USER)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "endpoint ab"
    assert lines[2].split() == ["blue", "100%", "-", "-"] and lines[3].split() == ["green", "0%", "10%", "-"]
    assert 'blue=100 green=0  mirror green=10  "shadow"' in shown.stdout
    as_json = json.loads(nearline("show", "--json", "--url", server.url, key=USER).stdout)
    assert as_json[0]["mirror"] == {"green": 10}


@pytest.mark.parametrize(
    ("args", "key", "needle"),
    [
        (("traffic", "ab", "blue=ninety"), ADMIN, "'blue=ninety' is not DEPLOYMENT=PERCENT"),
        (("traffic", "ab", "blue=60", "green=30"), ADMIN, "the weights sum to 90"),
        (("traffic", "ab", "blue=100"), USER, "admin key"),
        (("show", "nope"), USER, "unknown pipeline 'nope'"),
    ],
)
def test_the_cli_refuses_with_one_line_and_status_2(
    server: Server, args: tuple[str, ...], key: str, needle: str
) -> None:
    done = nearline(*args, "--url", server.url, key=key)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_the_terminate_answer_names_the_deployment(server: Server) -> None:
    headers = {"x-functions-key": USER, "nearline-deployment": "green"}
    job = httpx.post(f"{server.url}/api/score/ab", json={"input": {"id": 1}}, headers=headers, timeout=5)
    ended = httpx.post(job.json()["terminatePostUri"].replace("{text}", "done"), headers=headers, timeout=5)
    assert ended.status_code == 202 and ended.headers["nearline-deployment"] == "green"
