"""What the Azure profile's parity costs a worker, per batch: ``python -m bench.azure_checks``.

    python -m bench.azure_checks [--rounds 200] [--redis redis://127.0.0.1:6379/5]

Starts its own Azurite (``make test`` installs it under ``.tools/``) on a free loopback port and
times, in one run:

* the cancellation check (:class:`nearline.worker.hooks.Tombstoned`: one listing of the batch's
  deadline hour) on batches of 1, 8 and 32 with no job terminated (the common case), against
  one read per job (the design it replaced; concurrent reads) and against the Redis profile's own
  check of the same batch (:class:`nearline.worker.hooks.Liveness`'s read: one round trip);
* the claim check's round trip of a 600 KB body (put, read back, delete) against Azurite.

Azurite on loopback has no network between client and store: these are the client's and the
emulator's costs. In a region, each read adds a round trip to the storage account (a few ms);
a listing pays one per batch where per-job reads pay one per job (overlapped, but each with its
client-side cost, which is what this machine shows).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from nearline.azure_blobs import AzureBlobs, account_client
from nearline.brokers.base import Delivery
from nearline.messages import RequestMessage
from nearline.tombstones import Tombstones, tombstone_name
from nearline.worker.hooks import Hook, Liveness, Tombstoned, Work

ROOT = Path(__file__).resolve().parent.parent
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
BATCHES = (1, 8, 32)


def start_azurite(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Azurite's blob service on a free loopback port; returns it and its connection string."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = ROOT / ".tools" / "node_modules" / ".bin" / "azurite-blob"
    process = subprocess.Popen(
        [
            *(str(command), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(folder)),
            *("--silent", "--disableTelemetry", "--skipApiVersionCheck"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    account = f"http://127.0.0.1:{port}/devstoreaccount1"
    return (
        process,
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};BlobEndpoint={account};",
    )


def batch_of(n: int) -> list[Work]:
    now = time.time()
    return [
        Work(
            Delivery("q", job, b"", "normal", 1, job, now),
            RequestMessage(job, "identity", {}, now, deadline=now + 60),
        )
        for job in (uuid.uuid4().hex for _ in range(n))
    ]


def median_ms(fn: Callable[[], object], rounds: int) -> float:
    fn()  # warm: connections opened
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def hook_ms(hook: Hook, n: int, rounds: int) -> float:
    return median_ms(lambda: hook.before(batch_of(n), "bench"), rounds)


def redis_liveness(url: str) -> Hook | None:
    """The Redis profile's check, on records that exist (jobs still Pending)."""
    try:
        from nearline.store import open_store

        store = open_store(url)
        store.statuses(["probe"])
    except Exception as exc:
        print(f"(no Redis at {url}: {exc}; the Redis column is left out)")
        return None

    class Pending(Liveness):
        def before(self, batch: list[Work], worker: str) -> None:
            self.store.statuses(w.message.id for w in batch if w.message)  # the read, not the writes

    return Pending(store)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.azure_checks", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/5", help="a database for the Redis column")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        process, connection = start_azurite(Path(folder))
        try:
            container = account_client(connection).get_container_client("nearline-terminated")
            container.create_container()
            store = AzureBlobs(container)
            Tombstones(store).record("terminated-earlier", time.time() + 30)  # the hour is not empty
            listing = Tombstoned(Tombstones(store))
            per_job = _PerJob(store)
            liveness = redis_liveness(args.redis)
            print(f"per-batch check, median of {args.rounds} (ms); Azurite on loopback, no job terminated")
            print("batch  listing  per-job reads  per-job/listing  redis-liveness  listing/redis")
            for n in BATCHES:
                t, s = hook_ms(listing, n, args.rounds), hook_ms(per_job, n, args.rounds)
                r = hook_ms(liveness, n, args.rounds) if liveness else float("nan")
                print(f"{n:5d}  {t:7.2f}  {s:13.2f}  {s / t:14.1f}x  {r:14.2f}  {t / r:12.1f}x")
            bodies = AzureBlobs(account_client(connection).get_container_client("nearline-bodies"))
            body = b"x" * 600_000

            def round_trip() -> None:
                bodies.put("bench/600kb", body, 60)
                bodies.get_many(["bench/600kb"])
                bodies.delete_many(["bench/600kb"])

            print(
                f"claim check, 600 KB put + read + delete: {median_ms(round_trip, args.rounds // 4):.2f} ms"
            )
        finally:
            process.terminate()
            process.wait(timeout=10)
    return 0


class _PerJob:
    """The check as one read per job (concurrent): what a listing per batch replaced."""

    def __init__(self, store: AzureBlobs) -> None:
        self.store = store

    def before(self, batch: list[Work], worker: str) -> None:
        self.store.get_many([tombstone_name(w.message.id, w.message.deadline) for w in batch if w.message])


if __name__ == "__main__":
    sys.exit(main())
