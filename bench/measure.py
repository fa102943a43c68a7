"""The measurement every end-to-end system gets (nearline over HTTP, Celery): one round.

1. warm-up (not measured): full batches (``warmup_jobs`` per worker), then small ones, so every
   worker has run its models at the batch shapes both later phases produce. TorchScript's
   profiling executor makes a worker's first ~7 batches 5-8x slower than the rest: a system
   measured cold would show the JIT, not its steady state;
2. saturation: closed loop, :data:`~bench.settings.CONCURRENCY` in flight for
   ``saturation_s``; throughput = completions per second after the ramp-up (``settle_s``);
3. open loop: the run's fixed Poisson schedule at the offered rate → latency percentiles;
4. overhead: the ``identity`` pipeline at :data:`~bench.settings.OVERHEAD_RATE` → latency,
   and, where the system reports them (nearline's ``nearline_job_hop_seconds``), the mean time
   of each hop of the way (nearline/hops.py).

Before the saturation run the system is left idle for ``idle_s``: the CPU its processes use
meanwhile (% of a core) shows whether anything polls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from bench import workload
from bench.cases import Context
from bench.load import Call, Run, closed_loop, open_loop
from bench.progress import Progress
from bench.settings import CONCURRENCY, IDENTITY, OPEN_LOOP_FRACTION, OVERHEAD_RATE, PIPELINE, Sizes
from bench.stats import latency_summary

#: Distinct inputs cycled through (more than any run sends, so no text repeats back to back).
_INPUTS = 4096
#: Pause between phases: lets the previous phase's stragglers and the system settle.
_PAUSE_S = 0.5


#: Cumulative CPU seconds of the parts of a system (``{"system": s, "redis": s}``).
CpuMeter = Callable[[], dict[str, float]]
#: Cumulative ``{hop: (seconds, jobs)}`` of a system's per-hop histogram.
HopMeter = Callable[[], Awaitable[dict[str, tuple[float, float]]]]


class Client(Protocol):
    """What a system hands the measurement: one :data:`Call` per pipeline, and a close."""

    def caller(self, pipeline: str) -> Call: ...

    async def close(self) -> None: ...


def latencies_ms(run: Run) -> list[float]:
    return [round(1000 * s, 3) for s in run.latencies]


async def measure(
    client: Client,
    ctx: Context,
    cpu: CpuMeter | None = None,
    workers: int = 1,
    hops: HopMeter | None = None,
) -> dict[str, Any]:
    """One round on a running system, on ``ctx.mix``. ``ctx.rate`` None: offer
    OPEN_LOOP_FRACTION of the capacity this round measures (how the peer's round sets the
    mix's rate). ``cpu``, when given, is read around the saturation run: CPU milliseconds per
    job of each part of the system, and of this process (the load generator) as ``client``,
    and around an idle spell. ``workers``: the warm-up is per worker. ``hops``, when given, is
    read around the overhead run. Idle CPU and the overhead run only when ``ctx.overhead``
    (they do not depend on the mix)."""
    sizes, progress = ctx.sizes, ctx.progress
    inputs = workload.inputs(_INPUTS, mix=ctx.mix)
    topics, identity = client.caller(PIPELINE), client.caller(IDENTITY)
    await _warm_up(topics, identity, inputs, sizes.warmup_jobs * workers, workers, progress)
    idle = await _idle_cpu(cpu, sizes.idle_s, progress) if cpu and ctx.overhead else {}

    cpu_before, client_before = (cpu() if cpu else {}), time.process_time()
    sat = await closed_loop(
        topics,
        inputs,
        concurrency=CONCURRENCY,
        duration_s=sizes.saturation_s,
        progress=progress,
        phase="saturation",
    )
    throughput = sat.throughput(sizes.settle_s, sizes.saturation_s)
    if not throughput:
        raise RuntimeError(f"no job completed at saturation ({sat.errors} errors): {sat.error_samples}")
    cpu_ms = _per_job(cpu() if cpu else {}, cpu_before, len(sat.latencies))
    cpu_ms["client"] = 1000 * (time.process_time() - client_before) / max(len(sat.latencies), 1)
    progress.note(f"saturation {throughput:.1f} jobs/s ({sat.errors} errors)")
    await asyncio.sleep(_PAUSE_S)

    offered = ctx.rate if ctx.rate is not None else round(OPEN_LOOP_FRACTION * throughput, 1)
    schedule = workload.arrivals(offered, sizes.open_loop_s)
    fixed = await open_loop(topics, inputs, schedule, progress=progress, phase=f"open loop {offered:g}/s")
    fixed_summary = latency_summary(fixed.latencies, fixed.errors)
    p50, p99 = fixed_summary["p50_ms"], fixed_summary["p99_ms"]
    progress.note(f"open loop at {offered:g}/s: p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    figures = {
        "throughput": throughput,
        "saturation": {
            **latency_summary(sat.latencies, sat.errors),
            "elapsed_s": sat.elapsed,
            "cpu_ms_per_job": cpu_ms,
            "error_samples": sat.error_samples,
        },
        "idle_cpu_percent": idle,
        "rate": offered,
        "open_loop": {
            **fixed_summary,
            "error_samples": fixed.error_samples,
            "latencies_ms": latencies_ms(fixed),
        },
    }
    if ctx.overhead:
        await asyncio.sleep(_PAUSE_S)
        figures["overhead"] = await _overhead(identity, inputs, sizes, progress, hops)
    return figures


async def _warm_up(
    topics: Call, identity: Call, inputs: list[Any], jobs: int, workers: int, progress: Progress
) -> None:
    """Full batches, then small ones, then a few identity jobs; then a pause."""
    await closed_loop(topics, inputs[:jobs], concurrency=64 * workers, progress=progress, phase="warm-up")
    await closed_loop(topics, inputs[-48:], concurrency=4, progress=progress, phase="warm-up (small batches)")
    await closed_loop(identity, inputs[:16], concurrency=4)
    await asyncio.sleep(_PAUSE_S)


async def _overhead(
    identity: Call, inputs: list[Any], sizes: Sizes, progress: Progress, hops: HopMeter | None
) -> dict[str, Any]:
    """The identity pipeline at OVERHEAD_RATE, open loop: latency, and the hops' means."""
    schedule = workload.arrivals(OVERHEAD_RATE, sizes.overhead_s)
    hops_before = await hops() if hops else {}
    over = await open_loop(identity, inputs, schedule, progress=progress, phase="overhead (identity)")
    over_summary = latency_summary(over.latencies, over.errors)
    if hops:
        over_summary["hops_ms"] = _hop_means(await hops(), hops_before)
    progress.note(
        f"identity overhead: p50 {over_summary['p50_ms']:.1f} ms, p99 {over_summary['p99_ms']:.1f} ms"
    )
    return {**over_summary, "error_samples": over.error_samples, "latencies_ms": latencies_ms(over)}


def _per_job(after: dict[str, float], before: dict[str, float], jobs: int) -> dict[str, float]:
    return {part: 1000 * (after[part] - before[part]) / max(jobs, 1) for part in after}


async def _idle_cpu(cpu: CpuMeter, seconds: float, progress: Progress) -> dict[str, float]:
    """% of a core each part of the system uses while nothing is sent to it."""
    progress.update(f"idle for {seconds:g} s")
    before = cpu()
    await asyncio.sleep(seconds)
    after = cpu()
    used = {part: 100 * (after[part] - before[part]) / seconds for part in after}
    progress.note("idle CPU: " + ", ".join(f"{part} {pct:.2f}% of a core" for part, pct in used.items()))
    return used


def _hop_means(
    after: dict[str, tuple[float, float]], before: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """Mean milliseconds per job of each hop between two readings of the histogram."""
    out = {}
    for hop, (total, count) in after.items():
        total0, count0 = before.get(hop, (0.0, 0.0))
        if count > count0:
            out[hop] = 1000 * (total - total0) / (count - count0)
    return out
