"""What a benchmark case is, and what it is given to run one round."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.progress import Progress
from bench.settings import Sizes


@dataclass
class Context:
    """One round of one case on one request mix: the run's sizes, models, scratch dir, progress
    and offered rate.

    ``rate`` is None until the peer's first round on this mix has set it (then every system is
    offered it). ``mix`` names the request mix (:data:`bench.workload.MIXES`). ``overhead``:
    also measure what does not depend on the mix (idle CPU, the identity pipeline's overhead);
    true for the run's first mix only.
    """

    sizes: Sizes
    models: Path
    workdir: Path
    progress: Progress
    round: int
    rate: float | None
    mix: str = "news"
    overhead: bool = True


class Case(Protocol):
    """A system or measurement of the suite.

    Attributes:
        key: Short name for ``--only`` and the JSON (``embedded-1w``).
        title: What the table calls it.
        kind: ``limit`` (in-process), ``drain`` (a worker on a pre-loaded queue) or ``e2e``
            (requests through the front door, measured by :func:`bench.measure.measure`).
        runtime: The models' runtime, ``torch`` or ``onnx`` (:mod:`bench.runtimes`): ratios
            to "the limit" and "Celery on the same runtime" pair cases of one runtime.
        once: Measured in the first round only: a variant that informs the analysis, not
            one of the systems the goals are about (keeps the full run near 10 minutes).
    """

    key: str
    title: str
    kind: str
    once: bool
    runtime: str

    def unavailable(self, models: Path) -> str | None:
        """Why this case cannot run here on ``models`` (it is then reported as skipped), or None."""

    def run(self, ctx: Context) -> dict[str, Any]:
        """Measure one round; the figures for the JSON (``throughput`` in jobs/s at least)."""
