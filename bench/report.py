"""A run's summary: the table (stdout), the JSON file and the PNG plot beside it.

Ratios are paired by round (a system's throughput over the limit's, or the peer's, *in the same
round*), and the median of those is reported: on a shared machine a slow spell then moves both
sides of a ratio. Latency percentiles are taken per round, then the median over rounds is
reported (the plot's CDFs pool every round's samples, so they show the bad rounds too).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.stats import latency_summary, median, spread
from nearline.hops import HOPS

LIMIT, PEER = "limit", "celery"
#: The yardstick of each runtime (the sorted limit) and its peer (Celery, one task per request).
LIMITS = {"torch": LIMIT, "onnx": "limit-onnx"}
PEERS = {"torch": PEER, "onnx": "celery-onnx"}
#: The goals of docs/benchmarks.md (issue #15): what embedded and Redis should reach on every
#: request mix: x the sorted limit of their runtime, x Celery on the same runtime (the
#: batching gain), x Celery as people deploy it (torch, one task per request).
GOAL_VS_LIMIT = 0.9
GOAL_VS_RUNTIME_PEER = 2.0
GOAL_VS_PEER = 3.0
#: Submit → result overhead (identity at 20/s, issue #19): p50 at most Celery's, p99 at most
#: this many times Celery's, in the same run.
GOAL_OVERHEAD_P99 = 1.5


def summarize(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per case: throughput spread, paired ratios, pooled latencies, errors."""
    cases = record["cases"]
    out: dict[str, dict[str, Any]] = {}
    for key, case in cases.items():
        rounds = case["rounds"]
        row: dict[str, Any] = {"title": case["title"], "kind": case["kind"], "skipped": case["skipped"]}
        row["failed_rounds"] = len(case["failures"])
        if rounds:
            runtime = case.get("runtime", "torch")
            row["throughput"] = spread([r["throughput"] for r in rounds])
            row["vs_limit"] = _paired(rounds, cases.get(LIMITS.get(runtime, LIMIT)))
            row["vs_runtime_peer"] = _paired(rounds, cases.get(PEERS.get(runtime, PEER)))
            row["vs_peer"] = _paired(rounds, cases.get(PEER))
            row["cpu_ms_per_job"] = _cpu(rounds, case["kind"])
            row.update(_extras(case["kind"], rounds))
        out[key] = row
    return out


def _paired(rounds: list[dict[str, Any]], other: dict[str, Any] | None) -> float | None:
    if not other:
        return None
    theirs = {r["round"]: r["throughput"] for r in other["rounds"]}
    ratios = [r["throughput"] / theirs[r["round"]] for r in rounds if theirs.get(r["round"])]
    return median(ratios) if ratios else None


def _cpu(rounds: list[dict[str, Any]], kind: str) -> dict[str, float]:
    """Median over rounds of CPU ms per job: the system (with Redis where used) and the client."""
    per_round = [(r["saturation"] if kind == "e2e" else r).get("cpu_ms_per_job", {}) for r in rounds]
    parts = {part for used in per_round for part in used}
    out = {part: median([used[part] for used in per_round if part in used]) for part in parts}
    out["total"] = median([sum(v for k, v in used.items() if k != "client") for used in per_round])
    return out


