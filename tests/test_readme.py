"""The README's examples run against a real server (blocks marked `<!-- readme-test: ... -->`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from serving import Server

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"<!-- readme-test: (\w+) -->\n```\w*\n(.*?)```", re.S)
BLOCKS = BLOCK.findall(README.read_text())


@pytest.fixture(scope="module")
def server(example_server: Server) -> Server:
    """The session's default ``nearline serve``, as ``make run`` starts it (conftest.py)."""
    return example_server


def test_the_readme_starts_with_the_two_commands() -> None:
    head = README.read_text()[:3000]
    assert "make run" in head and "make test" in head


def test_there_are_examples_to_run() -> None:
    assert {kind for kind, _ in BLOCKS} == {"sh", "python"}


@pytest.mark.parametrize(("kind", "code"), BLOCKS, ids=[f"{k}-{i}" for i, (k, _) in enumerate(BLOCKS)])
def test_readme_example(server: Server, kind: str, code: str) -> None:
    code = code.replace("http://127.0.0.1:7071", server.url)
    cmd = ["bash", "-euo", "pipefail", "-c", code] if kind == "sh" else [sys.executable, "-c", code]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    if kind == "sh":
        docs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
        assert docs and all(d.get("runtimeStatus") == "Completed" for d in docs), r.stdout
    else:
        assert "'label'" in r.stdout, r.stdout
