"""Hostile and careless submissions against a real ``nearline serve``: never a 5xx (issue #12).

One battery, one server per profile (SQLite, then Redis; one worker process each): every
request that can never succeed is a 4xx whose message names the problem, and every request that
was accepted reads back with ``GET`` (200/202, valid JSON), also once the job has ended; the
``identity`` pipeline echoes its input, so odd-but-valid inputs must come back equal. Limits are
docs/api.md's ("Limits").
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from conftest import require_server
from serving import Server, running_server
from waiting import wait_until

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
PIPELINES = TESTS / "data" / "hostile_pipelines.yaml"
REDIS_DB = 6  # this module's own database (other modules use 8..15); flushed before and after
MAX_DEPTH = 64  # docs/api.md, Limits: arrays and objects nest at most this deep (the body is 1)
MAX_BODY = 1_048_576
ZEROS = "[" + ",".join(["0"] * 63)  # 63 of digits' 64 pixels; add the last and "]"


@pytest.fixture(scope="module", params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The embedded profile (SQLite), then the self-hosted one (Redis: what the issue saw fail)."""
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    args = ["--pipelines", str(PIPELINES)]
    client = None
    if request.param == "redis":
        require_server("Redis", "127.0.0.1", 6379)
        client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
        client.flushdb()
        args += ["--broker", f"redis://127.0.0.1:6379/{REDIS_DB}"]
    workers: list[int] = []
    try:
        with running_server(tmp_path_factory.mktemp(f"hostile-{request.param}"), *args, env=env) as s:
            yield s
            workers = children(s.proc.pid)
    finally:
        # A worker outliving the server would recreate its streams after the flush.
        wait_until(lambda: not any(map(running, workers)), 30, "the server's workers to exit")
        if client is not None:
            client.flushdb()
            client.close()


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux), e.g. the server's workers."""
    found = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in found.read_text().split()] if found.exists() else []


def running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # gone: no such file, or no such process while reading
        return False


def nested(depth: int) -> bytes:
    """A body ``depth`` levels deep, the body object being the first: {"input": {"v": [[...]]}}."""
    return ('{"input": {"v": ' + "[" * (depth - 2) + "]" * (depth - 2) + "}}").encode()


def nested_objects(depth: int) -> bytes:
    """The same depth in objects: {"input": {"a": {"a": ... {}}}}."""
    return ('{"input": ' + '{"a": ' * (depth - 2) + "{}" + "}" * (depth - 2) + "}").encode()


def reject(
    body: bytes | str,
    needle: str,
    status: int = 400,
    pipeline: str = "identity",
    *,
    id: str,
    query: dict[str, str] | None = None,
) -> Any:
    """A request that can never succeed: ``status``, and a message holding ``needle``."""
    raw = body.encode() if isinstance(body, str) else body
    return pytest.param(pipeline, raw, status, needle, query or {}, None, id=id)


def accept(body: bytes | str, pipeline: str = "identity", *, id: str, ends: str = "Completed") -> Any:
    """An odd but valid request: 202, and the job ends (``ends``) and reads back."""
    raw = body.encode() if isinstance(body, str) else body
    return pytest.param(pipeline, raw, 202, None, {}, ends, id=id)


