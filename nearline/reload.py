"""``nearline serve --reload``: start the workers again when the pipelines, steps or models change.

A thread looks at the files every :data:`POLL_S` seconds (their sizes and modification times; no
dependency, no inotify limits): the pipelines files (and the folders named as pipelines, for
files added), the Python files of each pipelines file's project folder, the step modules named
outside it, and every file of the model repository. A change is acted on once the files have
stopped changing for one look (a model build or an editor's save is several writes):

1. the pipelines files are loaded again; if they do not load, the message is printed and the
   running version goes on serving;
2. the worker processes are stopped (each finishes its batch) and started again
   (:meth:`~nearline.worker_pool.WorkerPool.restart`): fresh interpreters import the changed
   steps and load the changed models. If they cannot start, the reason is printed, health says
   ``degraded`` and the pool keeps trying (with its backoff) until the files are fixed;
3. once they are ready, the API answers with the new pipelines (schemas, ``/api/pipelines``).

For development: a reload stops scoring for as long as the workers take to load.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from nearline.errors import NearlineError
from nearline.pipelines.files import pipeline_files, project_folder
from nearline.pipelines.spec import Catalog, FunctionStep, load_pipelines

if TYPE_CHECKING:
    from nearline.settings import ServeSettings
    from nearline.store_jobs import StoreJobs
    from nearline.worker_pool import WorkerPool

#: How often the files are looked at. Half a second feels immediate after a save, and a stat of a
#: few hundred files costs well under a millisecond.
POLL_S = 0.5
#: Folders never looked into for step modules (environments, caches, version control).
SKIPPED = {"__pycache__", "node_modules", "site-packages", "venv", "env"}
#: The most Python files watched in one project folder (a project is not a home directory).
MAX_FILES = 5000

Snapshot = dict[str, tuple[int, int]]


class Reloader:
    """Watches a server's pipelines, steps and models; reloads them on a change.

    Args:
        cfg: The server's settings (its pipelines and models).
        jobs: The job seam whose ``catalog`` the API answers with.
        workers: The worker pool to restart.
        say: Where messages go (the server's terminal).
    """

    def __init__(
        self, cfg: ServeSettings, jobs: StoreJobs, workers: WorkerPool, say: Callable[[str], None] = print
    ) -> None:
        self.cfg, self.jobs, self.workers, self.say = cfg, jobs, workers, say
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reload", daemon=True)
        self.reloads = 0  # completed reloads (for tests and messages)
        self._before: Snapshot = {}

    def start(self) -> Reloader:
        """Look at the files now (what is there when this returns is the version served), then
        watch them in a thread."""
        self._before = snapshot(self.watched())
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def watched(self) -> list[Path]:
        """The files and folders looked at now."""
        return watched_paths(self.cfg.worker.pipelines, self.jobs.catalog, self.cfg.worker.models)

    def _run(self) -> None:
        before = self._before
        while not self._stop.wait(POLL_S):
            now = snapshot(self.watched())
            if now == before:
                continue
            while not self._stop.wait(POLL_S):  # until one look sees no further change
                settled = snapshot(self.watched())
                if settled == now:
                    break
                now = settled
            if self._stop.is_set():
                return
            self.reload()
            before = snapshot(self.watched())

    def reload(self) -> bool:
        """Load the pipelines again and restart the workers; True when the new version serves."""
        try:
            catalog = load_pipelines(self.cfg.worker.pipelines)
        except NearlineError as exc:
            self.say(f"reload: {exc.message}\nreload: still serving the previous version")
            return False
        self.say("reload: files changed; restarting the workers")
        error = self.workers.restart()
        if error is not None:
            message = getattr(error, "message", None) or str(error)
            self.say(f"reload: the workers cannot start: {message}\nreload: retrying until that is fixed")
            return False
        self.jobs.use_catalog(catalog)
        self.reloads += 1
        self.say(f"reload: serving {', '.join(catalog.names())}")
        return True


def watched_paths(pipelines: Iterable[Path], catalog: Catalog, models: Path) -> list[Path]:
    """What ``--reload`` looks at: pipelines files and folders, step modules, the model repository."""
    given = [Path(p) for p in pipelines]
    paths: list[Path] = [p for p in given if p.is_dir()]
    with contextlib.suppress(NearlineError):  # an emptied folder: the folder itself is watched
        paths += pipeline_files(given)
    folders = {f for f in (project_folder(p.source) for p in catalog) if f is not None}
    for folder in folders:
        paths += _python_files(folder)
    paths += [
        f for f in (_module_file(s) for p in catalog for d in p.deployments for s in d.steps) if f is not None
    ]
    if models.is_dir():
        paths += [f for f in models.rglob("*") if f.is_file() and not _hidden(f.relative_to(models))]
    return paths


def snapshot(paths: Iterable[Path]) -> Snapshot:
    """Each path's modification time and size (a folder's: its entries); a missing path is absent."""
    seen: Snapshot = {}
    for path in paths:
        try:
            stat = path.stat()
            size = len(os.listdir(path)) if path.is_dir() else stat.st_size
        except OSError:
            continue
        seen[str(path)] = (stat.st_mtime_ns, size)
    return seen


def _python_files(folder: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in SKIPPED and not d.startswith(".")]
        found += [Path(root) / f for f in files if f.endswith(".py")]
        if len(found) >= MAX_FILES:
            break
    return found[:MAX_FILES]


def _module_file(step: object) -> Path | None:
    """The source file of a function step's module, unless it is an installed library's."""
    if not isinstance(step, FunctionStep):
        return None
    module = step.function.partition(":")[0]
    if "." in module and module.partition(".")[0] not in sys.modules:
        return None  # finding it would import (run) its package here; its project folder is watched
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec is not None else None
    installed = "site-packages" in (origin or "") or (origin or "").startswith(sys.base_prefix)
    if not origin or not origin.endswith(".py") or installed:
        return None
    return Path(origin)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)
