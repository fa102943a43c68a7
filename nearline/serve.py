"""``nearline serve``: the whole system in one process tree.

The HTTP API and the lifecycle run in this process; workers run as child processes or, for
``memory://``, as threads sharing this process's queue. A worker process is spawned (a fresh
interpreter, never a fork of this threaded process) to run
:func:`nearline.worker.cli.run_spawned` on its frozen
:class:`~nearline.settings.WorkerSettings`, the same worker ``python -m workers`` (what
Kubernetes runs) is. Worker processes die with the server (PR_SET_PDEATHSIG, set by the worker
first thing), drain on stop (SIGTERM, up to the lease) and are restarted if they crash.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from dataclasses import replace
from multiprocessing.process import BaseProcess
from pathlib import Path

from nearline.addresses import is_loopback
from nearline.brokers import open_broker, scheme_of
from nearline.errors import ConfigError
from nearline.settings import API_KEYS, ServeSettings, WorkerSettings

log = logging.getLogger("nearline.serve")


def check_exposure(cfg: ServeSettings) -> None:
    """Refuse a non-loopback address without keys unless told ``--insecure``."""
    if cfg.api.api_keys or cfg.insecure or is_loopback(cfg.host):
        return
    raise ConfigError(
        f"refusing to listen on {cfg.host} without API keys: set {API_KEYS.name}=key1,key2 "
        "(clients send x-functions-key), or pass --insecure to serve without auth"
    )


def serve(cfg: ServeSettings) -> int:
    """Run until SIGINT/SIGTERM. Returns the exit code."""
    import uvicorn

    from nearline.api import create_app
    from nearline.lifecycle import Lifecycle
    from nearline.pipelines.spec import load_pipelines
    from nearline.store import open_store
    from nearline.store_jobs import StoreJobs

    check_exposure(cfg)
    url = cfg.broker_url
    if scheme_of(url) == "sqlite":
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
    catalog = load_pipelines(cfg.worker.pipelines)
    models = cfg.worker.models
    if not cfg.no_workers and not (models / ".").exists():
        raise ConfigError(f"model repository {models} not found: run `nearline models build --out {models}`")
    broker, store = open_broker(url), open_store(url)
    jobs = StoreJobs(
        catalog, broker, store, max_queue_depth=cfg.api.max_queue_depth, max_body=cfg.api.max_body
    )
    lifecycle = Lifecycle(broker, store, retention_s=cfg.retention_s)
    workers = WorkerPool(cfg, url)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(jobs, cfg.api.api_keys),
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
    """The packaged example pipelines (the default of ``--pipelines``)."""
    from nearline.examples import PIPELINES_FILE

    return PIPELINES_FILE


class WorkerPool:
    """The server's workers: spawned processes, or threads for ``memory://``; restarts crashed ones.

    Args:
        cfg: The server's settings; each worker runs with ``cfg.worker`` (see :meth:`settings_for`).
        url: The queue the workers receive from (the server's own).
    """

    def __init__(self, cfg: ServeSettings, url: str) -> None:
        self.cfg = cfg
        self.url = url
        self.procs: list[BaseProcess] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # spawn: a fork of this process (threads holding locks, SQLite handles) can deadlock.
        self._context = multiprocessing.get_context("spawn")

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

    def settings_for(self, index: int) -> WorkerSettings:
        """Worker process ``index``'s settings: the server's queue, no health port, its share
        of the cores (torch gives each process one intra-op thread per core; N workers on C
        cores would run N x C threads and thrash: measured here, 2 workers on 2 cores, 0.64 x
        the limit and a p99 of 2.3 s, against 0.99 x and 69 ms with one thread each; an
        explicit OMP_NUM_THREADS is left as it is)."""
        return replace(
            self.cfg.worker,
            broker=self.url,
            port=-1,
            name=f"serve-worker-{index}",
            torch_threads=threads_per_worker(self.cfg.workers),
        )

    def _spawn(self, index: int) -> BaseProcess:
        from nearline.worker.cli import run_spawned

        proc = self._context.Process(
            target=run_spawned, args=(self.settings_for(index), os.getpid()), name=f"serve-worker-{index}"
        )
        proc.start()
        return proc

    def _supervise(self) -> None:
        while not self._stop.wait(1.0):
            for i, proc in enumerate(self.procs):
                if not proc.is_alive() and not self._stop.is_set():
                    log.warning("worker %d exited with %s; restarting it", i, proc.exitcode)
                    proc.close()
                    self.procs[i] = self._spawn(i)

    def _start_threads(self) -> None:
        from nearline.store import open_store
        from nearline.worker.cli import open_runner, worker_config
        from nearline.worker.loop import Worker

        settings = replace(self.cfg.worker, broker=self.url)
        runner = open_runner(settings)
        runner.warm()
        for i in range(self.cfg.workers):
            worker = Worker(
                open_broker(self.url),
                runner,
                store=open_store(self.url),
                config=worker_config(settings),
                name=f"serve-thread-{i}",
            )
            t = threading.Thread(target=worker.run, args=(self._stop,), name=f"worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Stop every worker: SIGTERM, then up to the lease to finish the batch in hand."""
        self._stop.set()
        for t in self._threads:  # the supervisor first: no worker is started after this
            t.join(timeout=5)
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + self.cfg.worker.lease_s
        for proc in self.procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """torch threads each of ``workers`` processes gets on ``cores`` cores (at least one)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def _print_banner(cfg: ServeSettings, url: str, pipelines: list[str]) -> None:
    base = f"http://{'127.0.0.1' if cfg.host in ('0.0.0.0', '::') else cfg.host}:{cfg.port}"
    key = ' -H "x-functions-key: $KEY"' if cfg.api.api_keys else ""
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
