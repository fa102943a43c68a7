"""Mirroring (docs/deployments.md): a share of untargeted requests copied, as shadow jobs, to a
deployment at 0. Shadows run on the low lane, keep their results for comparison, and are never
seen by the client: not in its answers, not in its callbacks, and never a reason to fail."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import redis_database
from serving import Server, running_server
from test_callbacks import receiver
from test_deployments import STEPS, catalog, endpoint
from waiting import wait_until

from nearline.brokers import open_broker
from nearline.constants import REQUEST_QUEUE
from nearline.errors import ConfigError
from nearline.jobs import JobRecord
from nearline.pipelines.traffic import Split
from nearline.store import open_store
from nearline.store_jobs import StoreJobs

DB = 4  # this engineer's Redis database, flushed by the test that uses it
REDIS_URL = f"redis://127.0.0.1:6379/{DB}"
MIRRORED = endpoint("{blue: 100, green: 0}", "    mirror: {green: 50}")


def test_mirror_loads_from_pipelines_yaml(tmp_path: Path) -> None:
    ab = catalog(tmp_path, MIRRORED).get("ab")
    assert ab.split == Split({"blue": 100, "green": 0}, {"green": 50})
    assert ab.endpoint_document()["mirror"] == {"green": 50}


@pytest.mark.parametrize(
    ("traffic", "mirror", "needle"),
    [
        ("{blue: 100, green: 0}", "{green: 51}", "pipeline 'ab': mirror: the percents sum to 51; at most 50"),
        ("{blue: 90, green: 10}", "{green: 10}", "pipeline 'ab': mirror: green has 10% of the traffic"),
        ("{blue: 100, green: 0}", "{red: 10}", "pipeline 'ab': mirror: 'red' is not a deployment"),
        (
            "{blue: 100, green: 0}",
            "{green: 2.5}",
            "pipeline 'ab': mirror: green: the percent must be an integer",
        ),
        ("{blue: 100, green: 0}", "[green]", "pipeline 'ab': 'mirror' must map deployment names to percents"),
    ],
)
def test_a_bad_mirror_stops_the_load_naming_the_field(
    tmp_path: Path, traffic: str, mirror: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        catalog(tmp_path, endpoint(traffic, f"    mirror: {mirror}"))
    assert str(tmp_path / "pipelines.yaml") in caught.value.message and needle in caught.value.message


# --- at submit ------------------------------------------------------------------------------


def service(tmp_path: Path, **kw: Any) -> tuple[StoreJobs, Path]:
    url = f"sqlite:///{tmp_path}/nearline.db"
    cat = catalog(tmp_path, endpoint("{blue: 100, green: 0}"))
    return StoreJobs(cat, open_broker(url), open_store(url), **kw), tmp_path / "nearline.db"


def submit(jobs: StoreJobs, deployment: str | None = None, key: str | None = None) -> JobRecord:
    body = json.dumps({"input": {"id": 1}}).encode()
    return asyncio.run(jobs.submit("ab", body, key, deployment=deployment))[0]


def shadows(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM jobs WHERE shadow_of IS NOT NULL").fetchall()
    return [dict(row) for row in rows]


def test_a_mirror_share_is_within_a_few_points_and_shadows_are_low_lane_copies(tmp_path: Path) -> None:
    jobs, db = service(tmp_path)
    asyncio.run(jobs.set_split("ab", Split({"blue": 100, "green": 0}, {"green": 20})))
    live = {submit(jobs).id for _ in range(400)}
    found = shadows(db)
    assert abs(len(found) / 400 - 0.20) < 0.07  # 3.5 standard deviations of a 400-draw share
    assert {s["shadow_of"] for s in found} <= live and len({s["shadow_of"] for s in found}) == len(found)
    assert {(s["deployment"], s["priority"], s["callback_url"]) for s in found} == {("green", "low", None)}
    assert not live & {s["id"] for s in found}  # a shadow's id is its own, never handed out
    assert all(submit(jobs).deployment == "blue" for _ in range(5))  # the live job: the split's


def test_targeted_and_repeated_submits_are_never_mirrored(tmp_path: Path) -> None:
    jobs, db = service(tmp_path)
    asyncio.run(jobs.set_split("ab", Split({"blue": 100, "green": 0}, {"green": 50})))
    for _ in range(40):
        submit(jobs, deployment="blue")
    assert shadows(db) == []
    firsts = [submit(jobs, key=f"k{i}") for i in range(40)]
    before = len(shadows(db))
    assert 0 < before < 40
    assert [submit(jobs, key=f"k{i}").id for i in range(40)] == [j.id for j in firsts]
    assert len(shadows(db)) == before  # a repeat starts nothing, no shadow either


def test_a_shadow_that_cannot_be_created_never_fails_the_live_submit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jobs, db = service(tmp_path, max_queue_depth=1)  # the live job fills the queue: its shadow is refused
    asyncio.run(jobs.set_split("ab", Split({"blue": 100, "green": 0}, {"green": 50})))
    with caplog.at_level(logging.WARNING, "nearline.jobs"):
        while not caplog.records:  # until a draw mirrors (p = 1/2 each)
            job = submit(jobs)
            assert job.deployment == "blue"
            _drain(jobs)
    assert "no shadow of job" in caplog.records[0].getMessage()
    assert shadows(db) == []


def test_on_redis_a_shadow_is_recorded_with_its_live_job(tmp_path: Path) -> None:
    with redis_database(DB) as client:
        store = open_store(REDIS_URL)
        jobs = StoreJobs(catalog(tmp_path, MIRRORED), open_broker(REDIS_URL), store)
        live = {submit(jobs).id for _ in range(60)}
        ids = [key.decode().rpartition(":")[2] for key in client.scan_iter("nearline:job:*")]
        found = [job for job in map(store.get, ids) if job is not None and job.shadow_of is not None]
        assert 0 < len(found) < 60  # mirror 50%: all or none is a 1 in 2**60 draw
        assert {j.shadow_of for j in found} <= live
        assert {(j.deployment, j.priority, j.callback_url) for j in found} == {("green", "low", None)}


def _drain(jobs: StoreJobs) -> None:
    """Take the live job's message off the queue, so that the next live submit fits again."""
    for delivery in jobs.broker.receive(REQUEST_QUEUE, 10, 0.1):
        jobs.broker.complete(delivery)


