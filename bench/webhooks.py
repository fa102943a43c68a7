"""What callbacks cost: ``python -m bench.webhooks``.

    python -m bench.webhooks [--jobs 2000] [--deliveries 300] [--redis redis://127.0.0.1:6379/3]

Times, in one run, on each store (SQLite in a temporary folder; Redis when ``--redis`` is given,
a database this benchmark empties):

* ``finish``: ending jobs without a ``callback_url`` against ending jobs with one, whose
  delivery goes into the outbox in the same transaction (the SQLite trigger, the Redis script):
  the ratio is what the outbox costs a job's end;
* an idle dispatcher's look at the outbox (``claim_deliveries`` finding nothing), which every
  replica makes twice a second;
* delivering: signed events through one dispatcher (8 senders) to a receiver on loopback that
  answers 204 at once, in events per second, against the same number of plain unsigned POSTs
  from 8 threads with one ``httpx.Client`` each: the ratio is what the outbox, the lease, the
  guard, signing and a fresh connection per attempt cost over a bare POST.

Loopback receivers only. Figures are this machine's; the ratios are the point.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from nearline.addresses import AllowList
from nearline.callback_sender import CallbackSender
from nearline.callbacks import CallbackGuard
from nearline.deliveries import Dispatcher
from nearline.jobs import JobRecord, JobStatus
from nearline.settings import WebhookSettings
from nearline.store.base import StatusStore
from nearline.store.sqlite import SqliteStore
from nearline.webhooks import new_secret, parse_secrets


def timed_finishes(store: StatusStore, jobs: int, callback_url: str | None) -> float:
    """Seconds to end ``jobs`` jobs, one ``finish`` each."""
    now = time.time()
    ids = [uuid.uuid4().hex for _ in range(jobs)]
    for job_id in ids:
        store.create(
            JobRecord(job_id, "identity", {"n": 1}, created=now, updated=now, callback_url=callback_url)
        )
    started = time.perf_counter()
    for job_id in ids:
        store.finish(job_id, JobStatus.COMPLETED, {"n": 2}, time.time())
    return time.perf_counter() - started


def empty_claims(store: StatusStore, rounds: int = 500) -> float:
    """Median seconds of a claim that finds nothing due."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        store.claim_deliveries(0.0, 60, 8)  # nothing is due at the epoch
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


@contextmanager
def receiver() -> Iterator[tuple[str, list[int]]]:
    got: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            got.append(1)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
        server.server_close()


def delivered_per_s(store: StatusStore, deliveries: int) -> float:
    """Events per second through one dispatcher, from the jobs' end to the last 2xx."""
    settings = WebhookSettings(secrets=parse_secrets(new_secret()))
    with receiver() as (url, got):
        d = Dispatcher(store, CallbackSender(CallbackGuard(AllowList.parse("127.0.0.1/32"))), settings)
        now = time.time()
        ids = [uuid.uuid4().hex for _ in range(deliveries)]
        for job_id in ids:
            store.create(JobRecord(job_id, "identity", {"n": 1}, created=now, updated=now, callback_url=url))
        started = time.perf_counter()
        for job_id in ids:
            store.finish(job_id, JobStatus.COMPLETED, {"n": 2}, time.time())
        d.start()
        d.wake()
        while len(got) < deliveries:
            d.wake()
            time.sleep(0.005)
        took = time.perf_counter() - started
        d.stop()
    return deliveries / took


def plain_posts_per_s(deliveries: int) -> float:
    """The same number of bare POSTs from 8 threads, each with its own kept-alive client."""
    with receiver() as (url, _):
        local = threading.local()

        def post(_: int) -> None:
            client = getattr(local, "client", None) or httpx.Client()
            local.client = client
            client.post(
                url, content=b'{"type":"job.completed"}', headers={"Content-Type": "application/json"}
            )

        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(post, range(deliveries)))
        return deliveries / (time.perf_counter() - started)


def report(name: str, open_store: Callable[[str], StatusStore], jobs: int, deliveries: int) -> None:
    """Each part on a fresh store (``open_store(part)``): no part sees another's outbox."""
    store = open_store("finish")
    try:
        plain = timed_finishes(store, jobs, None)
        outbox = timed_finishes(store, jobs, "http://127.0.0.1:9/never-sent")  # no dispatcher runs
        print(f"{name}: finish without a callback {jobs / plain:,.0f}/s, with one {jobs / outbox:,.0f}/s")
        print(f"{name}:   the outbox costs a job's end x{outbox / plain:.2f}")
        idle = empty_claims(store) * 1e6
        print(f"{name}: an idle dispatcher's look at the outbox: {idle:.0f} us (twice a second)")
    finally:
        store.close()
    store = open_store("deliver")
    try:
        rate, bare = delivered_per_s(store, deliveries), plain_posts_per_s(deliveries)
        print(f"{name}: delivered {rate:,.0f} events/s; bare POSTs {bare:,.0f}/s; ratio {rate / bare:.2f}")
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--deliveries", type=int, default=300)
    parser.add_argument("--redis", help="also a Redis store (this database is emptied)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        report(
            "sqlite",
            lambda part: SqliteStore(url.replace("bench.db", f"{part}.db")),
            args.jobs,
            args.deliveries,
        )
    if args.redis:
        import redis

        from nearline.store.redis_hashes import RedisStore

        def fresh(part: str) -> StatusStore:
            with redis.Redis.from_url(args.redis) as r:
                r.flushdb()
            return RedisStore(args.redis)

        report("redis", fresh, args.jobs, args.deliveries)
        with redis.Redis.from_url(args.redis) as r:
            r.flushdb()


if __name__ == "__main__":
    main()
