"""The outcomes log, measured: what it adds to ending jobs, and what a comparison costs.

``python -m bench.outcomes [--batches B] [--batch N] [--rounds R]``: in this one process, ends
``B`` batches of ``N`` jobs with ``finish_many`` (the lifecycle's call) on a SQLite store with
the ``jobs_outcome`` trigger and on one without it (dropped), interleaved for ``R`` rounds (the
machine is shared), and prints the median microseconds per ended job of each; then the
milliseconds of one ``/compare`` over every outcome written (SQLite, and Redis when
``--redis URL`` is given: its database is flushed first and after).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time

from nearline.jobs import JobRecord, JobStatus
from nearline.outcomes import compare
from nearline.store.base import StatusStore
from nearline.store.redis_hashes import RedisStore
from nearline.store.sqlite import SqliteStore


def end_jobs(store: StatusStore, batches: int, batch: int, tag: str) -> float:
    """Create then end ``batches`` x ``batch`` jobs; median microseconds per ended job."""
    now = time.time()
    per_job = []
    for b in range(batches):
        ids = [f"{tag}-{b}-{i}" for i in range(batch)]
        for job_id in ids:
            store.create(JobRecord(job_id, "ab", {"x": 1}, created=now, updated=now, deployment="v1"))
        started = time.perf_counter()
        store.finish_many([(job_id, JobStatus.COMPLETED, {"label": "a"}) for job_id in ids], time.time())
        per_job.append((time.perf_counter() - started) / batch * 1e6)
    return statistics.median(per_job)


def compare_ms(store: StatusStore) -> tuple[int, float]:
    started = time.perf_counter()
    doc = compare(store.outcomes(), "ab", ["v1"], 3600, time.time())
    return doc["deployments"]["v1"]["requests"], (time.perf_counter() - started) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--redis", help="also measure Redis at this URL (its database is flushed)")
    args = p.parse_args()
    folder = tempfile.mkdtemp()
    with_log, without = SqliteStore(f"sqlite:///{folder}/a.db"), SqliteStore(f"sqlite:///{folder}/b.db")
    with sqlite3.connect(f"{folder}/b.db") as conn:  # the same schema, less the trigger
        conn.execute("DROP TRIGGER jobs_outcome")
    times: dict[str, list[float]] = {"trigger": [], "none": []}
    for r in range(args.rounds):
        times["trigger"].append(end_jobs(with_log, args.batches, args.batch, f"t{r}"))
        times["none"].append(end_jobs(without, args.batches, args.batch, f"n{r}"))
    trig, none = statistics.median(times["trigger"]), statistics.median(times["none"])
    print(f"sqlite finish_many: {trig:.1f} us/job with the outcomes trigger, {none:.1f} without", end="")
    print(f" (x{trig / none:.2f})")
    print("sqlite compare: {} outcomes in {:.1f} ms".format(*compare_ms(with_log)))
    if args.redis:
        store = RedisStore(args.redis)
        store.client.flushdb()
        per_job = end_jobs(store, args.batches, args.batch, "r")
        print(f"redis finish_many: {per_job:.1f} us/job (outcome included)")
        print("redis compare: {} outcomes in {:.1f} ms".format(*compare_ms(store)))
        store.client.flushdb()


if __name__ == "__main__":
    main()
