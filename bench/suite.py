"""The run: which cases, in what order, how often; collects every round's figures.

Rounds are interleaved (round 1 of every case, then round 2 of every case...) so that a slow
spell of a shared machine hits all systems alike rather than one system's every repetition.
The peer (Celery) goes first: its first round's capacity sets the open-loop rate every system
is then offered (:data:`~bench.settings.OPEN_LOOP_FRACTION` of it).
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
        Limit(),
        WorkerDrain("sqlite"),
        WorkerDrain("redis"),
        Embedded(1),
        Embedded(2),
        Embedded(2, torch_threads=1),
        RedisProfile(1),
        RedisProfile(2),
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
    cases: list[Case], sizes: Sizes, models: Path, rate: float | None, progress_stream: Any = None
) -> dict[str, Any]:
    """Run ``cases`` for ``sizes.rounds`` interleaved rounds; the run's whole record."""
    skipped = {c.key: reason for c in cases if (reason := c.unavailable())}
    active = [c for c in cases if c.key not in skipped]
    progress = Progress(sum(1 if c.once else sizes.rounds for c in active), progress_stream)
    rate_source = "--rate" if rate is not None else "celery, round 1"
    if rate is None and not any(c.key == PEER for c in active):
        rate, rate_source = FALLBACK_RATE, "fallback (peer not in this run)"
    record: dict[str, Any] = {"meta": _meta(sizes, models), "cases": {}}
    for case in cases:
        record["cases"][case.key] = {"title": case.title, "kind": case.kind, "skipped": skipped.get(case.key)}
        record["cases"][case.key].update(rounds=[], failures=[])
        if case.key in skipped:
            print(f"skipped {case.key}: {skipped[case.key]}", file=progress.stream, flush=True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="nearline-bench-") as tmp:
        for round_ in range(1, sizes.rounds + 1):
            for case in active:
                if case.once and round_ > 1:
                    continue
                progress.start(f"round {round_}/{sizes.rounds} · {case.title}")
                if rate is None and case.key != PEER:  # the peer failed its first round
                    rate, rate_source = FALLBACK_RATE, "fallback (peer failed)"
                ctx = Context(sizes, models, Path(tmp), progress, round_, rate)
                entry = record["cases"][case.key]
                try:
                    figures = case.run(ctx)
                except Exception as exc:  # one broken system must not lose the others' figures
                    progress.note(f"FAILED: {type(exc).__name__}: {str(exc)[:2000]}")
                    entry["failures"].append({"round": round_, "error": traceback.format_exc()[-4000:]})
                    continue
                entry["rounds"].append({"round": round_, **figures})
                if rate is None and case.key == PEER:
                    rate = figures["rate"]
    record["meta"].update(
        elapsed_s=round(time.time() - started, 1),
        offered_rate=rate,
        offered_rate_source=rate_source,
        loadavg_end=os.getloadavg(),
    )
    return record


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
