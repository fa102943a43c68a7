"""SQLite split store: the ``splits`` and ``split_history`` tables of the embedded profile's file
(``sqlite:///nearline.db``, schema in :mod:`nearline.sqlite_db`).

A change is one transaction (the split, its history entry, the trim to the last
:data:`~nearline.splits.base.HISTORY`), durable as a submit is; every process on the file sees it.
"""

from __future__ import annotations

from nearline.splits.base import HISTORY, Change, SplitStore, dump_split, load_split
from nearline.sqlite_db import Database, parse_url

_TRIM = """
DELETE FROM split_history WHERE endpoint = ? AND id NOT IN (
    SELECT id FROM split_history WHERE endpoint = ? ORDER BY id DESC LIMIT ?
)
"""


class SqliteSplits(SplitStore):
    """Splits in the SQLite file at ``url``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._db = Database(parse_url(url))

    def load(self, endpoint: str) -> Change | None:
        rows = self._db.query("SELECT split, at FROM splits WHERE endpoint = ?", (endpoint,))
        if not rows:
            return None
        (text, at), reasons = (
            rows[0],
            self._db.query(
                "SELECT reason FROM split_history WHERE endpoint = ? ORDER BY id DESC LIMIT 1", (endpoint,)
            ),
        )
        return Change(endpoint, load_split(text), reasons[0][0] if reasons else "", at)

    def save(self, change: Change) -> None:
        text = dump_split(change.split)
        with self._db.write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO splits (endpoint, split, at) VALUES (?, ?, ?)",
                (change.endpoint, text, change.at),
            )
            conn.execute(
                "INSERT INTO split_history (endpoint, split, reason, at) VALUES (?, ?, ?, ?)",
                (change.endpoint, text, change.reason, change.at),
            )
            conn.execute(_TRIM, (change.endpoint, change.endpoint, HISTORY))

    def history(self, endpoint: str) -> list[Change]:
        rows = self._db.query(
            "SELECT split, reason, at FROM split_history WHERE endpoint = ? ORDER BY id DESC LIMIT ?",
            (endpoint, HISTORY),
        )
        return [Change(endpoint, load_split(text), reason, at) for text, reason, at in rows]

    def close(self) -> None:
        self._db.close()
