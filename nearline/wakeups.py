"""Wake-ups for the receivers of a SQLite file's queues: "something was sent", across processes.

SQLite cannot tell another process that a commit happened, so a receiver waiting on an empty
queue would have to poll it. Instead, every thread that waits on a queue has a *bell*: on Linux
a datagram socket of its own in the abstract namespace (no file; it goes away with its process),
announced by an empty marker file ``<queue tag>.<network namespace>.<token>`` in the directory
``<database file>-wake/``. After a commit that makes messages ready (a send, an abandon), the
sender rings every bell of that queue it finds there: one datagram each, never blocking. A
receiver sleeps on its socket and, once woken, looks at the queue.

The queue stays the only source of truth: a ring carries nothing, so a lost, late or spurious
one costs at most one look at the queue, and a receiver still looks every so often without one
(see :mod:`nearline.brokers.sqlite`). Markers of receivers that died are removed by the next
sender that finds their socket gone; markers of another network namespace (a container sharing
the file) are left to senders of that namespace, which alone can reach them.

Elsewhere than Linux (no abstract sockets), or when the directory cannot be written, bells ring
only within the process (:class:`LocalDoorbells`), and receivers of other processes poll.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import socket
import sys
import threading
import uuid
import weakref
from pathlib import Path
from typing import Protocol

log = logging.getLogger("nearline.wakeups")

#: Abstract socket names start with this (after the leading NUL byte).
ADDRESS_PREFIX = b"nearline-wake-"


class Bell(Protocol):
    """One waiting thread's bell for one queue."""

    #: Whether senders in other processes can ring it (else its receiver must poll).
    cross_process: bool

    def arm(self) -> None:
        """Forget earlier rings: a ring from now on ends the next :meth:`wait` at once."""

    def wait(self, timeout: float) -> bool:
        """Sleep until rung or ``timeout`` seconds pass; True when rung since :meth:`arm`."""


class Doorbells(Protocol):
    """The bells of one database file's queues, as seen from this process."""

    def bell(self, queue: str) -> Bell:
        """The calling thread's bell for ``queue`` (made on first use)."""

    def ring(self, queue: str) -> None:
        """Wake every receiver waiting on ``queue``. Call after the commit, never before."""

    def close(self) -> None:
        """Close this process's bells of the file."""


