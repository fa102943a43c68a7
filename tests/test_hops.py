"""Where a job's time goes (nearline/hops.py): a real ``nearline serve`` times every hop of the
way, from the API's, the worker's and the lifecycle's stamps, on its ``GET /metrics``."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from serving import running_server

from nearline.hops import HOPS
from nearline.messages import ResultMessage

JOBS = 10


def hop_counts(metrics: str) -> dict[str, float]:
    counts = {}
    for family in text_string_to_metric_families(metrics):
        if family.name == "nearline_job_hop_seconds":
            for sample in family.samples:
                if sample.name.endswith("_count"):
                    counts[sample.labels["hop"]] = sample.value
    return counts


def test_every_hop_of_a_job_is_timed(tmp_path: Path) -> None:
    with running_server(tmp_path) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        for i in range(JOBS):
            answer = client.post("/api/score/identity?wait=10", json={"input": {"n": i}})
            assert answer.status_code == 200, answer.text
            assert (answer.json()["runtimeStatus"], answer.json()["output"]) == ("Completed", {"n": i})
        counts = hop_counts(client.get("/metrics").text)
    # Every job passes every hop but the last; a long-poll is timed when it saw the job end
    # (a job this fast may end before its request starts waiting).
    assert {hop: counts.get(hop) for hop in HOPS[:-1]} == dict.fromkeys(HOPS[:-1], JOBS)
    assert 1 <= counts["long_poll_answered"] <= JOBS


def test_a_result_without_the_worker_stamps_still_parses() -> None:
    # From a worker of before the stamps (or one that sends junk in them): the result counts,
    # its hops are not timed.
    body = b'{"id": "j", "status": "Completed", "output": 1, "received_at": "soon"}'
    result = ResultMessage.from_json(body)
    assert (result.output, result.request_enqueued_at, result.received_at) == (1, None, None)
    again = ResultMessage.from_json(ResultMessage.completed("j", 1, received_at=2.5).to_json())
    assert again.received_at == 2.5
