"""``python -m workers`` / ``nearline worker``: run one scoring worker process.

Every flag falls back to an environment variable (:class:`~nearline.settings.WorkerSettings`),
so a Kubernetes Deployment configures workers with a ConfigMap alone. :func:`run_worker` is the
worker for a set of settings: this program's ``main`` calls it, and so does every worker process
``nearline serve`` spawns (:func:`run_spawned`, handed the frozen settings, not flags).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import logging
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Mapping, MutableMapping
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from nearline.errors import ConfigError, NearlineError
from nearline.settings import BLOB_STORE, BROKER, WorkerSettings, add_flags, with_flags

if TYPE_CHECKING:
    from nearline.models.backend import OnnxOptions
    from nearline.pipelines.runner import PipelineRunner
    from nearline.store.base import StatusStore
    from nearline.tombstones import Tombstones
    from nearline.worker.loop import WorkerConfig

log = logging.getLogger("nearline.worker")

PROG = "python -m workers"
#: prctl(2) option: the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def build_parser(settings: WorkerSettings, prog: str = PROG) -> argparse.ArgumentParser:
    """The worker's flags, their defaults taken from ``settings``."""
    parser = argparse.ArgumentParser(prog=prog, description="Run a nearline scoring worker.")
    add_flags(parser, settings)
    return parser


def worker_settings(
    argv: list[str] | None = None, environ: Mapping[str, str] | None = None, prog: str = PROG
) -> WorkerSettings:
    """The worker's settings: the environment's, with the flags in ``argv`` over them."""
    settings = WorkerSettings.from_env(environ)
    return with_flags(settings, build_parser(settings, prog).parse_args(argv))


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """``python -m workers [flags]``; returns the exit status."""
    from nearline.cli import fail

    try:
        settings = worker_settings(argv, prog=prog)
        _log_to_stderr()
        return run_worker(settings)
    except (NearlineError, OSError, KeyboardInterrupt) as exc:
        return fail(prog, exc)


def run_spawned(settings: WorkerSettings, parent: int, report: Connection) -> None:
    """A worker process ``nearline serve`` spawned: bound to ``parent``, then :func:`run_worker`.

    ``report`` tells the server how start-up went: ``("ready", None)`` once every pipeline and
    model is loaded, or ``("failed", error)`` (a :class:`~nearline.errors.NearlineError` or
    ``OSError``) before the process exits with the error's status. The server prints or logs
    the error (at start it refuses to serve), so this process does not.
    """
    from nearline.errors import exit_code

    die_with_parent(parent)
    share_cores(settings.torch_threads)
    _log_to_stderr()

    def tell(what: str, error: BaseException | None = None) -> None:
        with contextlib.suppress(OSError):  # the server is gone: SIGTERM is on its way
            try:
                report.send((what, error))
            except (pickle.PicklingError, TypeError, AttributeError):  # an error that does not pickle
                report.send((what, NearlineError(str(error))))

    try:
        status = run_worker(settings, on_ready=lambda: tell("ready"))
    except KeyboardInterrupt:
        status = 130
    except (NearlineError, OSError) as exc:
        tell("failed", exc)
        status = exit_code(exc)
    except Exception as exc:  # a bug: the traceback here, one line for the server's log
        log.exception("worker %s failed", settings.name)
        tell("failed", NearlineError(f"{type(exc).__name__}: {exc}"))
        status = 1
    sys.exit(status)


def die_with_parent(parent: int) -> None:
    """Get SIGTERM when ``parent`` dies, even by SIGKILL (Linux); exit now if it already has.

    The check after ``prctl`` closes the race with a parent that died before it was called.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        log.warning("the server (pid %d) is gone; not starting", parent)
        sys.exit(0)


def share_cores(threads: int | None, environ: MutableMapping[str, str] = os.environ) -> None:
    """Give torch ``threads`` intra-op threads, unless ``OMP_NUM_THREADS`` is set already.

    Runs before torch is imported (torch reads ``OMP_NUM_THREADS`` once, at import); where it
    already is, its thread count is set directly.
    """
    if threads is None or "OMP_NUM_THREADS" in environ:
        return
    environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules and environ is os.environ:
        sys.modules["torch"].set_num_threads(threads)


def worker_config(settings: WorkerSettings) -> WorkerConfig:
    """The worker loop's configuration from ``settings``."""
    from nearline.worker.loop import WorkerConfig

    return WorkerConfig(
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        batch_window=settings.batch_window,
        lease_s=settings.lease_s,
        max_deliveries=settings.max_deliveries,
    )


