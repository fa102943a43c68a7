"""nearline embedded: ``nearline serve`` on its default SQLite queue with N worker processes,
measured end to end through HTTP (submit → long-poll → result)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import runtimes
from bench.cases import Context
from bench.nearline_http import measure_url
from bench.processes import running, session_cpu_s, start_serve


class Embedded:
    """``nearline serve --workers N`` (SQLite under a temp data dir), fresh every round.

    Args:
        workers: Worker processes.
        torch_threads: ``OMP_NUM_THREADS`` for the server and so its workers; None: torch's
            default (a thread per core in every worker).
        runtime: ``torch`` or ``onnx`` (:mod:`bench.runtimes`); ``nearline serve`` gives each
            worker its share of the cores on either.
    """

    kind = "e2e"

    def __init__(self, workers: int, torch_threads: int | None = None, runtime: str = runtimes.TORCH) -> None:
        self.workers, self.runtime = workers, runtime
        self.env = runtimes.env(runtime)
        if torch_threads:
            self.env["OMP_NUM_THREADS"] = str(torch_threads)
        self.once = torch_threads is not None  # a variant, for the analysis: one round
        self.key = f"embedded-{workers}w" + (f"-{torch_threads}t" if torch_threads else "")
        self.key += "" if runtime == runtimes.TORCH else f"-{runtime}"
        plural = "s" if workers > 1 else ""
        threads = (
            f", {torch_threads} torch thread{'s' if torch_threads > 1 else ''} each" if torch_threads else ""
        )
        on = "" if runtime == runtimes.TORCH else ", ONNX Runtime"
        self.title = f"nearline embedded (SQLite), {workers} worker{plural}{threads}{on}"

    def unavailable(self, models: Path) -> str | None:
        return runtimes.unavailable(self.runtime, models)

    def run(self, ctx: Context) -> dict[str, Any]:
        workdir = ctx.workdir / f"{self.key}-r{ctx.round}"
        ctx.progress.update("starting nearline serve")
        args = ("--workers", str(self.workers), "--pipelines", str(runtimes.pipelines_file(self.runtime)))
        proc, url = start_serve(workdir, ctx.models, *args, name="serve", env=self.env)
        with running(proc):
            return measure_url(url, ctx, lambda: {"system": session_cpu_s([proc.popen.pid])}, self.workers)
