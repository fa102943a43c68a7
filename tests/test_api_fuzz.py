"""Schemathesis against the served OpenAPI document: no generated request gets a 5xx."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from serving import running_server

pytestmark = pytest.mark.slow


def test_no_5xx_on_any_generated_request(tmp_path: Path) -> None:
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert st, "schemathesis is a dev requirement (requirements-dev.txt)"
    with running_server(tmp_path, "--broker", "memory://", "--workers", "1") as server:
        r = subprocess.run(
            [
                st,
                "run",
                f"{server.url}/api/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "25",
                "--generation-deterministic",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        log = server.output()
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "Traceback" not in log, log[-4000:]
