"""The scoring worker: the loop (``loop.py``), its hooks, metrics and health endpoint, and the
``python -m workers`` command line (``cli.py``). ``workers/`` is only the program's entry point."""

from nearline.worker.loop import Worker, WorkerConfig

__all__ = ["Worker", "WorkerConfig"]
