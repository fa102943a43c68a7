"""``nearline serve``: the whole system in one process tree.

The HTTP API (:mod:`nearline.api.server`) and the lifecycle run in this process; workers run as
child processes or, for ``memory://``, as threads sharing this process's queue
(:class:`~nearline.worker_pool.WorkerPool`: spawned interpreters, never forks of this threaded
process, restarted when they die).

Nothing is served before every worker has built its pipelines and loaded its models: a
pipelines file naming a model, tensor or function that is not there stops ``nearline serve`` at
start with the worker's message (exit status 2), instead of a worker failing for ever behind a
healthy API. A worker that dies later is restarted with a growing delay, and ``GET /api/health``
says ``degraded`` with the reason meanwhile.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import TYPE_CHECKING

from nearline.addresses import is_loopback
from nearline.brokers import open_broker, scheme_of
from nearline.errors import ConfigError
from nearline.settings import API_KEYS, ServeSettings
from nearline.worker_pool import WorkerPool

if TYPE_CHECKING:
    from nearline.callbacks import CallbackGuard
    from nearline.deliveries import Dispatcher
    from nearline.http.metrics import ApiMetrics
    from nearline.pipelines.spec import Catalog
    from nearline.reload import Reloader
    from nearline.store.base import StatusStore
    from nearline.store_jobs import StoreJobs


def check_exposure(cfg: ServeSettings) -> None:
    """Refuse a non-loopback address without keys unless told ``--insecure``."""
    if cfg.api.api_keys or cfg.api.admin_keys or cfg.insecure or is_loopback(cfg.host):
        return
    raise ConfigError(
        f"refusing to listen on {cfg.host} without API keys: set {API_KEYS.name}=key1,key2 "
        "(clients send x-functions-key), or pass --insecure to serve without auth"
    )


def serve(cfg: ServeSettings) -> int:
    """Run until SIGINT/SIGTERM. Returns the exit code.

    Raises:
        NearlineError: A worker could not start (a :class:`ConfigError` naming the pipelines
            file, pipeline, step and what is missing, when that is why), or the address is in
            use; nothing was served.
    """
    from nearline.api import create_app
    from nearline.api.server import ApiServer
    from nearline.lifecycle import Lifecycle
    from nearline.pipelines.spec import load_pipelines
    from nearline.store import open_store
    from nearline.store_jobs import StoreJobs

    check_exposure(cfg)
    if cfg.reload and scheme_of(cfg.broker_url) == "memory":
        raise ConfigError("--reload starts worker processes again; memory:// runs its workers as threads")
    url = cfg.broker_url
    if scheme_of(url) == "sqlite":
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
    catalog = load_pipelines(cfg.worker.pipelines)
    check_models(cfg)
    server = ApiServer(cfg.host, cfg.port, cfg.api)  # the address is taken now: in use fails at once
    broker, store = open_broker(url), open_store(url)
    guard, deliveries, metrics = callback_parts(cfg, store)
    limits = {"max_queue_depth": cfg.api.max_queue_depth, "max_body": cfg.api.max_body}
    jobs = StoreJobs(catalog, broker, store, callbacks=guard, **limits)
    lifecycle = Lifecycle(
        broker, store, retention_s=cfg.retention_s, deliveries=deliveries, hops=metrics.hops
    )
    workers = WorkerPool(cfg, url)
    reloader = None
    try:
        workers.start()  # returns once every worker has loaded every pipeline and model
        reloader = watch(cfg, jobs, workers)
        lifecycle.start()
        _print_banner(cfg, server.port, url, catalog)
        timeout = cfg.api.body_timeout_s
        app = create_app(
            jobs,
            cfg.api.api_keys,
            admin_keys=cfg.api.admin_keys,
            health=workers.health,
            body_timeout_s=timeout,
            metrics=metrics,
        )
        gc.freeze()  # what is loaded by now stays: full collections skip it (nearline/worker/cli.py)
        server.run(app, on_start=store.waiters.read_on_loop)  # Redis: ends heard on the loop
    finally:
        server.close()
        if reloader is not None:
            reloader.stop()
        workers.stop()
        lifecycle.stop()
        broker.close()
        store.close()
    return 0


def check_models(cfg: ServeSettings) -> None:
    """The model repository must be there when workers are to load it."""
    models = cfg.worker.models
    if not cfg.no_workers and not (models / ".").exists():
        raise ConfigError(
            f"model repository {models} not found: `nearline models build --out {models}` builds the "
            "examples'; a project's own come from its build script or `nearline models import`"
        )


def watch(cfg: ServeSettings, jobs: StoreJobs, workers: WorkerPool) -> Reloader | None:
    """With ``--reload``: watch the pipelines, steps and models, and reload them on a change."""
    if not cfg.reload:
        return None
    from nearline.reload import Reloader

    return Reloader(cfg, jobs, workers).start()


def callback_parts(cfg: ServeSettings, store: StatusStore) -> tuple[CallbackGuard, Dispatcher, ApiMetrics]:
    """Where callbacks may go (checked at submit and when sent), the dispatcher that delivers
    them, and the metrics it counts in (``GET /metrics``'s)."""
    from nearline.callback_sender import CallbackSender
    from nearline.callbacks import CallbackGuard
    from nearline.deliveries import Dispatcher
    from nearline.http.metrics import ApiMetrics

    guard, metrics = CallbackGuard(cfg.api.callback_allow), ApiMetrics()
    return guard, Dispatcher(store, CallbackSender(guard), cfg.webhooks, registry=metrics.registry), metrics


def default_pipelines() -> Path:
    """The packaged example pipelines (the default of ``--pipelines``)."""
    from nearline.examples import PIPELINES_FILE

    return PIPELINES_FILE


def _print_banner(cfg: ServeSettings, port: int, url: str, catalog: Catalog) -> None:
    import json
    import shlex

    from nearline.pipelines.samples import sample_input

    base = f"http://{'127.0.0.1' if cfg.host in ('0.0.0.0', '::') else cfg.host}:{port}"
    key = ' -H "x-functions-key: $KEY"' if cfg.api.api_keys else ""
    workers = "none (--no-workers)" if cfg.no_workers else str(cfg.workers)
    files = ", ".join(map(str, catalog.sources))
    lines = [
        f"nearline serving on {base}  (queue {url}, workers {workers})",
        f"  pipelines: {', '.join(catalog.names())}   [{files}]",
        f"  docs:      {base}/docs   OpenAPI: {base}/api/openapi.json   metrics: {base}/metrics",
    ]
    # The first pipeline whose sample makes a short command line (else the shortest).
    tried = [
        (p.name, json.dumps({"input": sample})) for p in catalog if (sample := sample_input(p)) is not None
    ]
    if tried:
        name, body = next((t for t in tried if len(t[1]) <= 200), min(tried, key=lambda t: len(t[1])))
        json_type = "-H 'Content-Type: application/json'"
        lines += [
            "Try it:",
            f"  curl -s{key} -X POST '{base}/api/score/{name}?wait=10' {json_type} \\",
            f"       -d {shlex.quote(body)}",
        ]
    print("\n".join([*lines, "Press Ctrl+C to stop."]), flush=True)
