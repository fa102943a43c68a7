"""``python -m bench [--quick] [--only NAME,...]``: run the suite, print the table, write JSON + PNG."""

from __future__ import annotations

import argparse
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench.settings import DEFAULT_MODELS, FULL, QUICK, RESULTS_DIR

CASE_NAMES = (
    "celery, limit, worker-sqlite, worker-redis, embedded-1w, embedded-2w, redis-1w, redis-2w, "
    "celery-default, triton-direct, triton-nearline (a prefix selects a family: embedded, redis, "
    "worker, triton)"
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
    try:
        cases = suite.select(suite.all_cases(), [n.strip() for n in args.only.split(",") if n.strip()])
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if args.quick and not args.only:
        cases = [c for c in cases if not c.once]
    if not (args.models / "minilm").exists():
        print(f"bench: no models under {args.models}: run `make models`", file=sys.stderr)
        return 2
    record = suite.run(cases, sizes, args.models.resolve(), args.rate)
    stem = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")
    json_path, png_path = args.out / f"{stem}.json", args.out / f"{stem}.png"
    report.write_json(record, {}, json_path)  # the raw figures are safe whatever happens next
    summary = report.summarize(record)
    report.write_json(record, summary, json_path)
    why_not = plot.write_png(record, summary, png_path)
    meta = record["meta"]
    print(f"\nnearline benchmarks · {meta['started']} · {meta['cpus']} CPUs · {meta['elapsed_s']:.0f} s")
    print(f"offered rate {meta['offered_rate']:g} jobs/s ({meta['offered_rate_source']})\n")
    print(report.table(record, summary))
    print(
        "\nWhere the time goes: identity at 20/s, mean ms per hop (nearline_job_hop_seconds), and idle CPU:"
    )
    print(report.breakdown(summary))
    lines = report.goals(summary)
    if lines:
        print(
            "\nGoals (embedded and Redis ≥ 0.9 x limit; ≥ 3 x Celery with a lower p99; identity p50 ≤ "
            "Celery's, p99 ≤ 1.5 x Celery's):"
        )
        print("\n".join(f"- {line}" for line in lines))
    print(f"\nJSON: {json_path}")
    if why_not:
        print(f"plot: {why_not}")
    else:
        print(f"plot: {png_path}")
        if args.docs_png:
            shutil.copyfile(png_path, args.docs_png)
            print(f"plot copied to {args.docs_png}")
    failed = sum(len(c["failures"]) for c in record["cases"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
