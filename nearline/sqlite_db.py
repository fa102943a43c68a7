"""The SQLite file shared by the SQLite broker and status store: URL, pragmas, schema, connections.

One database file holds both the queues (``messages``, ``dead_letters``) and the job records
(``jobs``), so ``sqlite:///nearline.db`` names the whole embedded profile's state.

URL form (SQLAlchemy's convention: everything after ``sqlite:///`` is a filesystem path)::

    sqlite:///relative/nearline.db        relative to the working directory
    sqlite:////abs/path/nearline.db       absolute (what f"sqlite:///{path}" gives for /abs/...)
    sqlite:///nearline.db?busy_timeout_ms=10000&synchronous=full&poll_ms=5&wakeups=off

The parent directory is created. Options: ``busy_timeout_ms`` (how long a writer waits for
another process's write lock, default 5000), ``synchronous`` (``normal`` or ``full``, below),
``wakeups`` (``on``, the default: a send wakes the receivers of every process on this machine at
once, :mod:`nearline.wakeups`; ``off``: receivers of other processes find it by polling) and
``poll_ms`` (the longest pause between a waiting receiver's looks at its queue: default 1000
with wake-ups, which polling only backs up, 10 without).

Durability: the journal is in WAL mode, and a transaction is committed once it is in the WAL
file. What survives, per ``synchronous`` (SQLite's own guarantees for WAL mode):

* ``normal`` (the default): no fsync at commit; the WAL is synced before each checkpoint
  (SQLite checkpoints when the WAL passes 1000 pages, ~4 MB, and when the last connection
  closes). Every committed send, settle and job change survives the crash or ``kill -9`` of any
  process, the server's included (the WAL is in the OS page cache). A power loss or kernel crash
  may roll back the transactions committed since the last checkpoint (in practice those not yet
  written back by the kernel, which it does within ~30 s by default); the file stays consistent,
  never corrupted.
* ``full``: the WAL is fsynced at every durable commit: a job accepted (``202``), a computed
  result and a job's end survive a power loss too. Leases, settles and status marks are
  committed without an fsync of their own (``durable=False``, :meth:`Database._sync` says why
  that loses nothing a client was told): about four fsyncs per job at light load
  (docs/benchmarks.md, Durability of the SQLite file).
* ``off`` is refused: it skips the checkpoint's syncs too, and a power loss may then corrupt the
  file (not merely roll it back).
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from nearline.errors import BrokerError, ConfigError
from nearline.sqlite_migrations import MIGRATIONS

_OPTIONS = {"busy_timeout_ms", "synchronous", "poll_ms", "wakeups"}

#: How long a write waits for another process's write lock before failing with BrokerError.
#: Write transactions here last tens of microseconds; seconds of waiting mean a stuck process.
BUSY_TIMEOUT_MS = 5000
#: Longest pause between a waiting receiver's polls when wake-ups do not reach it. Each hop
#: (API → worker, worker → lifecycle) then waits half of this on average when idle. Measured
#: here: 10 ms costs an idle receiver ~1% of a core and gives ~6 ms p50 / ~10 ms p90
#: send→receive across processes.
POLL_MS = 10.0
#: With wake-ups a send wakes its receivers at once; they look at the queue this often anyway
#: (a sender that cannot ring them: another network namespace, ``wakeups=off``). A lease's end
#: needs no poll: a receiver waits until the earliest one.
WAKEUP_POLL_MS = 1000.0


@dataclass(frozen=True)
class SqliteUrl:
    """A parsed ``sqlite:///`` URL."""

    path: Path
    busy_timeout_ms: int = BUSY_TIMEOUT_MS
    synchronous: str = "NORMAL"
    poll_ms: float = WAKEUP_POLL_MS
    wakeups: bool = True


