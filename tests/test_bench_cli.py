"""`python -m bench` parses its command line without running anything (the suite itself is
not part of `make test`: benchmarks are never timed tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
