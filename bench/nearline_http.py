"""One request through nearline's HTTP API, the way a client that wants the answer sends it.

``POST /api/score/{pipeline}?wait=30`` (200 with the status document when the job ends within
the wait), else ``GET <Location>?wait=30`` until it ends.

The load generator shares the 2 cores with the system under test, so its own cost matters: it
uses ``aiohttp`` (pinned in requirements-worker.txt), which measured ~0.2 ms of CPU per request
here against ~3 ms for ``httpx.AsyncClient`` (and so :mod:`nearline.client`, built on httpx):
with httpx the client alone would take a third of a core at 100 jobs/s.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.cases import Context
from bench.load import Call
from bench.measure import CpuMeter, measure
from bench.settings import CONCURRENCY, REQUEST_TIMEOUT_S

#: Long-poll of each request (the contract's maximum).
WAIT_S = "30"
#: The server's per-hop histogram (nearline/hops.py).
HOP_METRIC = "nearline_job_hop_seconds"


class JobNotCompleted(RuntimeError):
    """The job ended in another state than Completed, or the API answered an error."""


class NearlineClient:
    """An async client for one ``nearline serve`` base URL; ``await close()`` when done.

    Create it inside the event loop that will use it.
    """

    def __init__(self, base_url: str, concurrency: int = CONCURRENCY) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = aiohttp.ClientSession(
            # Idle connections are dropped before uvicorn drops them (its keep-alive is 5 s):
            # reusing one the server is closing at that instant fails the request.
            connector=aiohttp.TCPConnector(limit=concurrency + 8, keepalive_timeout=3),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        )

    def caller(self, pipeline: str) -> Call:
        """The :data:`~bench.load.Call` that scores one input with ``pipeline``.

        ``Location`` (absolute, per the contract) is followed as given.
        """
        url = f"{self.base_url}/api/score/{pipeline}"

        async def call(value: Any) -> None:
            status, location, body = await self._fetch("POST", url, json={"input": value})
            while status == 202 and location:
                status, location, body = await self._fetch("GET", location)
            if status != 200:
                raise JobNotCompleted(f"HTTP {status}: {body[:200]!r}")
            document = json.loads(body)
            if document["runtimeStatus"] != "Completed":
                raise JobNotCompleted(f"{document['runtimeStatus']}: {document.get('output')}")

        return call

    async def _fetch(self, method: str, url: str, **kw: Any) -> tuple[int, str | None, bytes]:
        """One long-polling request: (status, Location, body)."""
        async with self._http.request(method, url, params={"wait": WAIT_S}, **kw) as response:
            return response.status, response.headers.get("location"), await response.read()

    async def hop_totals(self) -> dict[str, tuple[float, float]]:
        """``{hop: (seconds, jobs)}`` so far, from the server's ``nearline_job_hop_seconds``."""
        async with self._http.get(f"{self.base_url}/metrics") as response:
            text = await response.text()
        totals: dict[str, list[float]] = {}
        for family in text_string_to_metric_families(text):
            if family.name != HOP_METRIC:
                continue
            for sample in family.samples:
                hop = sample.labels.get("hop", "")
                if sample.name.endswith("_sum"):
                    totals.setdefault(hop, [0.0, 0.0])[0] = sample.value
                elif sample.name.endswith("_count"):
                    totals.setdefault(hop, [0.0, 0.0])[1] = sample.value
        return {hop: (total, count) for hop, (total, count) in totals.items()}

    async def close(self) -> None:
        await self._http.close()


def measure_url(base_url: str, ctx: Context, cpu: CpuMeter | None = None, workers: int = 1) -> dict[str, Any]:
    """One round of :func:`bench.measure.measure` against the server at ``base_url``."""

    async def go() -> dict[str, Any]:
        client = NearlineClient(base_url)
        try:
            return await measure(client, ctx, cpu, workers, client.hop_totals)
        finally:
            await client.close()

    return asyncio.run(go())