BATTERY = [
    # numbers: NaN, infinities and out-of-range numbers, anywhere in the body
    reject(b'{"input": {"v": [1, NaN]}}', "input.v[1]", id="nan-in-input"),
    reject(b'{"input": {"v": Infinity}}', "input.v", id="infinity-in-input"),
    reject(b'{"input": {"v": [-Infinity]}}', "input.v[0]", id="minus-infinity-in-input"),
    reject(b'{"input": {"v": [0, 0, 1e400]}}', "input.v[2]", id="1e400-in-input"),
    reject(b'{"input": {"v": {"w": -1e400}}}', "input.v.w", id="minus-1e400-in-input"),
    reject(b'{"input": {"n": 1' + b"0" * 400 + b"}}", "input.n", id="400-digit-integer"),
    reject(b'{"input": {"n": 1' + b"0" * 250 + b"e99}}", "input.n", id="long-mantissa-overflows"),
    reject(
        f'{{"input": {{"pixels": [NaN, {ZEROS[1:]}]}}}}', "input.pixels[0]", pipeline="digits", id="nan-pixel"
    ),
    reject(
        f'{{"input": {{"pixels": {ZEROS}, 1e400]}}}}', "input.pixels[63]", pipeline="digits", id="inf-pixel"
    ),
    reject(b'{"input": {}, "timeout_s": NaN}', "timeout_s", id="nan-timeout"),
    reject(b'{"input": {}, "timeout_s": Infinity}', "timeout_s", id="infinity-timeout"),
    reject(b'{"input": {}, "timeout_s": -Infinity}', "timeout_s", id="minus-infinity-timeout"),
    reject(b'{"input": {}, "timeout_s": 1e400}', "timeout_s", id="1e400-timeout"),
    reject(b'{"input": {}, "timeout_s": -1e400}', "timeout_s", id="minus-1e400-timeout"),
    reject(b'{"input": {}, "timeout_s": 1' + b"0" * 400 + b"}", "timeout_s", id="huge-int-timeout"),
    reject(b'{"input": {}, "priority": NaN}', "priority", id="nan-priority"),
    # strings: lone UTF-16 surrogates cannot be stored as UTF-8
    reject(b'{"input": {"text": "\\ud800"}}', "input.text", id="lone-high-surrogate"),
    reject(b'{"input": {"text": ["ok", "x\\udfff"]}}', "input.text[1]", id="lone-low-surrogate"),
    reject(b'{"input": {"t": "\\udc00\\ud800"}}', "surrogate", id="reversed-pair"),
    reject(b'{"input": {"a": {"\\ud800": 1}}}', "input.a", id="surrogate-in-key"),
    reject(b'{"input": {}, "\\ud800": 1}', "surrogate", id="surrogate-in-top-level-key"),
    reject(b'{"input": {}, "callback_url": "http://x/\\ud800"}', "callback_url", id="surrogate-in-callback"),
    reject(b'{"input": {"s": "\xff"}}', "UTF-8", id="invalid-utf8-byte"),
    reject(b'{"input": {"s": "\xed\xa0\x80"}}', "UTF-8", id="utf8-encoded-surrogate"),
    reject('{"input": {"s": "x"}}'.encode("utf-16"), "UTF-8", id="utf-16-body"),
    # nesting
    reject(nested(MAX_DEPTH + 1), "64", id="depth-65"),
    reject(nested_objects(MAX_DEPTH + 1), "64", id="depth-65-objects"),
    reject(nested(600), "nest", id="depth-600"),
    reject(nested_objects(900), "nest", id="depth-900-objects"),
    reject(nested(100_000), "nest", id="depth-100000"),
    reject(b"[" * 100_000, "nest", id="depth-100000-unclosed"),
    reject(b'{"input": ' + b'{"a": [' * 50_000, "nest", id="depth-100000-mixed-unclosed"),
    # the shape of the body
    reject(b"{not json", "not valid JSON", id="malformed"),
    reject(b"", "not valid JSON", id="empty-body"),
    reject(b'{"input": {}', "not valid JSON", id="truncated"),
    reject(b"[]", "JSON object", id="array-body"),
    reject(b"[1, 2]", "JSON object", id="array-body-2"),
    reject(b"42", "JSON object", id="number-body"),
    reject(b'"input"', "JSON object", id="string-body"),
    reject(b"null", "JSON object", id="null-body"),
    reject(b"true", "JSON object", id="true-body"),
    reject(b"NaN", "finite", id="nan-body"),
    reject(b'{"text": "hi"}', "input", id="missing-input"),
    reject(b'{"input": {}, "surprise": 1}', "surprise", id="unknown-field"),
    reject(b'{"input": {"a": 1, "a": 2}}', "'a'", id="duplicate-key"),
    reject(b'{"input": {}, "input": {"b": 1}}', "'input'", id="duplicate-top-level-key"),
    reject(b'{"input": null}', "input", id="input-null"),
    reject(b'{"input": [1, 2]}', "input", id="input-wrong-type"),
    reject(b'{"input": {"pixels": "abc"}}', "input.pixels", pipeline="digits", id="pixels-wrong-type"),
    reject(b'{"input": {"pixels": [1, 2, 3]}}', "input.pixels", pipeline="digits", id="pixels-too-few"),
    reject(b'{"input": {}, "timeout_s": "10"}', "timeout_s", id="timeout-string"),
    reject(b'{"input": {}, "timeout_s": true}', "timeout_s", id="timeout-bool"),
    reject(b'{"input": {}, "timeout_s": 0}', "timeout_s", id="timeout-zero"),
    reject(b'{"input": {}, "timeout_s": 3601}', "timeout_s", id="timeout-too-long"),
    reject(b'{"input": {}, "priority": "urgent"}', "priority", id="bad-priority"),
    reject(b'{"input": {}, "priority": ["high"]}', "priority", id="priority-list"),
    reject(b'{"input": {}, "callback_url": "ftp://example.com/x"}', "callback_url", id="callback-ftp"),
    reject(b'{"input": {}, "callback_url": "not a url"}', "callback_url", id="callback-not-url"),
    reject(b'{"input": {}, "callback_url": 5}', "callback_url", id="callback-number"),
    reject(b'{"input": {"x": "' + b"a" * MAX_BODY + b'"}}', "limit", status=413, id="huge-body"),
    reject(b'{"input": {}}', "wait", query={"wait": "31"}, id="wait-too-long"),
    reject(b'{"input": {}}', "wait", query={"wait": "-1"}, id="wait-negative"),
    reject(b'{"input": {}}', "wait", query={"wait": "nan"}, id="wait-nan"),
    reject(b'{"input": {}}', "wait", query={"wait": "1e400"}, id="wait-1e400"),
    reject(b'{"input": {}}', "wait", query={"wait": "soon"}, id="wait-word"),
    reject(b'{"input": {}}', "identity", status=404, pipeline="nope", id="unknown-pipeline"),
    reject(b'{"input": {}}', "identity", status=404, pipeline="x" * 3000, id="long-unknown-pipeline"),
    # odd but valid: accepted, and read back equal
    accept(nested(MAX_DEPTH), id="depth-64"),
    accept(nested_objects(MAX_DEPTH), id="depth-64-objects"),
    accept(b'{"input": {"s": "' + b"[{" * 200 + b'"}}', id="brackets-inside-a-string"),
    accept(b'{"input": {"s": "\\"[[[[\\\\"}}', id="escaped-quotes-and-brackets"),
    accept('{"input": {"s": "naïve 日本語 😀", "ctl": "\\u0000\\u001f\\n"}}', id="unicode-and-controls"),
    accept(b'{"input": {"s": "\\ud83d\\ude00"}}', id="escaped-surrogate-pair"),
    accept(b'{"input": {"": 0, "a.b": 1, "[0]": 2}}', id="odd-keys"),
    accept(
        b'{"input": {"n": [9223372036854775808, -0.0, 1e308, 5e-324, -1e-400, 1e-400]}}', id="edge-numbers"
    ),
    accept(b'{"input": {"x": "' + b"a" * (MAX_BODY - 100) + b'"}}', id="long-string-under-limit"),
    accept(("{" + '"input": {' + ",".join(f'"k{i}": {i}' for i in range(20_000)) + "}}"), id="many-keys"),
    accept(b'\xef\xbb\xbf{"input": {"bom": true}}', id="utf8-bom"),
    # 1 ms: a worker that takes it at once may still finish in time; either end reads back.
    accept(b'{"input": {}, "timeout_s": 1e-3}', id="tiny-timeout", ends="Completed|Failed"),
    accept(f'{{"input": {{"pixels": {ZEROS}, 16.0]}}}}', pipeline="digits", id="digits-edge-of-range"),
]


