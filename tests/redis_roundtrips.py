"""Counts the Redis round trips of a job, end to end, with MONITOR: API, worker and lifecycle.

``python tests/redis_roundtrips.py [DB] [JOBS]`` (default database 9, flushed before and after,
10 jobs) runs a ``StoreJobs`` (the API's job seam), a worker and a lifecycle in this process,
each on its own connections as in the Redis profile, submits ``identity`` jobs one at a time,
each waited for as ``POST ...?wait=`` does, and prints the commands clients sent per job, by
script or command. Commands that run on timers whatever the load (the deadline sweep, the
split store's cached read) are counted apart. ``tests/test_redis_fast_path.py``
asserts on the same count; docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import redis

from nearline.brokers import redis_lua as broker_lua
from nearline.brokers.redis_streams import RedisBroker
from nearline.lifecycle import Lifecycle
from nearline.models.repository import ModelRepository
from nearline.pipelines.runner import PipelineRunner
from nearline.pipelines.spec import load_pipelines
from nearline.store import redis_lua as store_lua
from nearline.store.redis_hashes import RedisStore
from nearline.store_jobs import StoreJobs
from nearline.worker.loop import Worker, WorkerConfig

PIPELINES = Path(__file__).resolve().parent / "data" / "redis_pipelines.yaml"
#: Sent on timers, not per job: the deadline sweep, retention, the split store's read (cached
#: for half a second, so one every few jobs here), the callback dispatcher's look at the outbox
#: (every 0.5 s; a job ends without waking it unless it has a callback).
TIMED = {"ZRANGEBYSCORE", "purge", "GET", "SELECT", "claim_deliveries"}


def script_names() -> dict[str, str]:
    """``{sha1: script name}`` of every script the store and the broker run."""
    scripts: dict[str, str] = {}
    for module in (broker_lua, store_lua):
        scripts.update({hashlib.sha1(src.encode()).hexdigest(): name for name, src in module.SCRIPTS.items()})
    try:
        from nearline.store.redis_submit import SUBMIT
    except ImportError:  # before the submit script existed (counting an older tree)
        return scripts
    scripts[hashlib.sha1(SUBMIT.encode()).hexdigest()] = "submit"
    try:
        from nearline.store.redis_settle import SETTLE_ENDED
    except ImportError:  # before the worker ended jobs itself
        return scripts
    scripts[hashlib.sha1(SETTLE_ENDED.encode()).hexdigest()] = "settle_ended"
    try:
        from nearline.store.redis_receive import RECEIVE_STARTED
    except ImportError:  # before a worker's receive started its jobs
        return scripts
    scripts[hashlib.sha1(RECEIVE_STARTED.encode()).hexdigest()] = "receive_started"
    return scripts


#: The client name of the connections counted (``?client_name=`` of their URL): others that
#: share the database (a bench, another test) are left out.
CLIENT_NAME = "nearline-roundtrips"


class Recorder:
    """MONITOR on ``db`` in a thread: the commands the connections named :data:`CLIENT_NAME` send
    (not the ones scripts run), labelled; in :attr:`commands` once recording stops."""

    def __init__(self, client: redis.Redis, db: int) -> None:
        self.db = db
        self.names = script_names()
        self.commands: list[str] = []
        self._client = client
        self._seen: list[tuple[str, str]] = []
        self._monitor = client.monitor()
        self._monitor.__enter__()
        self._on = False
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while True:
            try:
                found = self._monitor.next_command()
            except (redis.RedisError, OSError, ValueError):
                return
            if self._on and found["db"] == self.db and found["client_type"] != "lua":
                addr = f"{found['client_address']}:{found['client_port']}"
                self._seen.append((addr, self._label(found["command"].split())))

    def _label(self, words: list[str]) -> str:
        name = words[0].upper()
        if name == "EVALSHA":
            return self.names.get(words[1], "script?")
        if name == "XREAD":
            return "XREAD BLOCK"
        if name == "BLPOP":
            return "BLPOP (bell)"
        return name

    def record(self, on: bool) -> None:
        time.sleep(0.05)  # MONITOR's stream lags the commands a little
        self._on = on
        if not on:
            ours = {c["addr"] for c in self._client.client_list() if c.get("name") == CLIENT_NAME}
            self.commands = [label for addr, label in self._seen if addr in ours]

    def close(self) -> None:
        self._monitor.connection.disconnect()


def count(url: str, db: int, jobs: int) -> tuple[Counter[str], int]:
    """``(commands by label, jobs)`` for ``jobs`` identity jobs after a warm-up."""
    catalog = load_pipelines(PIPELINES)
    client = redis.Redis.from_url(url)
    url = f"{url}?client_name={CLIENT_NAME}"
    client.flushdb()
    api_store, api_broker = RedisStore(url), RedisBroker(url)
    front = StoreJobs(catalog, api_broker, api_store)
    life_broker, worker_broker, worker_store = RedisBroker(url), RedisBroker(url), RedisStore(url)
    life = Lifecycle(life_broker, api_store)
    repo = ModelRepository(PIPELINES.parent)  # identity loads no model
    runner = PipelineRunner(catalog, repo)
    worker = Worker(worker_broker, runner, store=worker_store, config=WorkerConfig())
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    life.start()
    thread.start()
    recorder = Recorder(client, db)

    async def one(i: int) -> None:
        job, _ = await front.submit("identity", b'{"input": {"i": %d}}' % i)
        done = await front.wait(job.id, 10.0, job)  # as POST ...?wait= does: the job it created
        assert done.status.terminal, done
        await asyncio.sleep(0.02)  # the settles after the answer (worker's, lifecycle's) land

    async def run() -> None:
        for i in range(5):  # warm-up: groups made, scripts loaded, wake-up subscription
            await one(i)
        recorder.record(True)
        for i in range(jobs):
            await one(i)
        recorder.record(False)

    try:
        asyncio.run(run())
    finally:
        stop.set()
        thread.join(timeout=10)
        life.stop()
        recorder.close()
        for part in (api_store, api_broker, life_broker, worker_broker, worker_store):
            part.close()  # the store's wake-up thread too
        client.flushdb()
        client.close()
    return Counter(recorder.commands), jobs


def main(argv: list[str]) -> int:
    db = int(argv[1]) if len(argv) > 1 else 9
    jobs = int(argv[2]) if len(argv) > 2 else 10
    counted, n = count(f"redis://127.0.0.1:6379/{db}", db, jobs)
    per_job = sum(v for k, v in counted.items() if k not in TIMED) / n
    for label, value in counted.most_common():
        print(f"{label:24} {value / n:5.2f} per job{'  (timed)' if label in TIMED else ''}")
    print(f"round trips per job (timed ones apart): {per_job:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
