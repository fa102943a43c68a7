"""`nearline serve` start, stop and worker supervision, against real `nearline serve` subprocesses.

The start test guards against the deadlock of issue #12: a worker forked from the threaded server
(``preexec_fn``) once hung in ``sqlite3_finalize`` before ``exec``. Workers must be fresh
interpreters, every start must answer and every stop must end cleanly.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from serving import Server, identity_pipelines, running_server, start_server, stop_server
from waiting import wait_until

from nearline.restarts import MAX_RESTART_DELAY_S, RESTART_DELAY_S, STABLE_S, Restarts


@pytest.fixture(name="identity_pipelines")
def identity_pipelines_fixture(tmp_path: Path) -> Path:
    """A pipelines file with the identity pipeline only: workers start without torch."""
    return identity_pipelines(tmp_path)


def children(pid: int) -> dict[int, str]:
    """The child processes of ``pid`` and their command lines (Linux /proc)."""
    found: dict[int, str] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            with contextlib.suppress(OSError):  # it exited meanwhile
                found[kid] = Path(f"/proc/{kid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return found


def worker_pids(server: Server) -> list[int]:
    """The server's worker processes (spawned interpreters running ``spawn_main``)."""
    return [pid for pid, cmd in children(server.proc.pid).items() if "spawn_main" in cmd]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_answer_and_stop(n: int, data_dir: Path, pipelines: Path) -> None:
    """Start ``nearline serve`` in ``data_dir``; a job must answer, from one spawned worker, and
    SIGTERM must stop the server and its worker with exit status 0."""
    server = start_server(data_dir, "--workers", "1", "--pipelines", str(pipelines), ready_timeout=20)
    try:
        r = httpx.post(f"{server.url}/api/score/identity?wait=10", json={"input": {"n": n}}, timeout=15)
        assert r.status_code == 200, (n, r.status_code, r.text, server.output())
        assert r.json()["output"] == {"n": n}
        workers = worker_pids(server)
        # A fresh interpreter (multiprocessing's spawn), never a fork of the threaded server.
        assert len(workers) == 1, (n, children(server.proc.pid))
    finally:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        stop_server(server)
        pytest.fail(f"start {n}: nearline serve did not stop within 15 s of SIGTERM:\n{server.output()}")
    assert code == 0, f"start {n}: exit status {code} after SIGTERM:\n{server.output()}"
    assert not any(map(alive, workers)), f"start {n}: a worker outlived the server"


@pytest.mark.slow
def test_many_consecutive_starts_each_answer_and_stop_cleanly(
    tmp_path: Path, identity_pipelines: Path
) -> None:
    # Fifteen separate servers, two at a time: each is its own process (the deadlock of #12 was
    # in one server forking its worker), so a pair checks what two starts in a row check, in
    # about half the time on a 2-core runner. Every start's failure is raised here.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = [
            pool.submit(start_answer_and_stop, n, tmp_path / f"run-{n}", identity_pipelines)
            for n in range(15)
        ]
        for run in runs:
            run.result()  # each start has its own deadlines: none can hang the test


@pytest.mark.slow
def test_a_killed_worker_shows_degraded_then_ok(tmp_path: Path, identity_pipelines: Path) -> None:
    with running_server(tmp_path, "--workers", "1", "--pipelines", str(identity_pipelines)) as server:

        def health() -> dict:
            return httpx.get(f"{server.url}/api/health", timeout=5).json()

        (first,) = wait_until(lambda: worker_pids(server), 10, "the worker process")
        wait_until(lambda: health()["status"] == "ok", 10, "health ok")
        os.kill(first, signal.SIGKILL)
        degraded = wait_until(
            lambda: (doc := health())["status"] == "degraded" and doc, 10, lambda: f"degraded: {health()}"
        )
        assert "worker 0" in degraded["reason"] and "SIGKILL" in degraded["reason"], degraded
        wait_until(lambda: health()["status"] == "ok", 30, lambda: f"ok again: {health()}")
        assert "reason" not in health()
        assert worker_pids(server) and worker_pids(server) != [first]
        r = httpx.post(f"{server.url}/api/score/identity?wait=10", json={"input": {"a": 1}}, timeout=15)
        assert r.status_code == 200 and r.json()["runtimeStatus"] == "Completed"


# --- the restart policy, on a clock of the test's own ------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_restarts_back_off_doubling_to_the_cap() -> None:
    clock = Clock()
    restarts = Restarts(0, clock=clock)
    delays = []
    for _ in range(10):
        restarts.started()
        clock.now += 0.5  # dies half a second after each start, before it is ready
        delays.append(restarts.exited(1, "boom"))
        clock.now += delays[-1]
    assert delays[:4] == [RESTART_DELAY_S, 2 * RESTART_DELAY_S, 4 * RESTART_DELAY_S, 8 * RESTART_DELAY_S]
    assert max(delays) == MAX_RESTART_DELAY_S and delays[-1] == MAX_RESTART_DELAY_S


def test_a_worker_that_stays_up_starts_its_backoff_again() -> None:
    clock = Clock()
    restarts = Restarts(0, clock=clock)
    for _ in range(4):
        restarts.started()
        restarts.exited(1, "boom")
    restarts.started()
    restarts.ready()
    clock.now += STABLE_S + 1
    assert restarts.exited(1, "boom") == RESTART_DELAY_S


def test_a_worker_that_keeps_dying_is_degraded_with_the_reason_then_ok() -> None:
    clock = Clock()
    restarts = Restarts(2, clock=clock)
    restarts.started()
    restarts.ready()
    assert restarts.problem() is None
    for _ in range(3):
        clock.now += 5
        restarts.exited(1, "RuntimeError: out of luck")
        assert restarts.problem() is not None  # down, waiting to be restarted
        clock.now += 4
        restarts.started()
        assert restarts.problem() is not None  # restarted, not ready yet
        restarts.ready()
    reason = restarts.problem()
    assert reason is not None
    assert reason.startswith("worker 2 exited with 1 3 times in the last 60 s"), reason
    assert reason.endswith("RuntimeError: out of luck")
    clock.now += 61  # a minute without a crash
    assert restarts.problem() is None


def test_an_exit_by_signal_is_named() -> None:
    restarts = Restarts(0, clock=Clock())
    restarts.started()
    restarts.exited(-signal.SIGKILL, "")
    assert (restarts.problem() or "").startswith("worker 0 was killed by SIGKILL 1 time")
