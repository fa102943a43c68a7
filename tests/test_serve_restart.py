"""`nearline serve` restart safety and terminate-before-start, on the durable SQLite default."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import pytest
from serving import identity_pipelines, running_server, start_server, stop_server

pytestmark = pytest.mark.slow

TEXTS = [
    "The goalkeeper saved a penalty in extra time.",
    "Parliament passed the budget bill.",
    "The new phone has a faster chip.",
    "Vaccines reduce the risk of severe illness.",
]


def wait_terminal(url: str, job_ids: list[str], timeout: float) -> dict[str, dict]:
    """Each job's final status document (long-polling), within ``timeout`` seconds overall."""
    end = time.monotonic() + timeout
    docs: dict[str, dict] = {}
    with httpx.Client(timeout=15) as client:
        for job_id in job_ids:
            while time.monotonic() < end:
                r = client.get(
                    f"{url}/api/jobs/{job_id}", params={"wait": min(5.0, max(end - time.monotonic(), 0))}
                )
                if r.status_code == 200:
                    docs[job_id] = r.json()
                    break
    return docs


def test_kill_9_with_jobs_in_flight_then_restart_loses_nothing(tmp_path: Path) -> None:
    args = ("--lease-s", "2", "--workers", "1")
    server = start_server(tmp_path, *args)
    accepted: list[str] = []
    try:

        def submit(i: int) -> str | None:
            pipeline, input = ("topics", {"text": TEXTS[i % 4]}) if i % 2 else ("identity", {"i": i})
            try:
                r = httpx.post(
                    f"{server.url}/api/score/{pipeline}", json={"input": input, "timeout_s": 120}, timeout=10
                )
            except httpx.HTTPError:
                return None  # the server died under this request: it was never accepted
            return r.json()["id"] if r.status_code == 202 else None

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(submit, i) for i in range(400)]
            end = time.monotonic() + 30
            while sum(f.done() for f in futures) < 150 and time.monotonic() < end:
                time.sleep(0.02)
            server.kill()  # kill -9 with jobs accepted, queued, leased and half-published
            accepted = [job_id for f in futures if (job_id := f.result()) is not None]
    finally:
        stop_server(server)
    assert len(accepted) >= 20, "the kill came too early to test anything"
    restarted = start_server(tmp_path, *args)
    try:
        docs = wait_terminal(restarted.url, accepted, timeout=120)
    finally:
        stop_server(restarted)
    assert len(docs) == len(accepted), (
        f"{len(accepted) - len(docs)} accepted jobs never reached a terminal state"
    )
    statuses = {d["runtimeStatus"] for d in docs.values()}
    assert statuses == {"Completed"}, statuses


def test_a_job_terminated_before_a_worker_takes_it_is_never_scored(tmp_path: Path) -> None:
    only = ("--pipelines", str(identity_pipelines(tmp_path)))  # no torch: seconds less per server
    with running_server(tmp_path, "--no-workers", *only) as idle:
        victim = httpx.post(f"{idle.url}/api/score/identity", json={"input": {"v": 1}}).json()
        keeper = httpx.post(f"{idle.url}/api/score/identity", json={"input": {"k": 1}}).json()
        assert httpx.post(f"{idle.url}/api/jobs/{victim['id']}/terminate?reason=no").status_code == 202
    # Same data dir, now with a worker: the queued message of the terminated job is skipped.
    with running_server(tmp_path, "--workers", "1", *only) as s:
        docs = wait_terminal(s.url, [keeper["id"], victim["id"]], timeout=60)
        assert docs[keeper["id"]]["runtimeStatus"] == "Completed"
        assert docs[victim["id"]]["runtimeStatus"] == "Terminated" and docs[victim["id"]]["output"] == "no"
        deadline = time.monotonic() + 10
        while httpx.get(f"{s.url}/api/health").json()["queueDepth"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert httpx.get(f"{s.url}/api/health").json()["queueDepth"] == 0
