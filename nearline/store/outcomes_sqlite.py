"""The outcomes log in the SQLite file: the ``outcomes`` table (:mod:`nearline.outcomes`).

The ``jobs_outcome`` trigger (``nearline/sqlite_migrations.py``) inserts one row when a job's status
moves from Pending or Running to Completed or Failed, in the transaction that ends it: a batch of
results ended in one transaction writes its outcomes in it too, and no Python runs per job. The
lifecycle trims the table to :data:`~nearline.outcomes.MAX_WINDOW_S` with its retention run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from nearline.outcomes import Ended, Outcome, OutcomeLog
from nearline.sqlite_db import Database

_READ = """
SELECT job_id, deployment, succeeded, (ended - created) * 1000.0, shadow_of
FROM outcomes WHERE endpoint = ? AND ended >= ?
"""
_ENDED = "SELECT id, status, deployment, output FROM jobs WHERE id IN ({marks})"
_TRIM = "DELETE FROM outcomes WHERE endpoint = ? AND ended < ?"
#: Ids per ``IN (...)`` list: far below SQLite's variable limit.
_CHUNK = 500


class SqliteOutcomes(OutcomeLog):
    """Outcomes in the ``outcomes`` table of ``db``'s file."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def read(self, endpoint: str, since: float) -> list[Outcome]:
        rows = self._db.query(_READ, (endpoint, since))
        return [Outcome(job_id, dep, bool(ok), latency, shadow) for job_id, dep, ok, latency, shadow in rows]

    def ended(self, job_ids: Sequence[str]) -> dict[str, Ended]:
        ids = list(dict.fromkeys(job_ids))
        found: dict[str, Ended] = {}
        for start in range(0, len(ids), _CHUNK):
            batch = ids[start : start + _CHUNK]
            marks = ", ".join("?" * len(batch))
            rows = self._db.query(_ENDED.format(marks=marks), batch)
            for job_id, status, deployment, output in rows:
                found[job_id] = Ended(status, deployment, None if output is None else json.loads(output))
        return found

    def trim(self, before: float) -> int:
        # Per endpoint, through the one index: an index on ``ended`` alone would cost every
        # ended job another insert, for a trim that runs once a minute.
        total = 0
        for (endpoint,) in self._db.query("SELECT DISTINCT endpoint FROM outcomes"):
            count, _ = self._db.execute_write(_TRIM, (endpoint, before), durable=False)
            total += count
        return total
