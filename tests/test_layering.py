"""The shape of the codebase, checked: the layering contracts (import-linter, configured in
pyproject.toml) and the size limits that keep modules and functions readable."""

from __future__ import annotations

import ast
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("nearline", "workers", "orchestrations")
MAX_MODULE_LINES = 400
MAX_MEDIAN_LINES = 150
MAX_FUNCTION_LINES = 60


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_the_core_never_imports_its_adapters() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broken" in done.stdout and " 0 broken" in done.stdout


def test_no_module_is_over_the_limit_and_the_median_stays_small() -> None:
    lines = {p: len(p.read_text().splitlines()) for p in sources()}
    big = {str(p.relative_to(ROOT)): n for p, n in lines.items() if n > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"
    median = statistics.median(lines.values())
    assert median <= MAX_MEDIAN_LINES, f"median module is {median} lines"


def test_no_function_is_over_the_limit() -> None:
    long = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, "functions over the limit:\n" + "\n".join(long)
