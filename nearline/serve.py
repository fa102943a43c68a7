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

from pathlib import Path

from nearline.addresses import is_loopback
from nearline.brokers import open_broker, scheme_of
from nearline.errors import ConfigError
from nearline.settings import API_KEYS, ServeSettings
from nearline.worker_pool import WorkerPool


def check_exposure(cfg: ServeSettings) -> None:
    """Refuse a non-loopback address without keys unless told ``--insecure``."""
    if cfg.api.api_keys or cfg.insecure or is_loopback(cfg.host):
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
    url = cfg.broker_url
    if scheme_of(url) == "sqlite":
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
    catalog = load_pipelines(cfg.worker.pipelines)
    models = cfg.worker.models
    if not cfg.no_workers and not (models / ".").exists():
        raise ConfigError(f"model repository {models} not found: run `nearline models build --out {models}`")
    server = ApiServer(cfg.host, cfg.port, cfg.api)  # the address is taken now: in use fails at once
    broker, store = open_broker(url), open_store(url)
    jobs = StoreJobs(
        catalog, broker, store, max_queue_depth=cfg.api.max_queue_depth, max_body=cfg.api.max_body
    )
    lifecycle = Lifecycle(broker, store, retention_s=cfg.retention_s)
    workers = WorkerPool(cfg, url)
    try:
        workers.start()  # returns once every worker has loaded every pipeline and model
        lifecycle.start()
        _print_banner(cfg, server.port, url, catalog.names())
        app = create_app(jobs, cfg.api.api_keys, health=workers.health, body_timeout_s=cfg.api.body_timeout_s)
        server.run(app)
    finally:
        server.close()
        workers.stop()
        lifecycle.stop()
        broker.close()
        store.close()
    return 0


def default_pipelines() -> Path:
    """The packaged example pipelines (the default of ``--pipelines``)."""
    from nearline.examples import PIPELINES_FILE

    return PIPELINES_FILE


def _print_banner(cfg: ServeSettings, port: int, url: str, pipelines: list[str]) -> None:
    base = f"http://{'127.0.0.1' if cfg.host in ('0.0.0.0', '::') else cfg.host}:{port}"
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
