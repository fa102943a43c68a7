"""The SQLite file behind the sqlite broker and store: URL form, shared file, restart."""

from __future__ import annotations

import contextlib
import gc
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from nearline.brokers import open_broker
from nearline.brokers.sqlite import SqliteBroker
from nearline.errors import ConfigError
from nearline.jobs import JobRecord
from nearline.sqlite_db import MIGRATIONS, parse_url
from nearline.store import open_store


def test_url_path_is_everything_after_the_three_slashes(tmp_path: Path) -> None:
    assert parse_url("sqlite:///data/nearline.db").path == Path("data/nearline.db")
    assert parse_url("sqlite:////var/lib/nearline.db").path == Path("/var/lib/nearline.db")
    assert parse_url(f"sqlite:///{tmp_path}/n.db").path == tmp_path / "n.db"


def test_url_options() -> None:
    url = parse_url("sqlite:///n.db?busy_timeout_ms=100&synchronous=full&poll_ms=5")
    assert (url.busy_timeout_ms, url.synchronous, url.poll_ms) == (100, "FULL", 5.0)
    assert parse_url("sqlite:///n.db").synchronous == "NORMAL"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://n.db",  # two slashes: would put the file name in the host part
        "sqlite:///",
        "sqlite:///n.db?lease=1",
        "sqlite:///n.db?poll_ms",
        "sqlite:///n.db?synchronous=off",
        "sqlite:///n.db?poll_ms=soon",
    ],
)
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_url(url)


def test_relative_path_is_created_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    SqliteBroker("sqlite:///state/queues/nearline.db").close()
    assert (tmp_path / "state" / "queues" / "nearline.db").is_file()


def test_broker_and_store_share_one_wal_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/nearline.db"
    broker, store = open_broker(url), open_store(url)
    try:
        broker.send("q", b"x", message_id="job-1")
        store.create(JobRecord(id="job-1", pipeline="digits", input={}))
    finally:
        broker.close()
        store.close()
    conn = sqlite3.connect(tmp_path / "nearline.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert conn.execute("SELECT message_id FROM messages").fetchall() == [("job-1",)]
        assert conn.execute("SELECT id FROM jobs").fetchall() == [("job-1",)]
    finally:
        conn.close()


def test_messages_and_leases_survive_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/nearline.db"
    first = SqliteBroker(url)
    first.send_many("q", [("a", b"1"), ("b", b"2")])
    [leased] = first.receive("q", 1, wait_s=0, lease_s=30)
    first.close()
    again = SqliteBroker(url)
    try:
        assert again.depth("q") == 2
        assert [d.message_id for d in again.receive("q", 10, wait_s=0)] == ["b"]
        again.complete(leased)  # the lease token is in the file, not in the process
        assert again.depth("q") == 1
    finally:
        again.close()


def test_a_send_wakes_a_receiver_of_another_broker_on_the_same_file(tmp_path: Path) -> None:
    # poll_ms=2000: the receiver's next look without a ring would be at 2 s. Only the ring
    # (nearline/wakeups.py) delivers the send at 0.3 s at once.
    url = f"sqlite:///{tmp_path}/nearline.db?poll_ms=2000"
    receiver, sender = SqliteBroker(url), SqliteBroker(url)
    sent_at: list[float] = []

    def send() -> None:
        sender.send("q", b"x", message_id="m")
        sent_at.append(time.monotonic())

    timer = threading.Timer(0.3, send)
    try:
        timer.start()
        got = receiver.receive("q", 1, wait_s=5)
        received_at = time.monotonic()
    finally:
        timer.join()
        receiver.close()
        sender.close()
    assert [d.message_id for d in got] == ["m"]
    assert received_at - sent_at[0] < 0.1


def _open_files(path: Path) -> int:
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # the listing's own fd, gone by now
            count += os.readlink(fd) == str(path)
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_connections_close_with_their_thread_and_with_the_broker(tmp_path: Path) -> None:
    # SQLite holds a closed connection's file descriptor until the process's other
    # connections to the file close (POSIX locks belong to the process) and reuses it for the
    # next one: with connections closed as their threads end, thread churn stays flat.
    db = tmp_path / "nearline.db"
    broker = SqliteBroker(f"sqlite:///{db}")
    try:
        for _ in range(5):
            threads = [threading.Thread(target=broker.depth, args=("q",)) for _ in range(10)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            gc.collect()
        assert _open_files(db) <= 20  # 51 if every thread's connection had leaked
    finally:
        broker.close()
    assert _open_files(db) == 0


def test_an_expired_message_does_not_swallow_a_new_send_of_its_id(tmp_path: Path) -> None:
    # Not in the contract suite: Service Bus's duplicate detection drops such a send.
    broker = SqliteBroker(f"sqlite:///{tmp_path}/nearline.db")
    try:
        broker.send("q", b"old", message_id="m", ttl_s=0.05)
        broker.send("q", b"old", message_id="n", ttl_s=0.05)
        time.sleep(0.1)  # the TTL must pass
        broker.send_many("q", [("m", b"new"), ("other", b"x")])
        broker.send("q", b"new", message_id="n")
        broker.send("q", b"ignored", message_id="n")  # still idempotent while it exists
        assert [(d.message_id, d.body) for d in broker.receive("q", 10, wait_s=0)] == [
            ("m", b"new"),
            ("other", b"x"),
            ("n", b"new"),
        ]
    finally:
        broker.close()


def test_under_full_sends_are_fsynced_and_leases_and_settles_are_not(tmp_path: Path) -> None:
    # A lease or settle lost to a power loss is redone by at-least-once delivery; the next durable
    # commit's fsync covers it anyway (nearline/sqlite_db.py, Database._sync).
    broker = SqliteBroker(f"sqlite:///{tmp_path}/n.db?synchronous=full")
    conn = broker._db.conn()  # this thread's connection: the one the calls below use
    level, seen = ["FULL"], []

    def trace(sql: str) -> None:
        words = sql.split()
        if words[:2] == ["PRAGMA", "synchronous"] and "=" in words:
            level[0] = words[-1]
        elif words[0] in ("INSERT", "UPDATE", "DELETE"):
            seen.append((words[0], level[0]))

    conn.set_trace_callback(trace)
    try:
        broker.send("q", b"x", message_id="m")
        (d,) = broker.receive("q", 1, wait_s=0)
        broker.complete(d)
    finally:
        conn.set_trace_callback(None)
    # The send; the receive's drop of expired messages and its lease; the complete.
    assert seen == [("INSERT", "FULL"), ("DELETE", "NORMAL"), ("UPDATE", "NORMAL"), ("DELETE", "NORMAL")]
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again for the next send
    broker.close()