def _extras(kind: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    if kind == "limit":
        identity = [r["identity_throughput"] for r in rounds if "identity_throughput" in r]
        return {
            "identity_throughput": median(identity) if identity else None,
            "step_ms_per_job": rounds[-1].get("step_ms_per_job", {}),
        }
    if kind == "drain":
        return {
            "batch_mean": median([r["batch_mean"] for r in rounds]),
            "busy_fraction": median([r["busy_fraction"] for r in rounds]),
            "step_ms_per_job": rounds[-1]["step_ms_per_job"],
        }
    out: dict[str, Any] = {"rate": rounds[-1]["rate"]}
    for phase in [p for p in ("open_loop", "overhead") if all(p in r for r in rounds)]:
        # Median over rounds of each round's percentile: one round slowed by someone else's
        # test run then moves the figure no more than it moves the throughput's median.
        per_round = [latency_summary([ms / 1000 for ms in r[phase]["latencies_ms"]]) for r in rounds]
        summary = {key: median([s[key] for s in per_round]) for key in per_round[0] if key.endswith("_ms")}
        summary["count"] = sum(s["count"] for s in per_round)
        summary["errors"] = sum(r[phase]["errors"] for r in rounds)
        out[phase] = summary
    out["saturation_errors"] = sum(r["saturation"]["errors"] for r in rounds)
    hops = [r["overhead"]["hops_ms"] for r in rounds if r.get("overhead", {}).get("hops_ms")]
    if hops:
        out["overhead"]["hops_ms"] = {h: median([r[h] for r in hops if h in r]) for h in HOPS if h in hops[0]}
    idle = [r["idle_cpu_percent"] for r in rounds if r.get("idle_cpu_percent")]
    if idle:
        out["idle_cpu_percent"] = {part: median([r[part] for r in idle if part in r]) for part in idle[0]}
    return out


def goals(summary: dict[str, dict[str, Any]]) -> list[str]:
    """One line per nearline system: each goal's figure, the goal, how far off."""
    peer = summary.get(PEER, {})
    peer_p99 = peer.get("open_loop", {}).get("p99_ms")
    peer_overhead = peer.get("overhead", {})
    lines = []
    for key, row in summary.items():
        if not (key.startswith(("embedded", "redis")) and "throughput" in row):
            continue
        parts = []
        if row["vs_limit"] is not None:
            parts.append(_goal(f"{row['vs_limit']:.2f} x limit", row["vs_limit"], GOAL_VS_LIMIT))
        if row["vs_runtime_peer"] is not None and key.endswith("-onnx"):
            figure = f"{row['vs_runtime_peer']:.2f} x Celery on ONNX Runtime"
            parts.append(_goal(figure, row["vs_runtime_peer"], GOAL_VS_RUNTIME_PEER))
        elif row["vs_runtime_peer"] is not None:
            figure = f"{row['vs_runtime_peer']:.2f} x Celery on torch (same runtime)"
            parts.append(_goal(figure, row["vs_runtime_peer"], GOAL_VS_RUNTIME_PEER))
        if row["vs_peer"] is not None:
            parts.append(_goal(f"{row['vs_peer']:.2f} x Celery as deployed", row["vs_peer"], GOAL_VS_PEER))
        p99 = row["open_loop"]["p99_ms"]
        if peer_p99 and not math.isnan(p99):
            verdict = "met" if p99 <= peer_p99 else "NOT met"
            parts.append(f"p99 {p99:.0f} ms vs Celery {peer_p99:.0f} ms (≤: {verdict})")
        if peer_overhead and "overhead" in row:
            parts.append(_overhead_goal(row["overhead"], peer_overhead))
        lines.append(f"{row['title']}: " + "; ".join(parts))
    return lines


def ratios(summaries: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The ratios that matter, every mix: nearline ÷ its runtime's sorted limit, ÷ Celery on the
    same runtime (the batching gain), ÷ Celery as people deploy it (torch, one task per request);
    its p99 at the mix's offered rate against Celery's; CPU ms per job against Celery's."""
    head = (
        "| mix | system | x limit (goal 0.9) | x Celery, same runtime (goal 2) | x Celery, torch (goal 3) "
        "| p99 ms vs Celery's (goal ≤) | CPU ms/job vs Celery's |"
    )
    lines = [head, "|---|---|---|---|---|---|---|"]
    for mix, summary in summaries.items():
        peer = summary.get(PEER, {})
        for key, row in summary.items():
            if not ((key.startswith(("embedded", "redis")) or key == "celery-onnx") and "throughput" in row):
                continue
            p99, peer_p99 = row["open_loop"]["p99_ms"], peer.get("open_loop", {}).get("p99_ms")
            cpu, peer_cpu = row["cpu_ms_per_job"]["total"], peer.get("cpu_ms_per_job", {}).get("total")
            cells = [mix, row["title"], _ratio(row["vs_limit"]), _ratio(row["vs_runtime_peer"])]
            cells.append(_ratio(row["vs_peer"]))
            cells.append(f"{p99:.0f} vs {peer_p99:.0f}" if peer_p99 else f"{p99:.0f}")
            cells.append(f"{cpu:.1f} vs {peer_cpu:.1f}" if peer_cpu else f"{cpu:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _overhead_goal(ours: dict[str, Any], peer: dict[str, Any]) -> str:
    """Identity at 20/s: p50 at most Celery's, p99 at most GOAL_OVERHEAD_P99 x Celery's."""
    p50, p99, peer_p50, peer_p99 = ours["p50_ms"], ours["p99_ms"], peer["p50_ms"], peer["p99_ms"]
    met50 = "met" if p50 <= peer_p50 else "NOT met"
    met99 = "met" if p99 <= GOAL_OVERHEAD_P99 * peer_p99 else "NOT met"
    return (
        f"identity p50 {p50:.1f} vs Celery {peer_p50:.1f} ms (≤: {met50}), "
        f"p99 {p99:.1f} vs {GOAL_OVERHEAD_P99:g} x {peer_p99:.1f} ms (≤: {met99})"
    )


def _goal(figure: str, value: float, goal: float) -> str:
    if value >= goal:
        return f"{figure} (goal ≥ {goal:g}: met)"
    return f"{figure} (goal ≥ {goal:g}: NOT met, {100 * (1 - value / goal):.0f}% short)"


def table(record: dict[str, Any], summary: dict[str, dict[str, Any]]) -> str:
    """The plain-text table printed at the end of a run (also pasted into docs/benchmarks.md)."""
    rate = record["meta"].get("offered_rate")
    at = f" at {rate:g} jobs/s" if rate else ""
    head = (
        "| system | jobs/s at saturation (median [min-max]) | x limit | x Celery same runtime | x Celery "
        f"| CPU ms/job | p50 / p95 / p99 ms{at} | identity p50 / p99 ms at 20/s |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for row in summary.values():
        if row["skipped"] or "throughput" not in row:
            why = f"skipped: {row['skipped']}" if row["skipped"] else "FAILED in every round (see the JSON)"
            lines.append(f"| {row['title']} | {why} | | | | | | |")
            continue
        t = row["throughput"]
        cells = [
            row["title"],
            _throughput_cell(t, record["meta"]["sizes"]["rounds"]) + _failed_note(row),
            _ratio(row["vs_limit"]),
            _ratio(row["vs_runtime_peer"]),
            _ratio(row["vs_peer"]),
            _cpu_cell(row["cpu_ms_per_job"]),
        ]
        if row["kind"] == "e2e":
            o, h = row["open_loop"], row.get("overhead")
            cells.append(f"{o['p50_ms']:.0f} / {o['p95_ms']:.0f} / {o['p99_ms']:.0f}" + _errors(o))
            cells.append(f"{h['p50_ms']:.1f} / {h['p99_ms']:.1f}" + _errors(h) if h else "")
        elif row["kind"] == "limit":
            identity = row["identity_throughput"]
            cells += [f"identity limit {identity:,.0f} jobs/s" if identity else "", ""]
        else:
            busy = 100 * row["busy_fraction"]
            cells += [f"batches of {row['batch_mean']:.1f}; in the pipeline {busy:.0f}% of the time", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def breakdown(summary: dict[str, dict[str, Any]]) -> str:
    """Where the identity run's time goes (mean ms per hop, nearline/hops.py), and idle CPU."""
    head = "| system | " + " | ".join(HOPS) + " | sum of hops | client mean | idle CPU, % of a core |"
    lines = [head, "|---" * (len(HOPS) + 4) + "|"]
    for row in summary.values():
        if row.get("kind") != "e2e" or "overhead" not in row:
            continue
        hops = row["overhead"].get("hops_ms", {})
        cells = [f"{hops[h]:.2f}" if h in hops else "" for h in HOPS]
        total = f"{sum(hops.values()):.2f}" if hops else ""
        idle = row.get("idle_cpu_percent", {})
        idle_cell = "; ".join(f"{part} {pct:.2f}" for part, pct in idle.items())
        lines.append(
            f"| {row['title']} | "
            + " | ".join(cells)
            + f" | {total} | {row['overhead']['mean_ms']:.2f} | {idle_cell} |"
        )
    return "\n".join(lines)


def _throughput_cell(t: dict[str, Any], rounds: int) -> str:
    if len(t["runs"]) == 1:
        return f"{t['median']:,.1f}" + (" (1 round)" if rounds > 1 else "")
    return f"{t['median']:,.1f} [{t['min']:,.1f}-{t['max']:,.1f}]"


def _cpu_cell(cpu: dict[str, float]) -> str:
    cell = f"{cpu['total']:.1f}"
    if "redis" in cpu:
        cell += f" (Redis {cpu['redis']:.1f})"
    if "client" in cpu:
        cell += f"; client {cpu['client']:.1f}"
    return cell


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _errors(phase: dict[str, Any]) -> str:
    return f" ({phase['errors']} errors)" if phase["errors"] else ""


def _failed_note(row: dict[str, Any]) -> str:
    return f" ({row['failed_rounds']} rounds failed)" if row["failed_rounds"] else ""


def write_json(record: dict[str, Any], summary: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _finite({**record, "summary": summary})
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    """JSON-able copy: NaN (a percentile of nothing) becomes null, tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