def open_runner(settings: WorkerSettings) -> PipelineRunner:
    """The pipelines of ``settings`` over its model repository (models not loaded yet)."""
    from nearline.models.repository import ModelRepository
    from nearline.pipelines.runner import PipelineRunner
    from nearline.pipelines.spec import load_pipelines

    return PipelineRunner(
        load_pipelines(settings.pipelines),
        ModelRepository(settings.models),
        backend=settings.model_backend,
        triton_url=settings.triton_url,
        onnx=onnx_options(settings),
    )


def onnx_options(settings: WorkerSettings) -> OnnxOptions:
    """ONNX Runtime's session options from ``settings`` (``NEARLINE_ONNX_*``), for every runner
    built from worker settings (this worker's, ``nearline check``'s).

    Threads: ``NEARLINE_ONNX_THREADS``, else the worker's share of the cores (``torch_threads``,
    which ``nearline serve`` sets: ONNX Runtime reads no ``OMP_NUM_THREADS``), else 0 (ONNX
    Runtime's own default). Here rather than in :mod:`nearline.models.onnx_backend`, which
    imports ONNX Runtime: a worker whose pipelines use no ONNX model must not need it.
    """
    from nearline.models.backend import OnnxOptions

    return OnnxOptions(
        intra_op_threads=settings.onnx_threads or settings.torch_threads or 0,
        providers=settings.onnx_providers,
        optimization=settings.onnx_optimization,
    )


def job_state(settings: WorkerSettings) -> tuple[StatusStore | None, Tombstones | None]:
    """Where this worker learns which jobs have ended: the status store at the broker's URL, or,
    on Service Bus (job state lives in Durable Functions), the tombstones of terminated jobs."""
    from nearline.azure_blobs import open_container
    from nearline.constants import TOMBSTONES_CONTAINER
    from nearline.store import open_store
    from nearline.tombstones import Tombstones

    assert settings.broker is not None
    try:
        return open_store(settings.broker), None
    except ConfigError:
        pass
    if not settings.blob_store:
        log.warning("%s is not set: jobs terminated while queued will still be computed", BLOB_STORE.name)
        return None, None
    return None, Tombstones(open_container(settings.blob_store, TOMBSTONES_CONTAINER))


def run_worker(settings: WorkerSettings, on_ready: Callable[[], None] | None = None) -> int:
    """Run a worker until SIGTERM or SIGINT, then finish the batch in hand; returns 0.

    Every pipeline is built and every model loaded before the worker receives anything (or
    ``/readyz`` says ready); ``on_ready`` is called then.

    Raises:
        ConfigError: No broker, or a pipelines file, model or backend that cannot be used.
    """
    from nearline.brokers import open_broker
    from nearline.worker.health import start_health_server
    from nearline.worker.hooks import default_hooks
    from nearline.worker.loop import Worker

    if not settings.broker:
        raise ConfigError(f"no broker: pass --broker URL or set {BROKER.name}")
    runner = open_runner(settings)
    broker = open_broker(settings.broker)
    store, tombstones = job_state(settings)
    config = worker_config(settings)
    hooks = default_hooks(config.max_deliveries, store, tombstones)
    worker = Worker(broker, runner, store=store, config=config, name=settings.name, hooks=hooks)
    stop = threading.Event()
    health = None
    try:  # from here on, whatever stops the worker (a failing on_ready too) closes what it opened
        if settings.port >= 0:
            health = start_health_server(
                settings.host, settings.port, worker.metrics.registry, worker.ready.is_set
            )
            log.info("health and metrics on http://%s:%d/", settings.host, health.server_address[1])
        runner.warm()
        # What is loaded by now (modules, models, tokenizers) lives as long as the process:
        # frozen, a full collection no longer walks it. Unfrozen, each pass walked all of it:
        # 75 ms with the example models, a stall of whichever batch it fell on (docs/benchmarks.md).
        gc.freeze()
        if on_ready is not None:
            on_ready()
        _stop_on_signals(stop)
        log.info(
            "worker %s receiving from %s (batch %d, wait %g ms)",
            worker.name,
            broker.url,
            config.max_batch,
            config.max_wait_ms,
        )
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


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop``: the worker finishes the batch in hand, then exits."""

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: finishing the batch in hand, then exiting", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _log_to_stderr() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
