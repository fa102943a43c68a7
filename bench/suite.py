"""The run: which cases, on which request mixes, in what order, how often; collects every
round's figures.

Rounds are interleaved (round 1 of every case on every mix, then round 2...) so that a slow
spell of a shared machine hits all systems alike rather than one system's every repetition.
On each mix the peer (Celery, torch) goes first: its first round's capacity sets the open-loop
rate every system is then offered on that mix (:data:`~bench.settings.OPEN_LOOP_FRACTION`
of it). Idle CPU and the identity overhead do not depend on the mix: they are measured on the
first mix only.

The record: ``{"meta": {...}, "mixes": {mix: {"cases": {key: ...}, "offered_rate": ...}}}``;
:func:`view` gives one mix's part in the shape :mod:`bench.report` reads.
"""

from __future__ import annotations

import os
import platform
import subprocess
import tempfile
import time
import traceback
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.cases import Case, Context
from bench.celery_peer import CeleryPeer
from bench.embedded import Embedded
from bench.limit import Limit
from bench.progress import Progress
from bench.redis_profile import RedisProfile
from bench.runtimes import ONNX
from bench.settings import (
    CONCURRENCY,
    FALLBACK_RATE,
    OPEN_LOOP_FRACTION,
    OVERHEAD_RATE,
    PIPELINE,
    ROOT,
    Sizes,
)
from bench.triton import TritonDirect, TritonNearline
from bench.worker_drain import WorkerDrain

PEER = "celery"


def all_cases() -> list[Case]:
    """Every case, in the order a round runs them (the peer first)."""
    return [
        CeleryPeer(),
        CeleryPeer(runtime=ONNX),
        Limit(),
        Limit(sort=False),
        Limit(runtime=ONNX),
        WorkerDrain("sqlite"),
        WorkerDrain("redis"),
        Embedded(1),
        Embedded(2),
        Embedded(2, runtime=ONNX),
        Embedded(2, torch_threads=1),
        RedisProfile(1),
        RedisProfile(2),
        RedisProfile(2, runtime=ONNX),
        CeleryPeer(one_thread=False),
        TritonDirect(),
        TritonNearline(),
    ]


def select(cases: list[Case], only: list[str] | None) -> list[Case]:
    """The cases named in ``only``: exact keys, else prefixes (``embedded`` → both embedded).

    Raises:
        ValueError: A name matches no case.
    """
    if not only:
        return cases
    chosen = []
    for name in only:
        matches = [c for c in cases if c.key == name] or [c for c in cases if c.key.startswith(f"{name}-")]
        if not matches:
            raise ValueError(f"no case {name!r}; cases: {', '.join(c.key for c in cases)}")
        chosen += [c for c in matches if c not in chosen]
    return [c for c in cases if c in chosen]  # keep the round order


def run(
    cases: list[Case],
    sizes: Sizes,
    models: Path,
    rate: float | None,
    mixes: list[str],
    progress_stream: Any = None,
) -> dict[str, Any]:
    """Run ``cases`` on each of ``mixes`` for ``sizes.rounds`` interleaved rounds; the run's record."""
    skipped = {c.key: reason for c in cases if (reason := c.unavailable(models))}
    active = [c for c in cases if c.key not in skipped]
    total = len(mixes) * sum(1 if c.once else sizes.rounds for c in active)
    progress = Progress(total, progress_stream)
    record: dict[str, Any] = {"meta": {**_meta(sizes, models), "mixes": mixes}, "mixes": {}}
    for mix in mixes:
        entries: dict[str, dict[str, Any]] = {}
        for case in cases:
            entries[case.key] = {"title": case.title, "kind": case.kind, "runtime": case.runtime}
            entries[case.key].update(skipped=skipped.get(case.key), rounds=[], failures=[])
        source = "--rate" if rate is not None else "celery, round 1"
        if rate is None and not any(c.key == PEER for c in active):
            source = "fallback (peer not in this run)"
        record["mixes"][mix] = {"cases": entries, "offered_rate": rate, "offered_rate_source": source}
        if source.startswith("fallback"):
            record["mixes"][mix]["offered_rate"] = FALLBACK_RATE
    for key, reason in skipped.items():
        print(f"skipped {key}: {reason}", file=progress.stream, flush=True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="nearline-bench-") as tmp:
        for round_ in range(1, sizes.rounds + 1):
            for n, mix in enumerate(mixes):
                for case in active:
                    if not (case.once and round_ > 1):
                        _one(case, record["mixes"][mix], Context(
                            sizes, models, Path(tmp) / mix, progress, round_, None, mix, overhead=n == 0
                        ))  # fmt: skip
    record["meta"].update(elapsed_s=round(time.time() - started, 1), loadavg_end=os.getloadavg())
    return record


def _one(case: Case, part: dict[str, Any], ctx: Context) -> None:
    """One round of ``case`` on one mix, into that mix's ``part`` of the record."""
    ctx.progress.start(f"round {ctx.round} · {ctx.mix} · {case.title}")
    if part["offered_rate"] is None and case.key != PEER:  # the peer failed its first round
        part.update(offered_rate=FALLBACK_RATE, offered_rate_source="fallback (peer failed)")
    ctx.rate = part["offered_rate"]
    entry = part["cases"][case.key]
    try:
        figures = case.run(ctx)
    except Exception as exc:  # one broken system must not lose the others' figures
        ctx.progress.note(f"FAILED: {type(exc).__name__}: {str(exc)[:2000]}")
        entry["failures"].append({"round": ctx.round, "error": traceback.format_exc()[-4000:]})
        return
    entry["rounds"].append({"round": ctx.round, **figures})
    if part["offered_rate"] is None and case.key == PEER:
        part["offered_rate"] = figures["rate"]


def view(record: dict[str, Any], mix: str) -> dict[str, Any]:
    """One mix's part of ``record`` as ``{"meta", "cases"}``, its rate in the meta."""
    part = record["mixes"][mix]
    meta = {**record["meta"], "mix": mix}
    meta.update(offered_rate=part["offered_rate"], offered_rate_source=part["offered_rate_source"])
    return {"meta": meta, "cases": part["cases"]}


def _meta(sizes: Sizes, models: Path) -> dict[str, Any]:
    return {
        "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("torch", "celery", "redis", "httpx", "uvicorn")},
        "git": _git_rev(),
        "models": str(models),
        "pipeline": PIPELINE,
        "sizes": sizes.__dict__,
        "concurrency": CONCURRENCY,
        "open_loop_fraction": OPEN_LOOP_FRACTION,
        "overhead_rate": OVERHEAD_RATE,
        "loadavg_start": os.getloadavg(),
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_rev() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except OSError:
        return None
    return out.stdout.strip() or None
