"""Ad-hoc: `nearline serve` with worker threads (memory://) against worker processes (SQLite).

Run: .venv/bin/python bench/serve_modes.py  (600 topics jobs at 96 in flight, twice each, interleaved)
"""

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from serving import running_server  # the tests' server helper, on the path above

TEXTS = [
    "The striker scored twice in the final.",
    "Parliament passed the budget after a long debate.",
    "The new phone has a faster chip and a better camera.",
    "Vaccines reduce the risk of severe illness.",
]


async def load(url: str, n: int, conc: int = 96) -> float:
    sem = asyncio.Semaphore(conc)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=conc)) as c:

        async def one(i: int) -> None:
            async with sem:
                r = await c.post(
                    f"{url}/api/score/topics",
                    params={"wait": 30},
                    json={"input": {"text": TEXTS[i % 4] * (1 + i % 3)}},
                )
                assert r.status_code == 200, r.text

        await asyncio.gather(*(one(i) for i in range(64)))  # warm-up
        t = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - t)


def main() -> None:
    for label, args in (
        ("threads (memory://)", ("--broker", "memory://")),
        ("processes (sqlite)", ()),
        ("threads (memory://)", ("--broker", "memory://")),
        ("processes (sqlite)", ()),
    ):
        with running_server(Path(tempfile.mkdtemp()), "--workers", "1", *args) as s:
            print(label, round(asyncio.run(load(s.url, 600)), 1), "jobs/s", flush=True)


if __name__ == "__main__":
    main()
