"""Load generators: closed-loop (saturation) and open-loop (a fixed arrival schedule).

Both drive a :data:`Call`: an async function that submits one input and returns once its result
is there (raising on any failure). Latency is measured per request: in the closed loop from
submit to result; in the open loop from the request's *scheduled* arrival to its result, so a
client or system that falls behind shows it as latency instead of quietly sending less (no
coordinated omission).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.progress import Progress

Call = Callable[[Any], Awaitable[None]]

#: Error messages kept per run (the count is always complete).
_KEEP_ERRORS = 5


@dataclass
class Run:
    """What one load run saw. Times are seconds; ``done_at`` is relative to the run's start."""

    latencies: list[float] = field(default_factory=list)
    done_at: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    def ok(self, latency: float, done_at: float) -> None:
        self.latencies.append(latency)
        self.done_at.append(done_at)

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.error_samples) < _KEEP_ERRORS:
            self.error_samples.append(f"{type(exc).__name__}: {exc}"[:300])

    def throughput(self, start_s: float, end_s: float) -> float:
        """Completions per second between ``start_s`` and ``end_s`` (the steady window)."""
        done = sum(1 for t in self.done_at if start_s <= t <= end_s)
        return done / (end_s - start_s) if end_s > start_s else 0.0


async def closed_loop(
    call: Call,
    inputs: Sequence[Any],
    *,
    concurrency: int,
    duration_s: float | None = None,
    progress: Progress | None = None,
    phase: str = "",
) -> Run:
    """``concurrency`` clients, each submitting its next input as soon as its last one ends.

    With ``duration_s``, the clients cycle through ``inputs`` and stop submitting after that
    long (the requests in flight are still awaited); without it, every input is sent once.
    """
    run = Run()
    source = itertools.cycle(inputs) if duration_s is not None else iter(inputs)
    start = time.perf_counter()
    stop_at = start + duration_s if duration_s is not None else float("inf")

    async def client() -> None:
        for value in source:
            if time.perf_counter() >= stop_at:
                return
            sent = time.perf_counter()
            try:
                await call(value)
            except Exception as exc:  # one failed request is a figure, not the end of the run
                run.failed(exc)
            else:
                now = time.perf_counter()
                run.ok(now - sent, now - start)

    async def report() -> None:
        while progress is not None:
            elapsed = time.perf_counter() - start
            of = f", {elapsed:.1f}/{duration_s:.0f} s" if duration_s else f"/{len(inputs)}"
            progress.update(f"{phase} {len(run.latencies)}{of} jobs")
            await asyncio.sleep(0.25)

    reporter = asyncio.create_task(report())
    try:
        await asyncio.gather(*(client() for _ in range(concurrency)))
    finally:
        reporter.cancel()
    run.elapsed = time.perf_counter() - start
    return run


async def open_loop(
    call: Call,
    inputs: Sequence[Any],
    schedule: Sequence[float],
    *,
    progress: Progress | None = None,
    phase: str = "",
) -> Run:
    """Send ``inputs[i % len(inputs)]`` at ``schedule[i]`` seconds from the start, whatever the
    system's state; latency runs from the scheduled instant to the result."""
    run = Run()
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    origin = time.perf_counter() + 0.05

    async def one(value: Any, at: float) -> None:
        try:
            await call(value)
        except Exception as exc:
            run.failed(exc)
        else:
            now = time.perf_counter() - origin
            run.ok(now - at, now)

    tasks = []
    for i, at in enumerate(schedule):
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(inputs[i % len(inputs)], at)))
        if progress is not None and i % 10 == 0:
            progress.update(f"{phase} {i}/{len(schedule)} sent, {len(run.latencies)} done")
    pending = [t for t in tasks if not t.done()]
    while pending:
        if progress is not None:
            progress.update(f"{phase} {len(run.latencies)}/{len(schedule)} done")
        _, still = await asyncio.wait(pending, timeout=0.25)
        pending = list(still)
    run.elapsed = time.perf_counter() - origin
    return run