@pytest.mark.parametrize(("pipeline", "body", "status", "needle", "query", "ends"), BATTERY)
def test_battery(
    server: Server,
    pipeline: str,
    body: bytes,
    status: int,
    needle: str | None,
    query: dict[str, str],
    ends: str | None,
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post(
            f"/api/score/{pipeline}",
            content=body,
            params=query,
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code < 500, r.text[:2000]
        assert r.status_code == status, r.text[:2000]
        if needle is not None:
            message = r.json()["error"]["message"]
            assert needle in message, message
            assert len(message) < 1000, message[:2000]
            return
        job_id = r.json()["id"]
        doc = read_back(client, job_id)
        assert doc["runtimeStatus"] in ends.split("|"), doc.get("output")
        if ends == "Completed" and pipeline == "identity":
            assert doc["input"] == doc["output"] == json.loads(body.decode("utf-8-sig"))["input"]


def read_back(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """GET the job until it ends: every answer on the way is 200/202 with a JSON document."""

    def ended() -> dict[str, Any] | None:
        r = client.get(f"/api/jobs/{job_id}", params={"wait": 5})
        assert r.status_code in (200, 202), r.text[:2000]
        doc = r.json()
        assert doc["instanceId"] == job_id
        return doc if r.status_code == 200 else None

    doc = wait_until(ended, 60, f"job {job_id} to end")
    assert doc is not None  # wait_until returns only a true value
    again = client.get(f"/api/jobs/{job_id}")  # and it reads back again once stored
    assert again.status_code == 200 and again.json() == doc
    return doc


@pytest.mark.parametrize(("item", "shown"), [({"x": 1}, "NaN"), ({"nan": False}, "Infinity")])
def test_a_step_that_outputs_a_non_finite_number_fails_its_job(
    server: Server, item: dict[str, Any], shown: str
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/api/score/not-finite", json={"input": item})
        assert r.status_code == 202, r.text
        doc = read_back(client, r.json()["id"])
    assert doc["runtimeStatus"] == "Failed"
    error = doc["output"]["error"]
    assert error["code"] == "StepError"
    assert "output.ratio" in error["message"] and shown in error["message"], error


def test_a_step_bug_is_the_servers_step_error_with_a_traceback_in_the_log(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/api/score/buggy", json={"input": {"text": "hello"}})
        assert r.status_code == 202, r.text
        doc = read_back(client, r.json()["id"])
    assert doc["runtimeStatus"] == "Failed"
    error = doc["output"]["error"]
    assert (
        error["code"] == "StepError" and "step 'label'" in error["message"] and "KeyError" in error["message"]
    )
    wait_until(
        lambda: "Traceback" in server.output() and "pipeline_steps.py" in server.output(),
        10,
        lambda: f"the step's traceback in the server log:\n{server.output()[-3000:]}",
    )


def test_unknown_pipeline_lists_the_pipelines(server: Server) -> None:
    r = httpx.post(f"{server.url}/api/score/digitz", json={"input": {}})
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert "'digitz'" in message and all(n in message for n in ("digits", "identity", "not-finite", "buggy"))
