"""The traffic split, measured: how close a split comes to its weights, and what drawing costs.

``python -m bench.deployments [--jobs N] [--rounds R]``: in this one process, submits through
:class:`~nearline.store_jobs.StoreJobs` over the in-memory broker and store (no HTTP, no worker),
to an endpoint ``ab`` of two deployments:

1. ``one``: all traffic on one deployment (what an endpoint of one ``deployment:`` does);
2. ``split``: ``{blue: 90, green: 10}``, a deployment drawn by weight per submit;
3. ``targeted``: the same endpoint with the ``nearline-deployment`` header (no draw).

The three are interleaved for ``--rounds`` rounds (the machine is shared); it prints the share
each round's split sent to ``green`` (the weight is 0.10), each case's median microseconds per
submit and the ratios of the medians to ``one``, from this one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from nearline.brokers.memory import MemoryBroker
from nearline.pipelines.spec import Catalog, load_pipelines
from nearline.store.memory import MemoryStore
from nearline.store_jobs import StoreJobs

_STEP = '{name: echo, function: "nearline.examples.identity:identity", batch: true}'
_ENDPOINT = f"""
pipelines:
  ab:
    input_schema: {{type: object}}
    deployments:
      blue: {{steps: [{_STEP}]}}
      green: {{steps: [{_STEP}]}}
    traffic: {{traffic}}
"""
_BODY = json.dumps({"input": {"x": 1}}).encode()


def _catalog(folder: Path, traffic: str) -> Catalog:
    path = folder / f"{len(list(folder.iterdir()))}.yaml"
    path.write_text(_ENDPOINT.replace("{traffic}", traffic))
    return load_pipelines(path)


async def _submit(catalog: Catalog, jobs: int, target: str | None) -> tuple[float, float]:
    """Microseconds per submit, and the share that went to ``green``."""
    service = StoreJobs(catalog, MemoryBroker(), MemoryStore(), max_queue_depth=jobs + 1)
    green = 0
    started = time.perf_counter()
    for _ in range(jobs):
        job, _ = await service.submit("ab", _BODY, deployment=target)
        green += job.deployment == "green"
    return (time.perf_counter() - started) / jobs * 1e6, green / jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.deployments", description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000, help="submissions per case and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-deployments-"))
    cases = {
        "one": (_catalog(folder, "{blue: 100}"), None),
        "split": (_catalog(folder, "{blue: 90, green: 10}"), None),
        "targeted": (_catalog(folder, "{blue: 90, green: 10}"), "green"),
    }
    micros: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (catalog, target) in cases.items():
            us, green = asyncio.run(_submit(catalog, args.jobs, target))
            micros[name].append(us)
            if name == "split":
                print(f"split {{blue: 90, green: 10}} over {args.jobs} submissions: green {green:.3f}")
    base = statistics.median(micros["one"])
    for name, values in micros.items():
        median = statistics.median(values)
        print(f"{name:<9} {median:8.1f} us/submit  x{median / base:.3f} of one")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
