"""The systems under test as subprocesses: ``nearline serve``, ``python -m workers``, Celery.

Each runs in a session (process group) of its own, logs to a file in the run's temp dir, and
is stopped for sure: :func:`running` stops it in a ``finally``, SIGTERM first (the graceful
path), then SIGKILL to its whole group (a server's worker children, Celery's pool) if it has
not exited in time. Only processes started here are ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from bench.settings import REDIS_HOST, REDIS_PORT, ROOT, START_TIMEOUT_S, STOP_TIMEOUT_S


class StartError(RuntimeError):
    """A process did not come up; the message ends with the tail of its log."""


@dataclass
class Process:
    """A started subprocess and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self, tail: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait, then SIGKILL the process group; never raises."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        # The group may outlive its leader (children that ignore the leader's end): kill them too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


#: Clock ticks per second of /proc/<pid>/stat's utime and stime.
_TICK = os.sysconf("SC_CLK_TCK")


def session_cpu_s(sessions: Iterable[int]) -> float:
    """CPU seconds (user + system) used so far by the live processes of ``sessions``.

    Every process started by :func:`spawn` leads a session of its own, and its children (a
    server's workers, Celery's pool) stay in it, so this counts a whole system under test.
    """
    wanted = set(sessions)
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[3]) in wanted:  # fields after the name: state ppid pgrp session ...
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _TICK


def redis_cpu_s() -> float:
    """CPU seconds the Redis server has used (all its clients, not only ours)."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=5)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(name: str, cmd: Sequence[str], workdir: Path, env: dict[str, str] | None = None) -> Process:
    """Start ``cmd`` in its own session with stdout and stderr to ``workdir/<name>.log``."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{name}.log"
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=workdir,
            start_new_session=True,
        )
    return Process(name, popen, log)


@contextlib.contextmanager
def running(process: Process) -> Iterator[Process]:
    """Stop ``process`` when the block ends, however it ends."""
    try:
        yield process
    finally:
        process.stop()


def wait_until(
    process: Process, ready: Callable[[], bool], what: str, timeout: float = START_TIMEOUT_S
) -> None:
    """Poll ``ready()`` until true; StartError if the process exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise StartError(
                f"{process.name} exited ({process.popen.returncode}) before {what}:\n{process.output()}"
            )
        try:
            if ready():
                return
        except Exception:  # not up yet: connection refused, a half-written log...
            pass
        time.sleep(0.1)
    raise StartError(f"{process.name}: no {what} within {timeout:.0f} s:\n{process.output()}")


def start_serve(
    workdir: Path, models: Path, *args: str, name: str = "serve", env: dict[str, str] | None = None
) -> tuple[Process, str]:
    """``nearline serve`` on a free port; returns the process and its base URL once healthy."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "nearline", "serve",
        "--port", str(port), "--data-dir", str(workdir / "data"), "--models", str(models), *args,
    ]  # fmt: skip
    proc = spawn(name, cmd, workdir, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(proc, lambda: httpx.get(f"{url}/api/health", timeout=1).status_code == 200, "health")
    except BaseException:
        proc.stop()
        raise
    return proc, url


def start_worker(
    workdir: Path, models: Path, broker: str, name: str, *args: str, env: dict[str, str] | None = None
) -> Process:
    """``python -m workers`` on ``broker``; returns once it says it is receiving (models loaded)."""
    cmd = [sys.executable, "-m", "workers", "--broker", broker, "--models", str(models), "--port", "-1",
           "--name", name, *args]  # fmt: skip
    proc = spawn(name, cmd, workdir, env)
    try:
        wait_until(proc, lambda: "receiving from" in proc.output(100_000), "'receiving from' log line")
    except BaseException:
        proc.stop()
        raise
    return proc


def redis_url(db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def flush_redis(db: int) -> None:
    """Empty one of the bench's own Redis databases."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


def redis_reachable() -> str | None:
    """None when the Redis server answers, else why not."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
        return None
    except redis.RedisError as exc:
        return f"Redis on {REDIS_HOST}:{REDIS_PORT} not reachable: {exc}"
    finally:
        client.close()
