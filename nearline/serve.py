"""``nearline serve``: the whole system in one process tree.

The HTTP API and the lifecycle run in this process; workers run as child processes
(``python -m workers``, the same program Kubernetes runs) or, for ``memory://``, as threads
sharing this process's queue. Child workers die with the server (PR_SET_PDEATHSIG) and are
restarted if they crash.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from nearline import constants as c
from nearline.brokers import open_broker, scheme_of
from nearline.errors import ConfigError

log = logging.getLogger("nearline.serve")


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``nearline serve`` can be told; see ``nearline serve --help``."""

    host: str = c.HTTP_HOST
    port: int = c.HTTP_PORT
    broker: str | None = None
    workers: int = 1
    no_workers: bool = False
    data_dir: Path = Path(".nearline")
    models: Path = Path("models")
    pipelines: Path | None = None
    insecure: bool = False
    api_keys: tuple[str, ...] = ()
    max_queue_depth: int = c.MAX_QUEUE_DEPTH
    retention_s: float = c.RETENTION_S
    max_body: int = c.MAX_BODY_BYTES
    lease_s: float = c.LEASE_S
    max_batch: int = c.MAX_BATCH
    max_wait_ms: float = c.MAX_WAIT_MS
    worker_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def broker_url(self) -> str:
        return self.broker or f"sqlite:///{(self.data_dir / 'nearline.db').resolve()}"


def check_exposure(cfg: ServeConfig) -> None:
    """Refuse a non-loopback address without keys unless told ``--insecure``."""
    if cfg.api_keys or cfg.insecure or _is_loopback(cfg.host):
        return
    raise ConfigError(
        f"refusing to listen on {cfg.host} without API keys: set {c.ENV_API_KEYS}=key1,key2 "
        "(clients send x-functions-key), or pass --insecure to serve without auth"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(cfg: ServeConfig) -> int:
    """Run until SIGINT/SIGTERM. Returns the exit code."""
    import uvicorn

    from nearline.api import ApiConfig, create_app
    from nearline.pipelines.spec import load_pipelines
    from nearline.service import JobService
    from nearline.store import open_store
    from orchestrations.local import Lifecycle

    check_exposure(cfg)
    url = cfg.broker_url
    if scheme_of(url) == "sqlite":
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
    catalog = load_pipelines(cfg.pipelines or default_pipelines())
    if not cfg.no_workers and not (cfg.models / ".").exists():
        raise ConfigError(
            f"model repository {cfg.models} not found: run `nearline models build --out {cfg.models}`"
        )
    broker, store = open_broker(url), open_store(url)
    service = JobService(catalog, broker, store, max_queue_depth=cfg.max_queue_depth, max_body=cfg.max_body)
    lifecycle = Lifecycle(broker, store, retention_s=cfg.retention_s)
    workers = WorkerPool(cfg, url)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service, ApiConfig(cfg.api_keys, cfg.max_body)),
            host=cfg.host,
            port=cfg.port,
            log_level="warning",
            access_log=False,
        )
    )
    lifecycle.start()
    try:
        workers.start()
        _print_banner(cfg, url, catalog.names())
        server.run()
    finally:
        workers.stop()
        lifecycle.stop()
        broker.close()
        store.close()
    return 0


def default_pipelines() -> Path:
    from nearline.examples import PIPELINES_FILE

    return PIPELINES_FILE


class WorkerPool:
    """The server's workers: child processes, or threads for ``memory://``; restarts crashed ones."""

    def __init__(self, cfg: ServeConfig, url: str) -> None:
        self.cfg = cfg
        self.url = url
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self.cfg.no_workers or self.cfg.workers <= 0:
            return
        if scheme_of(self.url) == "memory":
            self._start_threads()
            return
        self.procs = [self._spawn(i) for i in range(self.cfg.workers)]
        supervisor = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)
        supervisor.start()
        self._threads.append(supervisor)

    def _command(self, index: int) -> list[str]:
        cfg = self.cfg
        return [
            sys.executable,
            "-m",
            "workers",
            "--broker",
            self.url,
            "--models",
            str(cfg.models),
            "--pipelines",
            str(cfg.pipelines or default_pipelines()),
            "--port",
            "-1",
            "--lease-s",
            str(cfg.lease_s),
            "--max-batch",
            str(cfg.max_batch),
            "--max-wait-ms",
            str(cfg.max_wait_ms),
            "--name",
            f"serve-worker-{index}",
            *cfg.worker_args,
        ]

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self._command(index), env=self._env(), preexec_fn=_die_with_parent)

    def _env(self) -> dict[str, str]:
        """The workers' environment: the cores shared out between them.

        torch gives each process one intra-op thread per core; N workers on C cores would run
        N x C threads and thrash (measured here, 2 workers on 2 cores: 0.64 x the limit and a
        p99 of 2.3 s, against 0.99 x and 69 ms with one thread each). An explicit
        OMP_NUM_THREADS is left as it is.
        """
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(threads_per_worker(self.cfg.workers)))
        return env

    def _supervise(self) -> None:
        while not self._stop.wait(1.0):
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None and not self._stop.is_set():
                    log.warning("worker %d exited with %s; restarting it", i, proc.returncode)
                    self.procs[i] = self._spawn(i)

    def _start_threads(self) -> None:
        from nearline.models.repository import ModelRepository
        from nearline.pipelines.runner import PipelineRunner
        from nearline.pipelines.spec import load_pipelines
        from nearline.store import open_store
        from workers.worker import Worker, WorkerConfig

        cfg = self.cfg
        runner = PipelineRunner(
            load_pipelines(cfg.pipelines or default_pipelines()), ModelRepository(cfg.models)
        )
        runner.warm()
        wcfg = WorkerConfig(max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms, lease_s=cfg.lease_s)
        for i in range(cfg.workers):
            worker = Worker(
                open_broker(self.url),
                runner,
                store=open_store(self.url),
                config=wcfg,
                name=f"serve-thread-{i}",
            )
            t = threading.Thread(target=worker.run, args=(self._stop,), name=f"worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=c.LEASE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
        for t in self._threads:
            t.join(timeout=5)


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """torch threads each of ``workers`` processes gets on ``cores`` cores (at least one)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the server dies, even by SIGKILL (Linux only)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _print_banner(cfg: ServeConfig, url: str, pipelines: list[str]) -> None:
    base = f"http://{'127.0.0.1' if cfg.host in ('0.0.0.0', '::') else cfg.host}:{cfg.port}"
    key = ' -H "x-functions-key: $KEY"' if cfg.api_keys else ""
    workers = "none (--no-workers)" if cfg.no_workers else str(cfg.workers)
    print(
        f"nearline serving on {base}  (queue {url}, workers {workers})\n"
        f"  pipelines: {', '.join(pipelines)}   [{base}/api/pipelines]\n"
        f"  OpenAPI:   {base}/api/openapi.json   metrics: {base}/metrics\n"
        f"Try it:\n"
        f"  curl -s{key} -X POST '{base}/api/score/topics?wait=10' -H 'Content-Type: application/json' \\\n"
        f'       -d \'{{"input": {{"text": "The striker scored twice in the final."}}}}\'\n'
        f"Press Ctrl+C to stop.",
        flush=True,
    )
