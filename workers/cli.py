"""``python -m workers`` / ``nearline worker``: run one scoring worker process.

Every flag falls back to an environment variable (the names in :mod:`nearline.constants`), so
a Kubernetes Deployment configures workers with a ConfigMap alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from nearline import constants as c
from nearline.errors import ConfigError, NearlineError
from nearline.examples import PIPELINES_FILE

log = logging.getLogger("nearline.worker")


def _env(name: str, default: Any) -> Any:
    return os.environ.get(name, default)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workers", description="Run a nearline scoring worker.")
    p.add_argument("--broker", default=_env(c.ENV_BROKER, None), help=f"broker URL (env {c.ENV_BROKER})")
    p.add_argument("--models", default=_env(c.ENV_MODELS, "models"), help="model repository directory")
    p.add_argument("--pipelines", default=_env(c.ENV_PIPELINES, str(PIPELINES_FILE)), help="pipelines.yaml")
    p.add_argument("--max-batch", type=int, default=int(_env(c.ENV_MAX_BATCH, c.MAX_BATCH)))
    p.add_argument("--max-wait-ms", type=float, default=float(_env(c.ENV_MAX_WAIT_MS, c.MAX_WAIT_MS)))
    p.add_argument("--lease-s", type=float, default=float(_env(c.ENV_LEASE_S, c.LEASE_S)))
    p.add_argument("--max-deliveries", type=int, default=int(_env(c.ENV_MAX_DELIVERIES, c.MAX_DELIVERIES)))
    p.add_argument(
        "--port",
        type=int,
        default=int(_env(c.ENV_WORKER_PORT, c.WORKER_PORT)),
        help="port of /healthz, /readyz, /metrics (0: pick a free one; -1: none)",
    )
    p.add_argument("--host", default="0.0.0.0", help="address of the health/metrics endpoint")
    p.add_argument(
        "--model-backend",
        choices=("torch", "triton"),
        default=_env(c.ENV_MODEL_BACKEND, None),
        help="run every model step on this backend",
    )
    p.add_argument(
        "--triton-url",
        default=_env(c.ENV_TRITON_URL, None),
        help="Triton server, e.g. grpc://127.0.0.1:8001 or http://127.0.0.1:8000",
    )
    p.add_argument("--name", default=None, help="worker name in result messages")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except NearlineError as exc:
        print(f"nearline worker: {exc.message}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from nearline.brokers import open_broker
    from nearline.models.repository import ModelRepository
    from nearline.pipelines.runner import PipelineRunner
    from nearline.pipelines.spec import load_pipelines
    from nearline.store import open_store
    from workers.health import start_health_server
    from workers.worker import Worker, WorkerConfig

    if not args.broker:
        raise ConfigError(f"no broker: pass --broker URL or set {c.ENV_BROKER}")
    catalog = load_pipelines(args.pipelines)
    runner = PipelineRunner(
        catalog, ModelRepository(Path(args.models)), backend=args.model_backend, triton_url=args.triton_url
    )
    broker = open_broker(args.broker)
    try:
        store = open_store(args.broker)
    except ConfigError:
        store = None  # Service Bus: job state lives in Durable Functions
    config = WorkerConfig(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        lease_s=args.lease_s,
        max_deliveries=args.max_deliveries,
    )
    worker = Worker(broker, runner, store=store, config=config, name=args.name)
    stop = threading.Event()
    health = None
    if args.port >= 0:
        health = start_health_server(args.host, args.port, worker.metrics.registry, worker.ready.is_set)
        log.info("health and metrics on http://%s:%d/", args.host, health.server_address[1])
    runner.warm()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: finishing the batch in hand, then exiting", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "worker %s receiving from %s (batch %d, wait %g ms)",
        worker.name,
        broker.url,
        config.max_batch,
        config.max_wait_ms,
    )
    try:
        worker.run(stop)
    finally:
        if health is not None:
            health.shutdown()
            health.server_close()
        broker.close()
        if store is not None:
            store.close()
    log.info("worker %s stopped", worker.name)
    return 0
