"""Safe rollouts (docs/deployments.md): ``nearline endpoints rollout`` moves traffic step by
step behind gates, against a real ``nearline serve`` with real jobs flowing, and puts the split
back when the new deployment fails, when too few requests come, or on Ctrl-C."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import compare_steps
import httpx
import pytest
from serving import Server, project_server
from waiting import wait_until

from nearline import rollout
from nearline.cli import main
from nearline.client import Client
from nearline.errors import ConfigError
from nearline.rollout import Gates, Plan, Rollout, step_traffic, verdict

STEPS = Path(compare_steps.__file__)
START = {"v1": 100, "v2": 0}

PIPELINES = """
pipelines:
  good:
    input_schema: {type: object}
    deployments:
      v1: {steps: [{name: classify, function: "compare_steps:classify"}]}
      v2: {steps: [{name: classify, function: "compare_steps:contrary"}]}
    traffic: {v1: 100, v2: 0}
  bad:
    input_schema: {type: object}
    deployments:
      v1: {steps: [{name: classify, function: "compare_steps:classify"}]}
      v2: {steps: [{name: classify, function: "compare_steps:fragile"}]}
    traffic: {v1: 100, v2: 0}
  idle:  # no test sends it traffic
    input_schema: {type: object}
    deployments:
      v1: {steps: [{name: classify, function: "compare_steps:classify"}]}
      v2: {steps: [{name: classify, function: "compare_steps:classify"}]}
    traffic: {v1: 100, v2: 0}
"""


# --- the plan ------------------------------------------------------------------------------


def test_a_step_takes_the_share_from_the_others_in_proportion() -> None:
    assert step_traffic({"a": 100, "b": 0}, "b", 10) == {"a": 90, "b": 10}
    assert step_traffic({"a": 60, "b": 30, "c": 10}, "c", 50) == {"a": 33, "b": 17, "c": 50}
    assert step_traffic({"a": 50, "b": 50, "c": 0}, "c", 100) == {"a": 0, "b": 0, "c": 100}
    for share in range(1, 101):
        assert sum(step_traffic({"a": 33, "b": 33, "c": 34, "d": 0}, "d", share).values()) == 100


def test_a_step_needs_live_traffic_to_take_from() -> None:
    with pytest.raises(ConfigError, match="no other deployment has live traffic"):
        step_traffic({"a": 0, "b": 0}, "b", 10)


@pytest.mark.parametrize(
    ("steps", "every", "message"),
    [((), 1.0, "--steps"), ((50, 10), 1.0, "increase"), ((0, 100), 1.0, "1 to 100"), ((10,), 0, "--every")],
)
def test_a_bad_plan_is_refused_naming_the_flag(steps: tuple[int, ...], every: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Plan("e", "v2", steps, every, Gates(0.01, 500))


def test_the_verdict_says_what_was_measured_against_which_gate() -> None:
    gates = Gates(0.01, 500, min_requests=20)
    assert verdict({"requests": 3}, gates) == (None, "3 of 20 requests")
    ok = {"requests": 40, "failure_rate": 0.0, "p99_ms": 85.2}
    assert verdict(ok, gates) == (True, "40 requests, failure rate 0.000 <= 0.01, p99 85 ms <= 500")
    slow = {**ok, "p99_ms": 900.0}
    assert verdict(slow, gates) == (False, "40 requests, failure rate 0.000 <= 0.01, p99 900 ms > 500")
    failing = {**ok, "failure_rate": 0.05}
    assert verdict(failing, gates)[1] == "40 requests, failure rate 0.050 > 0.01, p99 85 ms <= 500"


@pytest.mark.parametrize(("text", "seconds"), [("60s", 60.0), ("5m", 300.0), ("1", 1.0), ("0.5s", 0.5)])
def test_durations(text: str, seconds: float) -> None:
    assert rollout.parse_duration(text) == seconds


# --- against a real server -----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with project_server(tmp_path_factory.mktemp("rollout"), PIPELINES, STEPS) as s:
        yield s


@pytest.fixture
def traffic(server: Server) -> Iterator[Any]:
    """Untargeted submissions to an endpoint, in a thread, while the test runs."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def to(endpoint: str) -> None:
        def send() -> None:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                while not stop.wait(0.01):
                    client.post(f"/api/score/{endpoint}", json={"input": {"topic": "sport"}})

        threads.append(threading.Thread(target=send, daemon=True))
        threads[-1].start()

    yield to
    stop.set()
    for t in threads:
        t.join(timeout=15)


