"""``python -m bench [--quick] [--only NAME,...]``: run the suite, print the table, write JSON + PNG."""

from __future__ import annotations

import argparse
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.lock import one_run_at_a_time
from bench.settings import DEFAULT_MODELS, FULL, QUICK, RESULTS_DIR
from bench.workload import MIXES

CASE_NAMES = (
    "celery, celery-onnx, limit, limit-arrival, limit-onnx, worker-sqlite, worker-redis, embedded-1w, "
    "embedded-2w, embedded-2w-onnx, redis-1w, redis-2w, redis-2w-onnx, embedded-2w-1t, celery-default, "
    "triton-direct, triton-nearline (a prefix selects a family: embedded, redis, worker, triton)"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="nearline's benchmarks: the limit, the workers, the embedded and Redis profiles and "
        "the Celery peer, measured interleaved in one run. See docs/benchmarks.md.",
    )
    p.add_argument(
        "--quick", action="store_true", help="one short round of the main systems, no variants (~2 minutes)"
    )
    p.add_argument("--only", default="", help=f"comma-separated cases: {CASE_NAMES}")
    p.add_argument(
        "--mix",
        default=",".join(MIXES),
        help=f"comma-separated request mixes (default: all of {', '.join(MIXES)}; docs/benchmarks.md)",
    )
    p.add_argument("--rounds", type=int, help="override the number of interleaved rounds")
    p.add_argument(
        "--rate",
        type=float,
        help="open-loop offered rate, jobs/s (default: half the peer's measured capacity)",
    )
    p.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="model repository (default: models/)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the JSON and PNG go")
    p.add_argument("--docs-png", type=Path, help="also copy the plot here (e.g. docs/benchmarks.png)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dataclasses import replace

    from bench import plot, report, suite

    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = replace(sizes, rounds=args.rounds)
    mixes = [m.strip() for m in args.mix.split(",") if m.strip()]
    try:
        cases = suite.select(suite.all_cases(), [n.strip() for n in args.only.split(",") if n.strip()])
        if not mixes or (unknown := [m for m in mixes if m not in MIXES]):
            raise ValueError(f"no mix {', '.join(unknown or ['given'])}; mixes: {', '.join(MIXES)}")
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if args.quick and not args.only:
        cases = [c for c in cases if not c.once]
    if not (args.models / "minilm").exists():
        print(f"bench: no models under {args.models}: run `make models`", file=sys.stderr)
        return 2
    with one_run_at_a_time():
        record = suite.run(cases, sizes, args.models.resolve(), args.rate, mixes)
    stem = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")
    json_path = args.out / f"{stem}.json"
    report.write_json(record, {}, json_path)  # the raw figures are safe whatever happens next
    summaries = {mix: report.summarize(suite.view(record, mix)) for mix in mixes}
    report.write_json(record, summaries, json_path)
    meta = record["meta"]
    print(f"\nnearline benchmarks · {meta['started']} · {meta['cpus']} CPUs · {meta['elapsed_s']:.0f} s")
    for n, mix in enumerate(mixes):
        _print_mix(suite.view(record, mix), summaries[mix], first=n == 0)
    print("\nThe ratios that matter (paired by round; docs/benchmarks.md):")
    print(report.ratios(summaries))
    print(f"\nJSON: {json_path}")
    for n, mix in enumerate(mixes):
        png_path = args.out / f"{stem}-{mix}.png"
        why_not = plot.write_png(suite.view(record, mix), summaries[mix], png_path)
        print(f"plot ({mix}): {why_not or png_path}")
        if n == 0 and args.docs_png and not why_not:
            shutil.copyfile(png_path, args.docs_png)
            print(f"plot copied to {args.docs_png}")
    failed = sum(len(c["failures"]) for part in record["mixes"].values() for c in part["cases"].values())
    return 1 if failed else 0


def _print_mix(view: dict[str, Any], summary: dict[str, dict[str, Any]], first: bool) -> None:
    from bench import report

    meta = view["meta"]
    print(f"\n## request mix: {meta['mix']}")
    print(f"offered rate {meta['offered_rate']:g} jobs/s ({meta['offered_rate_source']})\n")
    print(report.table(view, summary))
    if first and any(row.get("overhead") for row in summary.values()):
        print(
            "\nWhere the time goes: identity at 20/s, mean ms per hop (nearline_job_hop_seconds), idle CPU:"
        )
        print(report.breakdown(summary))
    lines = report.goals(summary)
    if lines:
        print(
            f"\nGoals on {meta['mix']} (embedded and Redis ≥ 0.9 x their runtime's sorted limit, "
            "≥ 2 x Celery on the same runtime, ≥ 3 x Celery on torch, p99 ≤ Celery's; "
            "identity p50 ≤ Celery's, p99 ≤ 1.5 x Celery's):"
        )
        print("\n".join(f"- {line}" for line in lines))


if __name__ == "__main__":
    sys.exit(main())