# --- over HTTP: the client never sees a shadow ----------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Any]]:
    project = tmp_path_factory.mktemp("mirror")
    (project / "pipelines.yaml").write_text(MIRRORED)
    shutil.copy(STEPS, project / STEPS.name)
    with receiver() as (port, got):
        env = {"NEARLINE_CALLBACK_ALLOW": "127.0.0.1/32"}
        with running_server(project / "data", "--pipelines", str(project / "pipelines.yaml"), env=env) as s:
            yield s, (port, got)


def test_the_client_sees_only_the_live_job_and_its_callback(server: tuple[Server, Any]) -> None:
    srv, (port, got) = server
    live: dict[str, Any] = {}
    for i in range(20):
        body = {"input": {"id": i}, "callback_url": f"http://127.0.0.1:{port}/hook"}
        r = httpx.post(f"{srv.url}/api/score/ab?wait=10", json=body, timeout=15)
        assert r.status_code == 200, r.text
        assert r.headers["nearline-deployment"] == "blue"
        live[r.json()["instanceId"]] = r.json()
    for job_id in live:
        again = httpx.get(f"{srv.url}/api/jobs/{job_id}", timeout=5).json()
        assert again["output"]["deployment"] == "blue"  # never the shadow's result
    db = srv.data_dir / "nearline.db"
    mirrored = wait_until(
        lambda: (found := shadows(db)) and all(s["status"] == "Completed" for s in found) and found,
        30,
        "the shadow jobs to be scored",
    )
    assert {s["shadow_of"] for s in mirrored} <= set(live)
    assert {json.loads(s["output"])["deployment"] for s in mirrored} == {"green"}  # kept for comparison
    wait_until(lambda: len(got.requests) >= len(live), 30, "a callback for every live job")
    called = [json.loads(body)["data"]["instanceId"] for _, _, body in got.requests]
    assert sorted(called) == sorted(live)  # no callback for a shadow
