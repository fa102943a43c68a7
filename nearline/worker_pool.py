"""The workers of ``nearline serve``: started, checked before serving, supervised.

A worker process is spawned (multiprocessing's ``spawn``: a fresh interpreter, started by
``fork_exec`` with no Python run between fork and exec, never a fork of this threaded process,
whose locks and SQLite handles a forked child could deadlock on) to run
:func:`nearline.worker.cli.run_spawned` on its frozen :class:`~nearline.settings.WorkerSettings`,
the same worker ``python -m workers`` (what Kubernetes runs) is. Worker processes die with the
server (PR_SET_PDEATHSIG, set by the worker first thing) and drain on stop (SIGTERM, up to the
lease).

Each process reports on a pipe of its own: ready once its pipelines and models are loaded, or
the error it is about to exit with. :meth:`WorkerPool.start` waits for every report, so a
pipelines file that cannot be served stops the server before it serves. A process that dies
later is started again after a growing delay (:class:`Restarts`); :meth:`WorkerPool.health`
says why while it is not running normally.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import threading
import time
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from nearline.brokers import open_broker, scheme_of
from nearline.errors import NearlineError
from nearline.restarts import Restarts, describe_exit
from nearline.settings import ServeSettings, WorkerSettings

log = logging.getLogger("nearline.serve")

#: How often the supervisor looks at its workers.
SUPERVISE_INTERVAL_S = 0.2


class WorkerPool:
    """The server's workers: spawned processes, or threads for ``memory://``.

    Args:
        cfg: The server's settings; each worker runs with ``cfg.worker`` (see :meth:`settings_for`).
        url: The queue the workers receive from (the server's own).
    """

    def __init__(self, cfg: ServeSettings, url: str) -> None:
        self.cfg = cfg
        self.url = url
        self.procs: list[BaseProcess] = []
        self._reports: list[Connection] = []
        self._restarts: list[Restarts] = []
        self._errors: list[BaseException | None] = []  # each process's reported error, if any
        self._lock = threading.Lock()  # the supervisor's state, which health() reads
        self._stop = threading.Event()
        self._restarting = False  # restart() is replacing the workers
        self._threads: list[threading.Thread] = []
        self._context = multiprocessing.get_context("spawn")

    def start(self) -> None:
        """Start the workers; wait until each has loaded every pipeline and model.

        Raises:
            NearlineError: A worker failed to start: its own error (a ConfigError naming the
                pipelines file, pipeline and step for a pipeline it cannot build). Every
                worker is stopped.
        """
        if self.cfg.no_workers or self.cfg.workers <= 0:
            return
        if scheme_of(self.url) == "memory":
            self._start_threads()  # in this process: a broken pipeline raises here
            return
        count = self.cfg.workers
        self._restarts = [Restarts(i) for i in range(count)]
        self._errors = [None] * count
        try:
            for i in range(count):
                self._spawn(i)
            for i in range(count):
                self._wait_ready(i)
        except BaseException:
            self.stop()
            raise
        supervisor = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)
        supervisor.start()
        self._threads.append(supervisor)

    def health(self) -> dict[str, str]:
        """``{"status": "degraded", "reason": ...}`` while a worker is not running normally, else ``{}``."""
        with self._lock:
            problems = [p for r in self._restarts if (p := r.problem()) is not None]
        return {"status": "degraded", "reason": "; ".join(problems)} if problems else {}

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

    def stop(self) -> None:
        """Stop every worker: SIGTERM, then up to the lease to finish the batch in hand."""
        self._stop.set()
        for t in self._threads:  # the supervisor first: no worker is started after this
            t.join(timeout=5)
        self._drain()
        for reader in self._reports:
            reader.close()

    def _drain(self) -> None:
        """SIGTERM every running worker process, then give them up to the lease to finish."""
        running = [p for p in self.procs if _alive(p)]
        for proc in running:
            proc.terminate()
        deadline = time.monotonic() + self.cfg.worker.lease_s
        for proc in running:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()

    def restart(self) -> BaseException | None:
        """Stop every worker process and start it again (``nearline serve --reload``): each
        finishes its batch, and the new ones load the pipelines, steps and models afresh.

        Returns:
            None once every worker is ready again; else the first start error (the supervisor
            goes on starting that worker with its backoff, and :meth:`health` says why).
        """
        with self._lock:  # the supervisor leaves the workers alone meanwhile; health() still answers
            self._restarting = True
        try:
            self._drain()
            first: BaseException | None = None
            for i in range(len(self.procs)):
                self._reports[i].close()
                self._spawn(i)
            for i in range(len(self.procs)):
                try:
                    self._wait_ready(i)
                except (NearlineError, OSError) as exc:
                    first = first or exc
            return first
        finally:
            with self._lock:
                self._restarting = False

    # -- processes ------------------------------------------------------------------------

    def _spawn(self, index: int) -> None:
        from nearline.worker.cli import run_spawned

        reader, writer = self._context.Pipe(duplex=False)
        proc = self._context.Process(
            target=run_spawned,
            args=(self.settings_for(index), os.getpid(), writer),
            name=f"serve-worker-{index}",
        )
        proc.start()
        writer.close()  # the child holds it now: this end sees EOF once the child is gone
        if index < len(self.procs):
            self.procs[index], self._reports[index] = proc, reader
        else:
            self.procs.append(proc)
            self._reports.append(reader)
        self._errors[index] = None
        self._restarts[index].started()

    def _wait_ready(self, index: int) -> None:
        proc = self.procs[index]
        while not self._read_reports(index, timeout=0.2):
            if self._reports[index].closed:  # it exited without saying it was ready
                proc.join()
                error = self._errors[index]
                raise error or NearlineError(f"worker {index} {describe_exit(proc.exitcode)} at start")

    def _read_reports(self, index: int, timeout: float = 0.0) -> bool:
        """Read what process ``index`` has reported (waiting up to ``timeout`` s for the first
        report); True if it said it is ready. An error it reports is kept in ``_errors``."""
        reader, ready = self._reports[index], False
        while not reader.closed and reader.poll(timeout):
            timeout = 0.0
            try:
                what, error = reader.recv()
            except (EOFError, OSError, pickle.UnpicklingError):
                reader.close()  # EOF: the process is gone
                break
            if what == "ready":
                self._restarts[index].ready()
                ready = True
            elif isinstance(error, BaseException):
                self._errors[index] = error
        return ready

    def _supervise(self) -> None:
        while not self._stop.wait(SUPERVISE_INTERVAL_S):
            for i in range(len(self.procs)):
                with self._lock:
                    if not self._stop.is_set() and not self._restarting:
                        self._check(i)

    def _check(self, index: int) -> None:
        """Start worker ``index`` again when it is due; else note that it is ready or exited."""
        restarts, proc = self._restarts[index], self.procs[index]
        if restarts.down:
            if restarts.due():
                try:
                    self._spawn(index)
                except OSError as exc:  # out of processes or descriptors: try again later
                    restarts.exited(None, f"cannot start it: {exc}")
            return
        self._read_reports(index)
        if proc.is_alive():
            return
        proc.join()
        error = self._errors[index]
        message = "" if error is None else getattr(error, "message", None) or str(error)
        delay = restarts.exited(proc.exitcode, message)
        log.warning(
            "worker %d %s%s; starting it again in %g s",
            index,
            describe_exit(proc.exitcode),
            f": {message}" if message else "",
            delay,
        )
        proc.close()
        self._reports[index].close()

    # -- threads (memory://) --------------------------------------------------------------

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


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """torch threads each of ``workers`` processes gets on ``cores`` cores (at least one)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def _alive(proc: BaseProcess) -> bool:
    try:
        return proc.is_alive()
    except ValueError:  # closed: it exited and the supervisor noted it
        return False
