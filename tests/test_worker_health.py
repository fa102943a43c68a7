"""The worker's health endpoint (`nearline.worker.health`) has no key, so it listens on loopback
unless told otherwise (the Kubernetes manifests tell it; test_k8s_workloads.py checks that)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from serving import free_port
from waiting import wait_until

from nearline import constants as c
from nearline.settings import WorkerSettings
from nearline.worker import cli as worker_cli

TESTS = Path(__file__).resolve().parent
PIPELINES = TESTS / "data" / "worker_pipelines.yaml"


def test_the_health_address_is_loopback_unless_the_variable_or_flag_says_otherwise() -> None:
    assert WorkerSettings.from_env({}).host == c.WORKER_HOST == "127.0.0.1"
    env = {"NEARLINE_WORKER_HOST": "0.0.0.0"}
    assert WorkerSettings.from_env(env).host == "0.0.0.0"
    assert worker_cli.worker_settings(["--host", "::1"], env).host == "::1"


def listening(port: int) -> set[str]:
    """The local addresses of TCP sockets listening on ``port`` (Linux ``/proc/net/tcp``)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_a_worker_started_without_a_host_listens_on_loopback_only(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("NEARLINE_WORKER_HOST", None)
    cmd = [sys.executable, "-m", "workers", "--broker", f"sqlite:///{tmp_path / 'q.db'}"]
    cmd += ["--models", str(tmp_path), "--pipelines", str(PIPELINES), "--port", str(port)]
    with (tmp_path / "worker.log").open("ab") as log:
        worker = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 60, lambda: (tmp_path / "worker.log").read_text())
        assert listening(port) == {"127.0.0.1"}
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
