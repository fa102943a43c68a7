"""Redis commands from an event loop, with no hop to a thread: :class:`LoopCalls`.

redis-py's client blocks, so an API handler would call it through ``asyncio.to_thread``: its
request hops to a pool thread, and the answer hops back. On a small, mostly idle machine each
hop wakes a thread that is often on the other core, cold, and that costs more than Redis's own
work (docs/benchmarks.md, "Sixth slice"). Here the loop writes the command on a connection of
its own, waits for the socket to be readable as it waits for any other, and reads the answer
once it is there.

The loop never waits on Redis: a connection is opened on a thread (the only hop, once per
connection), and one whose answer did not come whole is closed, never reused, so no later call
reads another's answer. What the loop does do on its own thread is the write of a command (a
few hundred bytes into an empty socket buffer) and the read of an answer that has begun to
arrive (on loopback or a LAN, all of it is there).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import redis
from redis.connection import AbstractConnection

#: Used when the client has no ``socket_timeout`` of its own: an answer that takes longer is an
#: outage (the call fails), as it is for the client's blocking calls.
DEFAULT_TIMEOUT_S = 10.0


class LoopCalls:
    """Connections to ``client``'s server, for calls awaited on an event loop (any loop).

    Each call takes an idle connection (or opens one, on a thread), sends, awaits the answer
    and gives the connection back. :meth:`close` closes the idle ones, and the busy ones as
    their calls end.
    """

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        self._make = lambda: pool.connection_class(**pool.connection_kwargs)
        self._timeout = pool.connection_kwargs.get("socket_timeout") or DEFAULT_TIMEOUT_S
        self._idle: list[AbstractConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    async def call(self, *command: Any) -> Any:
        """The raw answer to ``command`` (no response callbacks: meant for ``EVALSHA`` and other
        commands whose answer is used as Redis sends it).

        Raises:
            redis.ResponseError: Redis answered an error (e.g. ``NoScriptError``).
            redis.ConnectionError, redis.TimeoutError: the connection failed, or Redis did not
                answer within the client's ``socket_timeout``.
        """
        taken = self._take()
        conn = taken if taken is not None else await asyncio.to_thread(self._connect)
        whole = False  # the answer was read whole (a value or an error): the connection is reusable
        try:
            conn.send_command(*command)
            if not conn.can_read(timeout=0):
                await _readable(conn, self._timeout)
            answer = conn.read_response()
            whole = True
            return answer
        except redis.ResponseError:
            whole = True
            raise
        finally:
            self._give_back(conn, whole)

    def close(self) -> None:
        with self._lock:
            self._closed, idle, self._idle = True, self._idle, []
        for conn in idle:
            conn.disconnect()

    def _take(self) -> AbstractConnection | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def _connect(self) -> AbstractConnection:
        conn = self._make()
        conn.connect()
        return conn

    def _give_back(self, conn: AbstractConnection, whole: bool) -> None:
        with self._lock:
            if whole and not self._closed:
                self._idle.append(conn)
                return
        conn.disconnect()


async def _readable(conn: AbstractConnection, timeout: float) -> None:
    """Return once ``conn``'s socket has data to read; redis.TimeoutError after ``timeout``."""
    sock = getattr(conn, "_sock", None)
    if sock is None:
        raise redis.ConnectionError("the connection closed before its answer")
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, _resolve, ready)
    try:
        async with asyncio.timeout(timeout):
            await ready
    except TimeoutError:
        raise redis.TimeoutError(f"Redis did not answer within {timeout:g} s") from None
    finally:
        loop.remove_reader(fd)


def _resolve(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
