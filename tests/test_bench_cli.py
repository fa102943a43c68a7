"""`python -m bench`: its command line, its request mixes and cases, and a tiny real run of the
limits whose report is checked for its structure (the suite itself is not part of `make test`:
benchmarks are never timed tests, and nothing here asserts a speed)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_help_names_the_options() -> None:
    out = bench("--help")
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout and "--only" in out.stdout


def test_unknown_case_is_refused_before_anything_starts() -> None:
    out = bench("--only", "nosuchcase")
    assert out.returncode == 2
    assert "no case 'nosuchcase'" in out.stderr


def test_the_window_bench_parses_its_command_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.windows", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "--jobs" in out.stdout and "--rounds" in out.stdout


def test_the_gpu_script_is_valid_bash_and_downloads_nothing() -> None:
    script = ROOT / "bench" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, timeout=30).returncode == 0
    text = script.read_text()
    assert not any(word in text for word in ("pip install", "curl ", "wget ", "from_pretrained", "git clone"))


def test_an_unknown_request_mix_is_refused_before_anything_starts() -> None:
    out = bench("--mix", "news,tweets")
    assert out.returncode == 2
    assert "no mix tweets" in out.stderr and "short" in out.stderr


def test_the_short_mix_is_single_sentences_and_the_news_mix_is_as_it_was() -> None:
    from bench import workload

    short = workload.texts(200, mix="short")
    assert all(t in workload.SENTENCES for t in short)
    news = workload.texts(200, mix="news")
    assert news == workload.texts(200)  # the default, the same texts as before the mixes
    assert max(sum(t.count(s) for s in workload.SENTENCES) for t in news) == 4
    assert workload.texts(50, mix="short") == short[:50]  # fixed by the seed


def test_the_sorted_limit_runs_every_job_once_in_batches_of_similar_length() -> None:
    from bench import workload
    from bench.limit import Limit
    from bench.settings import LIMIT_BATCH
    from nearline.constants import BATCH_WINDOW

    inputs = workload.inputs(300)
    batches = Limit().batches(inputs)
    assert sorted(len(i["text"]) for b in batches for i in b) == sorted(len(i["text"]) for i in inputs)
    assert sum(map(len, batches)) == len(inputs) and max(map(len, batches)) <= LIMIT_BATCH
    window = batches[:BATCH_WINDOW]  # the first window: its batches do not overlap in length
    spans = sorted((min(len(i["text"]) for i in b), max(len(i["text"]) for i in b)) for b in window)
    assert all(low[1] <= high[0] for low, high in itertools.pairwise(spans))
    arrival = Limit(sort=False).batches(inputs)
    assert arrival[0] == inputs[:LIMIT_BATCH]


def test_every_case_has_a_runtime_and_the_onnx_systems_are_there() -> None:
    from bench import suite

    cases = suite.all_cases()
    keys = [c.key for c in cases]
    assert len(keys) == len(set(keys))
    for key in ("limit", "limit-arrival", "limit-onnx", "celery-onnx", "embedded-2w-onnx", "redis-2w-onnx"):
        assert key in keys
    assert {c.runtime for c in cases} == {"torch", "onnx"}
    assert [c.key for c in suite.select(cases, ["limit"])] == ["limit"]  # exact name before prefix


def test_the_two_runtimes_run_the_same_steps_and_the_example_endpoints_deployment_v1() -> None:
    from bench import runtimes
    from nearline.pipelines.spec import load_pipelines
    from nearline.serve import default_pipelines

    def shape(runtime: str) -> list[tuple[str, ...]]:
        [deployment] = load_pipelines(runtimes.pipelines_file(runtime)).get("topics").deployments
        return [(s.name, getattr(s, "function", ""), str(getattr(s, "inputs", ""))) for s in deployment.steps]

    assert shape("torch") == shape("onnx")
    onnx = load_pipelines(runtimes.pipelines_file("onnx")).get("topics").deployments[0]
    assert {s.backend for s in onnx.steps if hasattr(s, "backend")} == {"onnx"}
    torch_v1 = load_pipelines(runtimes.pipelines_file("torch")).get("topics").deployments[0]
    example_v1 = load_pipelines(default_pipelines()).get("topics").deployment_named("v1")
    assert torch_v1.steps == example_v1.steps


def test_a_tiny_run_of_the_limits_reports_each_runtime_against_its_own_yardstick(models_dir: Path) -> None:
    """A real run, made tiny: the torch and ONNX limits on both mixes; structure, never speed."""
    import io

    from bench import report, suite
    from bench.limit import Limit
    from bench.settings import Sizes

    sizes = Sizes(1, 32, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0)  # one batch per limit and mix
    cases = [Limit(), Limit(sort=False), Limit(runtime="onnx")]
    record = suite.run(cases, sizes, models_dir, None, ["news", "short"], io.StringIO())
    summaries = {mix: report.summarize(suite.view(record, mix)) for mix in ("news", "short")}
    for summary in summaries.values():
        assert not any(row["skipped"] or row["failed_rounds"] for row in summary.values()), summary
        assert summary["limit"]["vs_limit"] == 1.0 and summary["limit-onnx"]["vs_limit"] == 1.0
        assert summary["limit-arrival"]["vs_limit"] > 0
        assert all(row["cpu_ms_per_job"]["total"] > 0 for row in summary.values())
    table = report.table(suite.view(record, "short"), summaries["short"])
    assert "x Celery same runtime" in table and "sorted by length, ONNX Runtime" in table


def test_a_second_bench_run_cannot_take_the_lock_while_one_holds_it(tmp_path: Path) -> None:
    import fcntl
    import os

    from bench.lock import one_run_at_a_time

    path = tmp_path / "bench.lock"
    with one_run_at_a_time(path), path.open("a+") as other:
        assert path.read_text() == str(os.getpid())  # the holder is named for whoever waits
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with path.open("a+") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the run ends