def endpoint(server: Server, name: str) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/api/endpoints/{name}", timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def reset(server: Server, name: str) -> None:
    r = httpx.put(f"{server.url}/api/endpoints/{name}/traffic", json={"traffic": START}, timeout=10)
    assert r.status_code == 200, r.text


def run(server: Server, name: str, *, every: float = 1.0, **kw: Any) -> tuple[int, str]:
    """Roll ``v2`` of ``name`` out through 50% and 100%; ``(exit status, what it printed)``."""
    out = io.StringIO()
    plan = Plan(name, "v2", (50, 100), every, Gates(0.01, 60_000, min_requests=5))
    with Client(server.url) as client:
        return Rollout(client, plan, out, **kw).run(), out.getvalue()


def reasons(server: Server, name: str) -> list[str]:
    return [entry["reason"] for entry in endpoint(server, name)["history"]]


def test_a_rollout_that_passes_every_gate_ends_at_100_percent(server: Server, traffic: Any) -> None:
    reset(server, "good")
    traffic("good")
    code, out = run(server, "good")
    assert code == 0, out
    assert endpoint(server, "good")["traffic"] == {"v1": 0, "v2": 100}
    assert "rollout done: v2 at 100%" in out
    history = reasons(server, "good")
    assert history[0].startswith("rollout step 2/2: v2 at 100%: failure rate 0.000 <= 0.01, p99 ")
    assert history[1] == "rollout step 2/2: v2 at 100%: moving v1 0%, v2 100%"
    assert history[2].startswith("rollout step 1/2: v2 at 50%: failure rate 0.000 <= 0.01")
    assert history[3] == "rollout step 1/2: v2 at 50%: moving v1 50%, v2 50%"


def command(server: Server, *args: str) -> subprocess.Popen[str]:
    """``nearline endpoints rollout *args`` against ``server``, as a user runs it."""
    cmd = [sys.executable, "-m", "nearline", "endpoints", "rollout", *args, "--url", server.url]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_failing_deployment_is_rolled_back_saying_why(server: Server, traffic: Any) -> None:
    reset(server, "bad")
    traffic("bad")
    proc = command(server, "bad", "v2", "--steps", "50,100", "--every", "1s", "--min-requests", "5")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert endpoint(server, "bad")["traffic"] == START
    newest = reasons(server, "bad")[0]
    assert newest.startswith("rollback: rollout step 1/2: v2 at 50%: ")
    assert "failure rate 1.000 > 0.01" in newest
    assert out.splitlines()[-1].startswith("rolled back to v1 100%, v2 0%: rollout step 1/2: v2 at 50%: ")


def test_too_few_requests_roll_back_after_ten_times_every(server: Server) -> None:
    code, _ = run(server, "idle", every=0.2)
    assert code == 1
    assert endpoint(server, "idle")["traffic"] == START
    newest = reasons(server, "idle")[0]
    assert newest.startswith("rollback: rollout step 1/2: v2 at 50%: only 0 of 5 requests in ")
    assert newest.endswith(" s (--min-requests)")


def test_ctrl_c_mid_rollout_puts_the_split_back(server: Server, traffic: Any) -> None:
    reset(server, "good")
    traffic("good")
    proc = command(server, "good", "v2", "--steps", "50,100", "--every", "60s")
    try:
        wait_until(lambda: endpoint(server, "good")["traffic"] == {"v1": 50, "v2": 50}, 30, "step 1")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert endpoint(server, "good")["traffic"] == START
    assert reasons(server, "good")[0] == "rollback: interrupted"


def test_the_command_refuses_an_unknown_deployment(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["endpoints", "rollout", "good", "v9", "--every", "1s", "--url", server.url]) == 2
    assert "no deployment 'v9'; the deployments are: v1, v2" in capsys.readouterr().err
