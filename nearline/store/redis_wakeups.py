"""Long-poll wake-ups across replicas for the Redis store: finishes announced over pub/sub.

``RedisStore.finish`` publishes ``<job id> <origin>`` on the channel ``nearline:job-finished:<db>``
(pub/sub channels are server-wide, so the database number keeps deployments that share a server
apart). :class:`Wakeups` is the store's :class:`~nearline.waiters.Waiters`: on the first
``register`` it subscribes and waits for Redis to confirm, so a finish after any register is
never missed; then one daemon thread turns announcements from *other* instances into
``notify`` (an instance's own finishes notify its waiters directly). A process that never
long-polls (a worker) never subscribes.

The hand-over (:mod:`nearline.waiters`): when this instance ends a batch of jobs
(``finish_many``, the lifecycle) and someone here waits for one, the script answers with the
ended record, kept for the waiter: the long-poll answers without reading the record back from
Redis, a round trip fewer on every answered wait. A worker's end (``RedisStore.settle_ended``,
:mod:`nearline.store.redis_settle`) announces ``<job id> <origin> <1|0> <record>``: whether the
job has a callback (its outbox delivery is written; this instance's ``on_callback`` listeners,
the local lifecycle's dispatcher, are told) and, for outputs up to ``HANDOVER_BYTES``, the ended
record as a JSON array of the hash's fields and values, handed over the same way to a waiter
here.

Where the listening happens: a daemon thread, until the API server's event loop asks for it
(:meth:`Wakeups.read_on_loop`, ``nearline serve`` once it listens). The thread then hands the
subscription over to the loop, which reads announcements as it reads its sockets: a waiter is
answered without a hop from the listener's thread to the loop's, a hop that costs a cold wake
of the other core on a small machine (docs/benchmarks.md, "Sixth slice"). A failed read on the
loop hands it back to a thread, which reconnects and hands it over again once it reads.

If the connection drops, redis-py reconnects and subscribes again; announcements made in
between are gone, so on every re-subscription the jobs still being waited for are looked up
and the ended ones notified (``catch_up``). ``close`` stops the thread.

Every end is heard from the subscription's confirmation on (:meth:`Wakeups.hears_every_end`):
an announcement is notified, and remembered (:mod:`nearline.waiters`) if nobody waits yet; an
end lost while the connection was down is caught up for every waiter registered before the
new subscription, and a job created before it is read, not trusted to be heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from nearline.errors import BrokerError, NearlineError
from nearline.jobs import JobRecord
from nearline.waiters import Waiters

log = logging.getLogger("nearline.store.redis")

#: How long the listener blocks for a message before checking whether it should stop.
POLL_S = 0.5


def channel_for(db: int) -> str:
    """The wake-up channel of database ``db``."""
    return f"nearline:job-finished:{db}"


class Wakeups(Waiters):
    """Waiters that also wake for finishes announced by other store instances.

    Args:
        client: The store's client (the subscription gets a connection of its own).
        channel: From :func:`channel_for`.
        origin: This store instance's id; its own announcements are skipped.
        catch_up: Given job ids, returns those that have ended (used after a reconnect).
        read_record: The record of a job id and an announced record (a JSON array of fields
            and values).
        callback: Called with the id of a job another instance ended with a callback.
    """

    def __init__(
        self,
        client: redis.Redis,
        channel: str,
        origin: str,
        catch_up: Callable[[list[str]], Iterable[str]],
        read_record: Callable[[str, str], JobRecord],
        callback: Callable[[str], None],
    ) -> None:
        super().__init__()
        self.channel = channel
        self.origin = origin
        self._client = client
        self._catch_up = catch_up
        self._read_record = read_record
        self._callback = callback
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._pubsub: Any = None
        self._thread: threading.Thread | None = None
        #: The loop that should read (read_on_loop), and the one that does, if any.
        self._wanted: asyncio.AbstractEventLoop | None = None
        self._reader: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        #: When the current subscription was confirmed (epoch seconds); None: not subscribed.
        self._subscribed_at: float | None = None

    def announcement(self, job_id: str) -> str:
        """What ``finish`` publishes for ``job_id``."""
        return f"{job_id} {self.origin}"

    def register(self, job_id: str) -> asyncio.Future[None]:
        self.start()
        reader = self._reader
        if reader is not None and reader.is_closed():  # the loop that read is gone: a thread reads
            with self._start_lock:
                if self._reader is reader and not self._stop.is_set():
                    self._reader = self._wanted = None
                    self._start_thread()
        return super().register(job_id)

    def start(self) -> None:
        """Subscribe (once) and return when Redis has confirmed it."""
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is not None or self._stop.is_set():
                return
            pubsub = self._client.pubsub()
            try:
                pubsub.subscribe(self.channel)
                confirmed = pubsub.get_message(timeout=5.0)
            except redis.RedisError as exc:
                pubsub.close()
                raise BrokerError(f"redis store: cannot subscribe to {self.channel}: {exc}") from exc
            if not confirmed or confirmed.get("type") != "subscribe":
                pubsub.close()
                raise BrokerError(f"redis store: Redis did not confirm the subscription to {self.channel}")
            self._pubsub = pubsub
            self._subscribed_at = time.time()
            self._start_thread()

    def read_on_loop(self) -> None:
        """Have the running event loop read the announcements from now on (a server's loop,
        for its process's life); the listener thread hands them over on its next read."""
        self._wanted = asyncio.get_running_loop()
        with contextlib.suppress(BrokerError):  # Redis down: the thread subscribes, then hands over
            self.start()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._listen, name="redis-store-wakeups", daemon=True)
        self._thread.start()

    def hears_every_end(self, since: float) -> bool:
        """True when subscribed since before ``since``: an end after it is notified here (or,
        if the connection dropped, caught up for the waiters registered by then)."""
        subscribed = self._subscribed_at
        return subscribed is not None and subscribed <= since and not self._stop.is_set()

    def waited(self) -> list[str]:
        """Ids someone in this process is waiting for."""
        with self._lock:
            return list(self._futures)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                self._handle(self._pubsub.get_message(timeout=POLL_S))
            except (redis.RedisError, NearlineError, OSError, ValueError) as exc:
                if self._stop.is_set():
                    return
                log.warning("job wake-up subscription failed, reconnecting: %s", exc)
                self._stop.wait(POLL_S)
                continue
            loop = self._wanted
            if loop is not None and loop.is_running():  # read there from now on
                with contextlib.suppress(RuntimeError):  # closed meanwhile: go on here
                    loop.call_soon_threadsafe(self._attach)
                    return

    def _handle(self, msg: dict[str, Any] | None, on_loop: bool = False) -> None:
        if msg and msg.get("type") == "subscribe":  # again, after a reconnect
            self._subscribed_at = time.time()  # before the catch-up's snapshot of waiters
            waited = self.waited()
            if on_loop:  # the catch-up reads Redis: not on the loop's thread
                threading.Thread(target=self._caught_up, args=(waited,), daemon=True).start()
            else:
                self._caught_up(waited)
        elif msg and msg.get("type") == "message":
            self._announced(msg["data"].decode())

    def _caught_up(self, waited: list[str]) -> None:
        try:
            for job_id in self._catch_up(waited):
                self.notify(job_id)
        except (redis.RedisError, NearlineError, OSError) as exc:
            log.warning("job wake-ups: could not catch up after a reconnect: %s", exc)

    def _attach(self) -> None:
        """On the wanted loop: read the subscription's socket there (what is buffered first)."""
        sock = self._pubsub.connection._sock
        if self._stop.is_set() or sock is None:  # closed, or dropped since the hand-over
            if not self._stop.is_set():
                self._start_thread()
            return
        loop = asyncio.get_running_loop()
        self._reader, self._fd = loop, sock.fileno()
        loop.add_reader(self._fd, self._drain)
        self._drain()

    def _drain(self) -> None:
        """Every announcement there is now, read without redis-py's reconnect-and-retry (which
        would sleep on the loop): a failure hands the subscription back to a thread."""
        loop, conn = asyncio.get_running_loop(), self._pubsub.connection
        try:
            while not self._stop.is_set() and conn.can_read(timeout=0):
                answer = conn.read_response(disconnect_on_error=False, push_request=True, timeout=0)
                self._handle(self._pubsub.handle_message(answer), on_loop=True)
        except redis.TimeoutError:  # part of a message is here: the rest makes the socket readable
            return
        except (redis.RedisError, NearlineError, OSError, ValueError) as exc:
            if not self._stop.is_set():
                log.warning("job wake-up subscription failed on the event loop, reconnecting: %s", exc)
        else:
            if not self._stop.is_set():
                return  # all read: the next announcement makes the socket readable again
        self._detach(loop)
        if not self._stop.is_set():
            self._start_thread()

    def _detach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._reader = None
        with contextlib.suppress(Exception):  # its socket may be closed already
            loop.remove_reader(self._fd)

    def _announced(self, message: str) -> None:
        """One announcement: ``<job id> <origin>``, or a worker's ``... <1|0> [<record>]``."""
        job_id, _, rest = message.partition(" ")
        origin, _, rest = rest.partition(" ")
        if origin == self.origin:
            return  # this instance's own end: it notified its waiters itself
        callback, _, record = rest.partition(" ")
        if record and self.wanted(job_id):
            self.hand_over(job_id, self._read_record(job_id, record))
        self.notify(job_id)
        if callback == "1":
            self._callback(job_id)

    def close(self) -> None:
        """Stop listening and close the subscription's connection."""
        with self._start_lock:
            self._stop.set()
            thread, pubsub, reader = self._thread, self._pubsub, self._reader
        if thread is not None:
            thread.join(timeout=5)
        if reader is not None and not reader.is_closed():  # the loop's reader goes first
            if reader.is_running() and reader is not _running_loop():
                with contextlib.suppress(RuntimeError, TimeoutError):
                    asyncio.run_coroutine_threadsafe(_call(self._detach, reader), reader).result(timeout=5)
            else:
                self._detach(reader)
        if pubsub is not None:
            pubsub.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _call(fn: Callable[[asyncio.AbstractEventLoop], None], loop: asyncio.AbstractEventLoop) -> None:
    fn(loop)
