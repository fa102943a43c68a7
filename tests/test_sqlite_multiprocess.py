"""The SQLite broker shared by several processes on one file, as the embedded profile runs it.

Each child is a fresh interpreter (``python -c CHILD``) with its own connections: nothing is
inherited through fork. Children print one JSON line: what they received and when.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nearline.brokers.sqlite import SqliteBroker

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "requests"

CHILD = r"""
import json, sys, time
from nearline.brokers.sqlite import SqliteBroker

url, queue, mode, name, lease_s = sys.argv[1:6]
broker = SqliteBroker(url)
try:
    print("ready", flush=True)
    if mode == "drain":
        sys.stdin.readline()  # "go": every child starts together
        own = [(f"{name}-{i:03d}", name.encode()) for i in range(50)]
        broker.send_many(queue, own[:40])
        for message_id, body in own[40:]:
            broker.send(queue, body, message_id=message_id)
        got = []
        while True:
            batch = broker.receive(queue, 4, wait_s=0.2, lease_s=float(lease_s))
            got += [[d.message_id, d.delivery_count, time.time()] for d in batch]
            if not batch and broker.depth(queue) == 0:
                break
            time.sleep(0.002)  # "compute", so that every child gets a share
            if batch:
                broker.complete(batch[0])
                assert broker.complete_many(batch[1:]) == []
        print(json.dumps(got), flush=True)
    else:  # hold: lease a batch and never settle it (the parent kills this process)
        batch = broker.receive(queue, 100, wait_s=5, lease_s=float(lease_s))
        print(json.dumps([[d.message_id, d.delivery_count, time.time()] for d in batch]), flush=True)
        time.sleep(60)
finally:
    broker.close()
"""


@contextmanager
def children(url: str, *specs: tuple[str, str, float]) -> Iterator[list[subprocess.Popen[str]]]:
    """Start a child per ``(mode, name, lease_s)``; wait until each is ready; kill leftovers."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, url, QUEUE, mode, name, str(lease_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for mode, name, lease_s in specs
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()


def results(proc: subprocess.Popen[str], timeout: float = 30) -> list[tuple[str, int, float]]:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return [(mid, count, at) for mid, count, at in json.loads(out.strip().splitlines()[-1])]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'shared' / 'nearline.db'}"


def test_processes_share_a_queue_and_each_message_goes_to_exactly_one(url: str) -> None:
    with _opened(url) as broker:
        broker.send_many(QUEUE, [(f"parent-{i:03d}", b"p") for i in range(200)])
        names = [f"child{i}" for i in range(4)]
        with children(url, *[("drain", name, 30.0) for name in names]) as procs:
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            per_child = [results(p) for p in procs]
        assert broker.depth(QUEUE) == 0
    expected = {f"parent-{i:03d}" for i in range(200)} | {f"{n}-{i:03d}" for n in names for i in range(50)}
    received = [mid for got in per_child for mid, _, _ in got]
    assert len(received) == len(expected) == 400
    assert set(received) == expected
    assert {count for got in per_child for _, count, _ in got} == {1}
    assert sum(1 for got in per_child if got) >= 2, "no contention: one child drained everything"


def test_leases_of_a_killed_process_come_back_after_they_expire(url: str) -> None:
    lease_s = 1.0
    with _opened(url) as broker:
        broker.send_many(QUEUE, [(f"m{i}", b"x") for i in range(10)])
        with children(url, ("hold", "doomed", lease_s)) as [doomed]:
            assert doomed.stdout is not None
            held = json.loads(doomed.stdout.readline())
            doomed.kill()  # SIGKILL: no cleanup, the leases stay in the file
            doomed.wait()
        assert sorted(mid for mid, _, _ in held) == sorted(f"m{i}" for i in range(10))
        leased_by = max(at for _, _, at in held)
        assert broker.depth(QUEUE) == 10
        with children(url, ("drain", "heir", 30.0)) as [heir]:
            assert heir.stdin is not None
            heir.stdin.write("go\n")
            heir.stdin.flush()
            got = results(heir)
    inherited = [(mid, count, at) for mid, count, at in got if mid.startswith("m")]
    assert sorted(mid for mid, _, _ in inherited) == sorted(f"m{i}" for i in range(10))
    assert {count for _, count, _ in inherited} == {2}
    assert min(at for _, _, at in inherited) >= leased_by + lease_s - 0.05


@contextmanager
def _opened(url: str) -> Iterator[SqliteBroker]:
    broker = SqliteBroker(url)
    try:
        yield broker
    finally:
        broker.close()