class _Generation:
    """A counter and a condition: what :class:`LocalDoorbells` rings."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.count = 0


class _LocalBell:
    cross_process = False

    def __init__(self, gen: _Generation) -> None:
        self._gen = gen
        self._seen = gen.count

    def arm(self) -> None:
        self._seen = self._gen.count

    def wait(self, timeout: float) -> bool:
        with self._gen.cond:
            if self._gen.count == self._seen:
                self._gen.cond.wait(timeout)
            return self._gen.count != self._seen


class LocalDoorbells:
    """Bells that ring within this process only (a condition variable per queue)."""

    def __init__(self) -> None:
        self._gens: dict[str, _Generation] = {}
        self._lock = threading.Lock()

    def _gen(self, queue: str) -> _Generation:
        with self._lock:
            return self._gens.setdefault(queue, _Generation())

    def bell(self, queue: str) -> Bell:
        return _LocalBell(self._gen(queue))

    def ring(self, queue: str) -> None:
        gen = self._gen(queue)
        with gen.cond:
            gen.count += 1
            gen.cond.notify_all()

    def close(self) -> None:
        pass


class _SocketBell:
    """A bound datagram socket and its marker; closed when its thread ends or on close()."""

    cross_process = True

    def __init__(self, directory: Path, prefix: str) -> None:
        token = uuid.uuid4().hex
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.bind(b"\0" + ADDRESS_PREFIX + token.encode())
            self.sock.setblocking(False)
            # Announced only once bound: a sender that finds the marker but no socket takes the
            # marker for a dead receiver's and removes it.
            self.marker = directory / f"{prefix}{token}"
            self.marker.touch(exist_ok=False)
        except BaseException:
            self.sock.close()
            raise

    def arm(self) -> None:
        self._drain()

    def wait(self, timeout: float) -> bool:
        # poll, not select: a server with a thousand connections has descriptors past select's
        # limit (1024).
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(max(timeout, 0.0) * 1000)) and self._drain()

    def _drain(self) -> bool:
        rung = False
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(64)
                rung = True
        return rung

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.marker.unlink()
        self.sock.close()

    def __del__(self) -> None:
        self.close()


class SocketDoorbells:
    """Bells as abstract Unix datagram sockets announced in ``<database>-wake/`` (Linux).

    Raises:
        OSError: The directory cannot be made (the caller falls back to :class:`LocalDoorbells`).
    """

    def __init__(self, database: Path) -> None:
        self.directory = database.with_name(database.name + "-wake")
        self.directory.mkdir(exist_ok=True)
        self._netns = _network_namespace()
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._local = threading.local()
        self._bells: weakref.WeakSet[_SocketBell] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._fallback = LocalDoorbells()  # for a thread whose socket could not be made

    def _prefix(self, queue: str) -> str:
        return f"{_tag(queue)}.{self._netns}."

    def bell(self, queue: str) -> Bell:
        bells: dict[str, _SocketBell] | None = getattr(self._local, "bells", None)
        if bells is None:
            bells = self._local.bells = {}
        bell = bells.get(queue)
        if bell is None:
            try:
                self.directory.mkdir(exist_ok=True)  # removed by hand since: made again
                bell = bells[queue] = _SocketBell(self.directory, self._prefix(queue))
            except OSError as exc:
                log.warning("no wake-ups across processes for queue %s (it will be polled): %s", queue, exc)
                return self._fallback.bell(queue)
            with self._lock:
                self._bells.add(bell)
        return bell

    def ring(self, queue: str) -> None:
        self._fallback.ring(queue)
        prefix = self._prefix(queue)
        try:
            entries = list(os.scandir(self.directory))
        except OSError:  # gone (removed by hand): nobody to wake
            return
        for entry in entries:
            if entry.name.startswith(prefix):
                self._ring_one(entry.name[len(prefix) :], entry.path)

    def _ring_one(self, token: str, marker: str) -> None:
        try:
            self._sender.sendto(b"\1", b"\0" + ADDRESS_PREFIX + token.encode())
        except BlockingIOError:
            pass  # its queue of datagrams is full: it has rings to read already
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(OSError):  # its receiver is gone
                os.unlink(marker)
        except OSError as exc:  # e.g. refused by a security module: that receiver polls
            log.debug("cannot ring %s: %s", marker, exc)

    def close(self) -> None:
        with self._lock:
            bells = list(self._bells)
        for bell in bells:
            bell.close()
        self._sender.close()


def _tag(queue: str) -> str:
    """A file-name-safe tag for a queue name (queue names may hold any character)."""
    return hashlib.blake2s(queue.encode(), digest_size=6).hexdigest()


def _network_namespace() -> str:
    """This process's network namespace: abstract sockets are reachable only within it."""
    try:
        return str(os.stat("/proc/self/ns/net").st_ino)
    except OSError:
        return "0"


# One set of bells per database file (and kind) in a process, shared by every broker on the
# file (an embedded server's API and lifecycle open their own), closed with the last of them.
_shared: dict[tuple[Path, bool], tuple[Doorbells, int]] = {}
_shared_lock = threading.Lock()


def acquire(database: Path, cross_process: bool = True) -> Doorbells:
    """This process's bells for ``database`` (a resolved path); :func:`release` them after use.

    ``cross_process=False``, a platform without abstract sockets, or a directory that cannot be
    written give :class:`LocalDoorbells`.
    """
    key = (database, cross_process)
    with _shared_lock:
        found, users = _shared.get(key) or (_open(database, cross_process), 0)
        _shared[key] = (found, users + 1)
        return found


def release(database: Path, cross_process: bool = True) -> None:
    """Give back what :func:`acquire` gave; the last user's release closes the bells."""
    key = (database, cross_process)
    with _shared_lock:
        found, users = _shared.pop(key)
        if users > 1:
            _shared[key] = (found, users - 1)
            return
    found.close()


def _open(database: Path, cross_process: bool) -> Doorbells:
    if cross_process and sys.platform == "linux":
        try:
            return SocketDoorbells(database)
        except OSError as exc:
            log.warning("no wake-ups across processes for %s (receivers will poll): %s", database, exc)
    return LocalDoorbells()
