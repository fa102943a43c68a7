"""The PNG beside a run's JSON: throughput bars, then latency CDFs (matplotlib, Agg backend).

Left: median saturation throughput per system, whiskers from the slowest to the fastest round,
the limit and 0.9 x the limit as vertical lines. Middle: CDF of submit → result latency at the
run's fixed offered rate (open loop). Right: the same for the identity pipeline at 20 jobs/s
(the overhead). matplotlib is imported here only, so the rest of the suite runs without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import GOAL_VS_LIMIT, LIMIT


def write_png(record: dict[str, Any], summary: dict[str, dict[str, Any]], path: Path) -> str | None:
    """Draw the plot to ``path``; returns None, or why no plot was drawn."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed: no plot"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = {k: r for k, r in summary.items() if "throughput" in r}
    if not measured:
        return "nothing measured: no plot"
    fig, axes = plt.subplots(1, 3, figsize=(16, 6), gridspec_kw={"width_ratios": [1.2, 1, 1]})
    _bars(axes[0], measured)
    rate = record["meta"].get("offered_rate")
    _cdfs(axes[1], record, measured, "open_loop", f"topics at {rate:g} jobs/s (open loop)")
    _cdfs(axes[2], record, measured, "overhead", "identity at 20 jobs/s (overhead)")
    handles, labels = axes[1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    meta = record["meta"]
    fig.suptitle(
        f"nearline benchmarks, {meta.get('mix', 'news')} mix, {meta['started']}, {meta['cpus']} CPUs, "
        f"torch {meta['versions']['torch']}, "
        f"{meta['sizes']['rounds']} round(s), interleaved",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return None


def _bars(ax: Any, measured: dict[str, dict[str, Any]]) -> None:
    keys = list(measured)[::-1]
    medians = [measured[k]["throughput"]["median"] for k in keys]
    low = [m - measured[k]["throughput"]["min"] for k, m in zip(keys, medians, strict=True)]
    high = [measured[k]["throughput"]["max"] - m for k, m in zip(keys, medians, strict=True)]
    colors = [_color(k) for k in keys]
    ax.barh(range(len(keys)), medians, xerr=[low, high], color=colors, capsize=3)
    ax.set_yticks(range(len(keys)), [_label(k, measured[k]["title"]) for k in keys], fontsize=8)
    for i, (k, m) in enumerate(zip(keys, medians, strict=True)):
        ax.text(m + measured[k]["throughput"]["max"] - m, i, f" {m:,.0f}", va="center", fontsize=8)
    if LIMIT in measured:
        limit = measured[LIMIT]["throughput"]["median"]
        top = ax.get_xaxis_transform()
        ax.axvline(limit, color="black", linestyle="--", linewidth=1)
        ax.text(limit, 1.01, "limit", transform=top, ha="center", fontsize=8)
        ax.axvline(GOAL_VS_LIMIT * limit, color="grey", linestyle=":", linewidth=1)
        ax.text(GOAL_VS_LIMIT * limit, 1.01, f"{GOAL_VS_LIMIT}x", transform=top, ha="right", fontsize=8)
    ax.set_xlabel("topics jobs/s at saturation (median; whiskers min-max)")
    ax.set_title("throughput", fontsize=10)


def _cdfs(
    ax: Any, record: dict[str, Any], measured: dict[str, dict[str, Any]], phase: str, title: str
) -> None:
    for key in measured:
        case = record["cases"][key]
        if case["kind"] != "e2e":
            continue
        values = sorted(ms for r in case["rounds"] for ms in r.get(phase, {}).get("latencies_ms", []))
        if not values:
            continue
        ys = [(i + 1) / len(values) for i in range(len(values))]
        style = "--" if key in _VARIANTS else "-"
        ax.plot(
            values, ys, label=_label(key, case["title"]), color=_color(key), linewidth=1.4, linestyle=style
        )
    if not ax.lines:
        ax.set_axis_off()
        ax.set_title(f"{title}: no end-to-end system measured", fontsize=10)
        return
    ax.set_xscale("log")
    ax.set_xlabel("submit → result latency, ms (log)")
    ax.set_ylabel("fraction of requests")
    ax.axhline(0.99, color="grey", linewidth=0.6, linestyle=":")
    ax.grid(True, which="both", alpha=0.25)
    ax.set_title(title, fontsize=10)


_COLORS = {
    "celery": "#31a354",
    "celery-default": "#a1d99b",
    "celery-onnx": "#006d2c",
    "limit": "#444444",
    "limit-arrival": "#969696",
    "limit-onnx": "#252525",
    "embedded-2w-onnx": "#4292c6",
    "redis-2w-onnx": "#fb6a4a",
    "worker-sqlite": "#9ecae1",
    "worker-redis": "#fcae91",
    "embedded-1w": "#3182bd",
    "embedded-2w": "#08306b",
    "embedded-2w-1t": "#6baed6",
    "redis-1w": "#de2d26",
    "redis-2w": "#a50f15",
    "triton-direct": "#756bb1",
    "triton-nearline": "#9e9ac8",
}
#: Short names for the plot (the table has the full titles).
_LABELS = {
    "celery": "Celery (1 torch thread/process)",
    "celery-default": "Celery (default torch threads)",
    "celery-onnx": "Celery, ONNX Runtime (1 thread/process)",
    "limit": "limit (in-process, batch 32, sorted)",
    "limit-arrival": "limit, arrival order",
    "limit-onnx": "limit, ONNX Runtime (sorted)",
    "embedded-2w-onnx": "embedded, 2 workers, ONNX Runtime",
    "redis-2w-onnx": "Redis, 2 workers, ONNX Runtime",
    "worker-sqlite": "worker drain, SQLite",
    "worker-redis": "worker drain, Redis",
    "embedded-1w": "embedded, 1 worker",
    "embedded-2w": "embedded, 2 workers",
    "embedded-2w-1t": "embedded, 2 workers x 1 thread",
    "redis-1w": "Redis, 1 worker",
    "redis-2w": "Redis, 2 workers",
    "triton-direct": "Triton direct",
    "triton-nearline": "nearline + Triton",
}
#: Cases drawn dashed: the variants measured for the analysis.
_VARIANTS = {
    "celery-default",
    "embedded-2w-1t",
    "triton-nearline",
    "worker-redis",
    "triton-direct",
    "limit-arrival",
}


def _color(key: str) -> str:
    return _COLORS.get(key, "#636363")


def _label(key: str, title: str) -> str:
    return _LABELS.get(key, title)
