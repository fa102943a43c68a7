"""Wake-ups across processes for the SQLite queues (nearline/wakeups.py): a send in one process
wakes a receiver waiting in another at once, polling only backs them up.

The receivers here are given ``poll_ms=60000``: a message they get within their wait can only
have reached them through a ring (or, for a lease's end, through the wait until it).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from nearline import wakeups
from nearline.brokers.sqlite import SqliteBroker

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="wake-ups across processes are Linux's")

NO_POLL = "poll_ms=60000"


def in_another_process(code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )


def send_later(url: str, delay_s: float = 0.3) -> subprocess.Popen[str]:
    """A process that sends message ``m`` to queue ``q`` after ``delay_s``."""
    code = f"""
        import time
        from nearline.brokers.sqlite import SqliteBroker
        time.sleep({delay_s})
        broker = SqliteBroker({url!r})
        broker.send("q", b"x", message_id="m")
        broker.close()
    """
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], text=True)


def test_a_send_in_another_process_wakes_a_waiting_receiver(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/n.db?{NO_POLL}"
    receiver = SqliteBroker(url)
    sender = send_later(url)
    try:
        got = receiver.receive("q", 1, wait_s=10)
    finally:
        sender.wait(30)
        receiver.close()
    assert [d.message_id for d in got] == ["m"]


def test_a_receiver_waits_until_a_lease_ends_not_for_a_poll(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/n.db?{NO_POLL}"
    holder, waiter = SqliteBroker(url), SqliteBroker(url)
    try:
        holder.send("q", b"x", message_id="m")
        assert len(holder.receive("q", 1, wait_s=0, lease_s=0.3)) == 1  # then never settled
        started = time.monotonic()
        got = waiter.receive("q", 1, wait_s=10)
        assert [(d.message_id, d.delivery_count) for d in got] == [("m", 2)]
        assert time.monotonic() - started < 9  # the lease's end, not the wait's
    finally:
        holder.close()
        waiter.close()


def test_rings_wake_only_the_bells_of_their_queue(tmp_path: Path) -> None:
    bells = wakeups.acquire(tmp_path / "n.db")
    try:
        a, b = bells.bell("a"), bells.bell("b")
        a.arm()
        b.arm()
        bells.ring("b")
        assert not a.wait(0.05)
        assert b.wait(5)
        b.arm()
        assert not b.wait(0)  # a ring is heard once
    finally:
        wakeups.release(tmp_path / "n.db")


def test_a_ring_from_another_thread_ends_a_wait(tmp_path: Path) -> None:
    bells = wakeups.acquire(tmp_path / "n.db")
    try:
        bell = bells.bell("q")
        bell.arm()
        ringer = threading.Timer(0.05, bells.ring, args=("q",))
        ringer.start()
        assert bell.wait(10)
        ringer.join()
    finally:
        wakeups.release(tmp_path / "n.db")


def test_the_marker_of_a_receiver_killed_with_sigkill_is_removed_by_the_next_ring(tmp_path: Path) -> None:
    db = tmp_path / "n.db"
    done = in_another_process(f"""
        import os, signal
        from pathlib import Path
        from nearline import wakeups
        wakeups.acquire(Path({str(db)!r})).bell("q")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert done.returncode == -9, done.stderr
    wake_dir = tmp_path / "n.db-wake"
    assert len(list(wake_dir.iterdir())) == 1  # left behind: nobody closed it
    bells = wakeups.acquire(db)
    try:
        bells.ring("q")
    finally:
        wakeups.release(db)
    assert list(wake_dir.iterdir()) == []


def test_bells_go_with_the_broker(tmp_path: Path) -> None:
    broker = SqliteBroker(f"sqlite:///{tmp_path}/n.db")
    assert broker.receive("q", 1, wait_s=0.01) == []  # a wait: this thread has a bell now
    assert len(list((tmp_path / "n.db-wake").iterdir())) == 1
    broker.close()
    assert list((tmp_path / "n.db-wake").iterdir()) == []


def test_without_wakeups_other_processes_are_polled(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/n.db?wakeups=off"
    receiver = SqliteBroker(url)
    sender = send_later(url)
    try:
        got = receiver.receive("q", 1, wait_s=10)
    finally:
        sender.wait(30)
        receiver.close()
    assert [d.message_id for d in got] == ["m"]
    assert not (tmp_path / "n.db-wake").exists()
