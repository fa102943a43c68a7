"""``nearline submit|status|terminate|pipelines`` as a user runs them: subprocesses against real
``nearline serve`` subprocesses. Errors must be one line on stderr, never a traceback."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IDLE_KEY, REPO_ENV
from serving import Server, free_port

from nearline.client_cli import Progress, pipeline_table

pytestmark = pytest.mark.slow
ENV = REPO_ENV
KEY = IDLE_KEY


@pytest.fixture(scope="module")
def server(memory_server: Server) -> Server:
    """The session's ``memory://`` server with a worker (conftest.py; test_client.py's too)."""
    return memory_server


@pytest.fixture(scope="module")
def idle(memory_idle_server: Server) -> Server:
    """No workers (jobs stay Pending) and the key ``k1`` required: the session's (conftest.py)."""
    return memory_idle_server


def nearline(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **ENV}
    env.pop("NEARLINE_URL", None)
    env.pop("NEARLINE_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "nearline", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


def one_error_line(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nearline: "), proc.stderr
    return lines[0]


@pytest.fixture
def input_file(tmp_path: Path) -> Path:
    path = tmp_path / "input.json"
    path.write_text(json.dumps({"text": "hello", "n": [1, 2]}))
    return path


def test_submit_wait_prints_the_output(server: Server, input_file: Path) -> None:
    proc = nearline("submit", "identity", str(input_file), "--wait", "--url", server.url)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"text": "hello", "n": [1, 2]}
    progress = proc.stderr.strip().splitlines()  # not a terminal: one line per status change
    assert progress and progress[-1].startswith("job ") and ": Completed (" in progress[-1]


def test_submit_from_stdin_then_status(server: Server) -> None:
    proc = nearline(
        "submit", "identity", "-", "--url", server.url, "--idempotency-key", "cli-1", stdin='{"a": 1}'
    )
    assert proc.returncode == 0, proc.stderr
    accepted = json.loads(proc.stdout)
    assert accepted["statusQueryGetUri"].startswith(f"{server.url}/api/jobs/{accepted['id']}")
    status = nearline("status", accepted["id"], "--url", server.url)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["instanceId"] == accepted["id"]


def test_pipelines_table(server: Server) -> None:
    proc = nearline("pipelines", "--url", server.url)
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split() == ["NAME", "REQUIRED", "INPUT", "DESCRIPTION"]
    assert any(r.startswith("digits ") and "pixels (array)" in r for r in rows)
    assert any(r.startswith("topics ") and "text (string)" in r for r in rows)


def test_user_errors_are_one_line(server: Server, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"pixels": [1, 2,')
    assert "bad.json is not valid JSON" in one_error_line(
        nearline("submit", "digits", str(bad), "--url", server.url)
    )
    missing = one_error_line(nearline("submit", "digits", str(tmp_path / "none.json"), "--url", server.url))
    assert "cannot read" in missing and "No such file" in missing
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"pixels": [1, 2, 3]}')
    assert "pixels" in one_error_line(nearline("submit", "digits", str(wrong), "--url", server.url))
    assert "404" in one_error_line(nearline("submit", "nope", str(wrong), "--url", server.url))
    assert "404" in one_error_line(nearline("status", "0" * 32, "--url", server.url))
    assert "absolute" in one_error_line(nearline("pipelines", "--url", "localhost:7071"))


def test_unreachable_server(input_file: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    line = one_error_line(nearline("submit", "identity", str(input_file), "--url", url), code=3)
    assert f"cannot reach {url}/api/score/identity" in line


def test_key_terminate_and_exit_codes(idle: Server, input_file: Path) -> None:
    assert "401" in one_error_line(nearline("pipelines", "--url", idle.url))
    keyed = ("--url", idle.url, "--key", KEY)
    submitted = nearline("submit", "identity", str(input_file), "--idempotency-key", "t-1", *keyed)
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    timed_out = nearline(
        "submit",
        "identity",
        str(input_file),
        "--idempotency-key",
        "t-1",
        "--wait",
        "--timeout",
        "0.5",
        *keyed,
    )
    assert "did not finish within 0.5 s" in timed_out.stderr.splitlines()[-1] and timed_out.returncode == 1
    terminated = nearline("terminate", job_id, "--reason", "changed my mind", *keyed)
    assert terminated.returncode == 0, terminated.stderr
    ended = nearline("submit", "identity", str(input_file), "--idempotency-key", "t-1", "--wait", *keyed)
    assert ended.returncode == 1 and "Traceback" not in ended.stderr
    assert ended.stderr.splitlines()[-1] == f"nearline: job {job_id} was terminated: changed my mind"
    assert "410" in one_error_line(nearline("terminate", job_id, *keyed))


def test_progress_on_a_terminal_is_one_live_line() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    with Progress("j1", stream) as progress:
        progress.update({"runtimeStatus": "Running"})
        progress._stop.wait(3 * Progress.TICK_S)
    text = stream.getvalue()
    assert "\rjob j1: Running" in text.replace("\x1b[K", "") and "\n" not in text
    assert text.endswith("\r\x1b[K")


def test_pipeline_table_without_required_fields() -> None:
    table = pipeline_table([{"name": "identity", "description": "echo", "inputSchema": {"type": "object"}}])
    assert table.splitlines()[1].split() == ["identity", "-", "echo"]