def parse_url(url: str) -> SqliteUrl:
    """Parse ``url`` (see the module docstring); raise :class:`ConfigError` when it is wrong."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ConfigError(f"SQLite URL {url!r} must start with {prefix} (sqlite:////abs/file.db)")
    raw_path, _, query = url[len(prefix) :].partition("?")
    if not raw_path:
        raise ConfigError(f"SQLite URL {url!r} names no file")
    try:
        options = dict(parse_qsl(query, strict_parsing=bool(query)))
    except ValueError as exc:
        raise ConfigError(f"SQLite URL {url!r}: {exc}") from None
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ConfigError(
            f"SQLite URL {url!r}: unknown option(s) {sorted(unknown)}; known: {sorted(_OPTIONS)}"
        )
    synchronous = options.get("synchronous", "normal").upper()
    if synchronous not in ("NORMAL", "FULL"):
        raise ConfigError(f"SQLite URL {url!r}: synchronous must be normal or full")
    wakeups = options.get("wakeups", "on").lower()
    if wakeups not in ("on", "off"):
        raise ConfigError(f"SQLite URL {url!r}: wakeups must be on or off")
    try:
        busy = int(options.get("busy_timeout_ms", BUSY_TIMEOUT_MS))
        poll = float(options.get("poll_ms", WAKEUP_POLL_MS if wakeups == "on" else POLL_MS))
    except ValueError as exc:
        raise ConfigError(f"SQLite URL {url!r}: {exc}") from None
    # "//abs" (four slashes) is the absolute form; collapse the POSIX double-slash root.
    path = Path("/" + raw_path.lstrip("/")) if raw_path.startswith("/") else Path(raw_path)
    return SqliteUrl(path, busy, synchronous, poll, wakeups == "on")


# One lock per database file in this process. Every write takes it, so this process's threads
# queue on a cheap mutex instead of SQLite's busy handler, which sleeps 1-100 ms between tries.
_write_locks: dict[Path, threading.Lock] = {}
_write_locks_guard = threading.Lock()


def _write_lock(path: Path) -> threading.Lock:
    with _write_locks_guard:
        return _write_locks.setdefault(path, threading.Lock())


class _Connection:
    """A thread's connection; closed when the thread ends and its thread-local goes away."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __del__(self) -> None:
        self.conn.close()


@contextmanager
def _reported() -> Iterator[None]:
    # "database is locked" past busy_timeout, disk full, I/O errors: the store is unavailable.
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise BrokerError(f"SQLite: {exc}") from exc


class Database:
    """One SQLite file: a connection per thread, a process-wide write lock, the schema applied.

    Per-thread connections rather than one shared connection: reads (status polls, depth
    checks) then never queue behind a write; measured throughput was the same either way.
    """

    def __init__(self, config: SqliteUrl) -> None:
        self.config = config
        self.path = config.path.resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conns: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._conns_lock = threading.Lock()
        self._closed = False
        self.write_lock = _write_lock(self.path)
        with self.write_lock, _reported():
            self._migrate(self.conn())

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        held: _Connection | None = getattr(self._local, "held", None)
        if held is None:
            with _reported():
                held = self._connect()
            self._local.held = held
        return held.conn

    def _connect(self) -> _Connection:
        with self._conns_lock:
            if self._closed:
                raise sqlite3.ProgrammingError(f"database {self.path} is closed")
            # isolation_level=None: autocommit; transactions are explicit BEGIN IMMEDIATE.
            # check_same_thread=False only so that close() may close every thread's connection.
            held = _Connection(sqlite3.connect(self.path, isolation_level=None, check_same_thread=False))
            self._conns.add(held)
        held.conn.execute(f"PRAGMA busy_timeout = {self.config.busy_timeout_ms}")
        held.conn.execute("PRAGMA journal_mode = WAL")
        held.conn.execute(f"PRAGMA synchronous = {self.config.synchronous}")
        return held

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise ConfigError(f"{self.path} has schema {version}, newer than this nearline's")
            for number in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[number]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextmanager
    def write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction: commits when the block ends, rolls back when it raises.

        ``durable=False`` for what a power loss may roll back without harm (see
        :meth:`_sync`): under ``synchronous=full`` its commit is not fsynced.
        """
        with self.write_lock, _reported(), self._sync(durable) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def execute_write(
        self, sql: str, params: Sequence[object] = (), durable: bool = True
    ) -> tuple[int, list[Any]]:
        """Run one writing statement in its own transaction: ``(rowcount, rows it returned)``.

        The rows are fetched under the lock: a ``RETURNING`` statement holds its transaction
        open until its last row is read. ``durable`` as for :meth:`write`.
        """
        with self.write_lock, _reported(), self._sync(durable) as conn:
            cursor = conn.execute(sql, params)
            rows = cursor.fetchall()
            return cursor.rowcount, rows

    @contextmanager
    def _sync(self, durable: bool) -> Iterator[sqlite3.Connection]:
        """This thread's connection, at ``synchronous=NORMAL`` for a commit that need not be
        durable when the file is at ``full``.

        Leases, settles and status marks need no fsync of their own: the WAL is replayed as a
        prefix of its commits, and the next durable commit's fsync covers every frame before it,
        so a power loss can only roll back a suffix of them, which the at-least-once protocol
        redoes (a lost lease or settle: the message is delivered again; a lost ``Running``:
        the job reads ``Pending`` until it ends).
        """
        conn = self.conn()
        relax = not durable and self.config.synchronous == "FULL"
        if relax:
            conn.execute("PRAGMA synchronous = NORMAL")
        try:
            yield conn
        finally:
            if relax:
                conn.execute("PRAGMA synchronous = FULL")

    def query(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        """Run one read on this thread's connection; every row."""
        with _reported():
            return self.conn().execute(sql, params).fetchall()

    def close(self) -> None:
        """Close every thread's connection; the database is unusable afterwards."""
        with self._conns_lock:
            self._closed = True
            held = list(self._conns)
        for h in held:
            h.conn.close()
