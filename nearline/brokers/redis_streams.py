"""Redis Streams broker: ``redis://[:password@]host:6379/0[?claim_check_bytes=N]``.

Guarantees: everything in :mod:`nearline.brokers.base`, for any number of processes and hosts
sharing one Redis primary, and, with the settings below, across a Redis restart. Every
operation is one round trip (a Lua script: a check and the change it guards are atomic).

Layout (names in :mod:`nearline.brokers.redis_keys`, which the KEDA triggers share): a stream
per lane (``<queue>:high``, ``:normal``, ``:low``) with the consumer group ``nearline``, whose
entries hold ``id``, ``body`` (or ``blob``, a claim check) and ``exp`` (epoch ms, with a TTL);
``<queue>:dead``, the dead letters; ``<queue>:msg:<id>`` (``send`` is idempotent while it
exists), ``<queue>:expiry``, ``<queue>:blob:<id>`` and ``<queue>:bell``.

Receive reads high, then normal, then low: first entries whose lease expired (XAUTOCLAIM,
which also raises the delivery count), then new ones (XREADGROUP). When nothing is there it
blocks on the queue's bell (BLPOP of ``<queue>:bell``, a list holding one token at most, which
every send rings), so one blocked receiver wakes per send; its lease is pipelined behind the
BLPOP, so the reply that wakes it carries its messages. A receive that took all it asked for
rings again, for the next receiver. Redis times blocked calls out only ``hz`` times a second:
a receive shorter than 100 ms polls every 2 ms instead. Details and measurements:
``docs/redis.md``.

A lease is the pending entry's idle clock: leasing for L seconds sets the idle time to
``LEASE_HORIZON_S - L``, so ``XAUTOCLAIM min-idle-time=LEASE_HORIZON_S`` hands the message to
another consumer exactly L seconds later; ``abandon`` sets it to the horizon (claimable at once,
the count kept) and rings the bell. The lease token, ``entry id/delivery count/consumer``, is
checked against XPENDING before any settle: a stale lease raises :class:`LeaseLost` and changes
nothing. ``complete`` is XACK + XDEL, so ``depth`` is the streams' XLEN (waiting + leased).
Expired messages are never delivered; bodies over the claim-check limit
(:mod:`nearline.claim_check`) are stored beside the entry.

No loss needs ``appendonly yes`` and ``maxmemory-policy noeviction`` (``docs/redis.md``).

Errors (:func:`redis_error`): a failure that passes (Redis unreachable or loading, a replica
not yet promoted, full, busy in a script) is a :class:`BrokerError`, which callers retry; any
other refusal (``WRONGTYPE``, ``NOPERM``, a script's error) is a plain :class:`NearlineError`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import redis

from nearline.brokers.base import Broker, DeadLetter, Delivery, LeaseLost
from nearline.brokers.redis_client import connect, redis_error
from nearline.brokers.redis_dead_letters import purge_dead_letters, read_dead_letters
from nearline.brokers.redis_keys import GROUP, bell_key, dead_key, stream_key
from nearline.brokers.redis_lua import SCRIPTS, send_then_complete_args
from nearline.claim_check import ClaimCheck, RedisBlobs
from nearline.constants import DEFAULT_LANE, LANES, LEASE_S

#: Leases longer than this are cut to it; the pending list's idle clock counts down from here.
LEASE_HORIZON_S = 24 * 3600.0
#: While other consumers hold leases, an idle receiver looks for expired ones this often.
RECOVERY_POLL_S = 0.25
#: A receive asked to wait less than this polls every SHORT_POLL_S instead of blocking.
SHORT_WAIT_S = 0.1
SHORT_POLL_S = 0.002
#: Longest single BLPOP of the bell: well under redis-py's 5 s socket timeout.
BLOCK_MAX_S = 2.0
#: The dead-letter stream is capped (approximately) at this many entries: their jobs have
#: already failed with PoisonMessage; the stream is for operators to inspect.
DEAD_LETTER_MAXLEN = 10_000
#: Expired messages dropped per ``depth`` call (the rest go on the next call).
EXPIRY_SCAN = 1000
#: Empty consumers of other processes idle this long are forgotten when a broker closes.
FORGET_IDLE_S = 3600.0

_HORIZON_MS = int(LEASE_HORIZON_S * 1000)
# _SINGLE: a pipeline of scripts costs a round trip more than its commands (redis-py sends
# SCRIPT EXISTS before it), so one message is sent, or settled, with the script alone: the
# API's every send, and a worker's or lifecycle's lone result at light load.
T = TypeVar("T")


def _depth_args(queue: str) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the ``depth`` script."""
    keys = [*(stream_key(queue, lane) for lane in LANES), f"{queue}:expiry"]
    return keys, [GROUP, _HORIZON_MS, queue, EXPIRY_SCAN]


class RedisBroker(Broker):
    """Queues as Redis streams with one consumer group; see the module docstring."""

    #: ``send_then_complete`` is one script: all or nothing, so a worker retries it whole.
    settles_atomically = True

    def __init__(self, url: str) -> None:
        self._redis, own, self.url = connect(url, ("claim_check_bytes",))
        self.claim_check = ClaimCheck.configured(own.get("claim_check_bytes"))
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._scripts = {name: self._redis.register_script(src) for name, src in SCRIPTS.items()}
        self._ready: set[str] = set()
        self._cursors: dict[str, list[str]] = {}
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._leasing: dict[str, list[str]] = {}  # queue → lease_with's extra ARGV

    # -- plumbing -----------------------------------------------------------------------

    def _ensure_groups(self, queue: str) -> None:
        if queue in self._ready:
            return
        for lane in LANES:
            try:
                self._redis.xgroup_create(stream_key(queue, lane), GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        with self._lock:
            self._ready.add(queue)

    def _call(self, queue: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with the queue's groups in place; Redis errors become :func:`redis_error`'s."""
        try:
            self._ensure_groups(queue)
            try:
                return fn()
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                with self._lock:  # the streams were deleted under us (FLUSHDB, an operator)
                    self._ready.discard(queue)
                self._ensure_groups(queue)
                return fn()
        except redis.RedisError as exc:
            raise redis_error(f"redis broker {self.url}", exc) from exc

    def _script(self, name: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        return self._scripts[name](keys=keys, args=args, client=client)

    # -- sending ------------------------------------------------------------------------

    def send_many(
        self,
        queue: str,
        messages: Sequence[tuple[str, bytes]],
        *,
        lane: str = DEFAULT_LANE,
        ttl_s: float | None = None,
    ) -> None:
        def one(message_id: str, body: bytes, client: Any) -> None:
            self._script("send", *self._send_args(queue, message_id, body, lane, ttl_s), client)

        def run() -> None:
            if len(messages) == 1:  # one round trip (see _SINGLE)
                one(*messages[0], None)
                return
            pipe = self._redis.pipeline(transaction=False)
            for message_id, body in messages:
                one(message_id, body, pipe)
            pipe.execute()

        if messages:
            self._call(queue, run)

    def _send_args(
        self, queue: str, message_id: str, body: bytes, lane: str, ttl_s: float | None
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the ``send`` script for one message."""
        if lane not in LANES:
            raise ValueError(f"unknown lane {lane!r}; expected one of {LANES}")
        ttl = "" if ttl_s is None else str(max(int(ttl_s * 1000), 1))
        blob_ttl = str(int(self.claim_check.blob_ttl_s(ttl_s) * 1000))
        keys = [
            stream_key(queue, lane),
            f"{queue}:msg:{message_id}",
            f"{queue}:expiry",
            self.claim_check.blob_key(queue, message_id),
            bell_key(queue),
        ]
        blob = "1" if self.claim_check.needed(body) else "0"
        return keys, [message_id, lane, body, blob, ttl, blob_ttl]

    def send_parts(
        self, queue: str, message_id: str, body: bytes, lane: str, ttl_s: float | None
    ) -> tuple[list[str], list[Any], list[str], list[Any]]:
        """KEYS and ARGV of the ``send`` and the ``depth`` scripts' functions (:mod:`redis_lua`),
        for a script of another module that sends one message as part of its own step (the
        status store's submit, :mod:`nearline.store.redis_submit`). Makes the queue's consumer
        groups first, if this broker has not yet.
        """
        self._call(queue, lambda: None)
        return (*self._send_args(queue, message_id, body, lane, ttl_s), *_depth_args(queue))

    def same_database(self, client: redis.Redis) -> bool:
        """Whether ``client`` talks to this broker's Redis server and database."""
        mine, theirs = self._redis.connection_pool.connection_kwargs, client.connection_pool.connection_kwargs
        fields = ("host", "port", "path", "db", "username")
        return all(mine.get(f) == theirs.get(f) for f in fields)

    # -- receiving ----------------------------------------------------------------------

    def receive(
        self, queue: str, max_messages: int, wait_s: float, lease_s: float = LEASE_S
    ) -> list[Delivery]:
        if max_messages < 1:
            return []
        deadline = time.monotonic() + max(wait_s, 0.0)
        lease_ms = max(min(int(lease_s * 1000), _HORIZON_MS), 1)
        # The length the last receive saw, when it took every new entry: block on the bell
        # first instead of looking at streams known to hold nothing new (a round trip).
        seen = self._seen.pop(queue, None) if wait_s >= SHORT_WAIT_S else None
        while True:
            if seen is not None:
                lease = partial(self._block_then_lease, queue, seen, deadline, max_messages, lease_ms)
            else:
                lease = partial(self._lease, queue, max_messages, lease_ms)
            found, length, scanned = self._call(queue, lease)
            if found:
                if len(found) < max_messages and scanned:
                    self._seen[queue] = length
                return self._call(queue, partial(self._deliveries, queue, found))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if wait_s < SHORT_WAIT_S:
                # Redis checks blocked clients' timeouts only `hz` times a second (10 by
                # default): a 5 ms BLPOP comes back after ~100 ms. A short wait polls.
                time.sleep(min(remaining, SHORT_POLL_S))
                continue
            seen = length

    def _block_then_lease(
        self, queue: str, length: int, deadline: float, n: int, lease_ms: int
    ) -> tuple[list[Any], int, bool]:
        """BLPOP the queue's bell until ``deadline`` (monotonic), then lease: one round trip.

        One pipeline: Redis runs the lease the moment the BLPOP returns (a blocked client's next
        command waits behind it), so a woken receiver holds its messages without a second round
        trip, nor a second wake of Redis and of this process. The lease runs whether the bell
        rang or the wait timed out. Leased entries (``length``) may expire meanwhile: then the
        wait is short. It may end up to 1/hz late, which the idle waits (0.5 s) afford.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return self._lease(queue, n, lease_ms)
        pause = min(remaining, BLOCK_MAX_S, RECOVERY_POLL_S if length else BLOCK_MAX_S)
        name, keys, args = self._lease_parts(queue, n, lease_ms)
        pipe = self._redis.pipeline(transaction=False)
        # At least 10 ms: a timeout Redis rounds down to 0 would block for ever.
        pipe.blpop([bell_key(queue)], timeout=max(pause, 0.01))
        # EVALSHA by hand: a Script in a pipeline makes redis-py send SCRIPT EXISTS first.
        pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)
        try:
            _, leased = pipe.execute()
        except redis.exceptions.NoScriptError:  # Redis restarted or flushed its scripts
            return self._lease(queue, n, lease_ms)  # the Script loads it again
        return self._leased(queue, leased)

    def lease_with(self, queue: str, source: str, extra_args: list[str]) -> None:
        """Lease from ``queue`` with ``source`` from now on, a script of another module built on
        the ``receive`` function that takes ``extra_args`` after its own and answers a fourth
        list, one string (or nil) per delivery, kept as its ``job_status`` (the status store's
        receive that also starts the jobs, :mod:`nearline.store.redis_receive`)."""
        self._scripts[f"lease:{queue}"] = self._redis.register_script(source)
        self._leasing[queue] = list(extra_args)

    def _lease(self, queue: str, n: int, lease_ms: int) -> tuple[list[Any], int, bool]:
        """The receive script: (deliveries, length, whether every lane's scan for expired
        leases is complete); a delivery's row carries its job status last when leased
        :meth:`lease_with` a script that answers one."""
        name, keys, args = self._lease_parts(queue, n, lease_ms)
        return self._leased(queue, self._script(name, keys, args))

    def _lease_parts(self, queue: str, n: int, lease_ms: int) -> tuple[str, list[str], list[Any]]:
        """The lease script's name, KEYS and ARGV."""
        cursors = self._cursors.get(queue) or ["0-0"] * len(LANES)
        args: list[Any] = [GROUP, self.consumer, n, lease_ms, _HORIZON_MS, queue]
        for lane, cursor in zip(LANES, cursors, strict=True):
            args += [lane, cursor]
        keys = [stream_key(queue, lane) for lane in LANES]
        extra = self._leasing.get(queue)
        return ("receive", keys, args) if extra is None else (f"lease:{queue}", keys, args + extra)

    def _leased(self, queue: str, answer: list[Any]) -> tuple[list[Any], int, bool]:
        """:meth:`_lease`'s answer from the script's."""
        new_cursors, found, length, *statuses = answer
        if statuses:
            found = [[*row, status] for row, status in zip(found, statuses[0], strict=True)]
        self._cursors[queue] = [c.decode() for c in new_cursors]
        return found, int(length), all(c == "0-0" for c in self._cursors[queue])

    def _deliveries(self, queue: str, found: list[Any]) -> list[Delivery]:
        blob_ids = [row[3].decode() for row in found if row[5] == b"1"]
        blob_keys = [self.claim_check.blob_key(queue, m) for m in blob_ids]
        blobs = dict(zip(blob_ids, self.claim_check.fetch(RedisBlobs(self._redis), blob_keys), strict=True))
        out = []
        for lane_index, entry, count, raw_id, body, is_blob, *status in found:
            message_id, entry_id = raw_id.decode(), entry.decode()
            if is_blob == b"1":
                # A blob gone (deleted by hand) leaves an empty body: the receiver's own check
                # of the message then fails it visibly, rather than the broker hiding it.
                body = blobs.get(message_id) or b""
            out.append(
                Delivery(
                    queue=queue,
                    message_id=message_id,
                    body=bytes(body),
                    lane=LANES[lane_index - 1],
                    delivery_count=int(count),
                    lease_token=f"{entry_id}/{count}/{self.consumer}",
                    enqueued_at=int(entry_id.partition("-")[0]) / 1000,
                    job_status=(status[0] or b"").decode() if status else None,
                )
            )
        return out

    # -- settling -----------------------------------------------------------------------

    def _settle_args(self, d: Delivery, op: str, reason: str = "") -> tuple[list[str], list[Any]]:
        entry, count, consumer = d.lease_token.split("/", 2)
        keys = [stream_key(d.queue, d.lane), dead_key(d.queue)]
        args = [GROUP, op, entry, count, consumer, _HORIZON_MS, d.queue, d.lane, d.message_id]
        return keys, [*args, reason, DEAD_LETTER_MAXLEN]

    def _settle(self, d: Delivery, op: str, reason: str = "") -> None:
        keys, args = self._settle_args(d, op, reason)
        if not self._call(d.queue, lambda: self._script("settle", keys, args)):
            raise LeaseLost(f"lease on message {d.message_id} in {d.queue} is no longer held")

    def complete(self, delivery: Delivery) -> None:
        self._settle(delivery, "complete")

    def complete_many(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        if not deliveries:
            return []

        def run() -> list[Any]:
            if len(deliveries) == 1:  # one round trip (see _SINGLE)
                return [self._script("settle", *self._settle_args(deliveries[0], "complete"))]
            pipe = self._redis.pipeline(transaction=False)
            for d in deliveries:
                keys, args = self._settle_args(d, "complete")
                self._script("settle", keys, args, pipe)
            return pipe.execute()

        done = self._call(deliveries[0].queue, run)
        return [d for d, ok in zip(deliveries, done, strict=True) if not ok]

    def send_then_complete(
        self, queue: str, messages: Sequence[tuple[str, bytes]], deliveries: Sequence[Delivery]
    ) -> list[Delivery]:
        if not messages or not deliveries:  # only one of the two: its own call
            self.send_many(queue, messages)
            return self.complete_many(deliveries)
        keys, args = send_then_complete_args(*self.settle_parts(queue, messages, deliveries))
        done = self._call(queue, partial(self._script, "send_then_complete", keys, args))
        return [d for d, ok in zip(deliveries, done, strict=True) if not ok]

    def settle_parts(
        self, queue: str, messages: Sequence[tuple[str, bytes]], deliveries: Sequence[Delivery]
    ) -> tuple[list[tuple[list[str], list[Any]]], list[tuple[list[str], list[Any]]]]:
        """KEYS and ARGV of ``send`` for each message to ``queue`` and of ``settle`` (complete)
        for each delivery, for ``send_then_complete`` and for a script of another module that
        settles a worker's batch as part of its own step (the status store's,
        :mod:`nearline.store.redis_settle`). Makes every queue's consumer groups first."""
        for name in {queue, *(d.queue for d in deliveries)}:
            self._call(name, lambda: None)
        sends = [self._send_args(queue, mid, body, DEFAULT_LANE, None) for mid, body in messages]
        return sends, [self._settle_args(d, "complete") for d in deliveries]

    def abandon(self, delivery: Delivery) -> None:
        self._seen.pop(delivery.queue, None)  # claimable at once: the next receive looks first
        self._settle(delivery, "abandon")

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._settle(delivery, "dead", reason=reason)

    # -- inspection ---------------------------------------------------------------------

    def depth(self, queue: str) -> int:
        keys, args = _depth_args(queue)
        return int(self._call(queue, lambda: self._script("depth", keys, args)))

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        return self._call(queue, partial(read_dead_letters, self._redis, queue, limit))

    def purge_dead_letters(self, queue: str, message_ids: Sequence[str]) -> int:
        """XDEL the dead-letter entries with these ids (a scan of the capped dead-letter stream)."""
        return self._call(queue, partial(purge_dead_letters, self._redis, queue, message_ids))

    def close(self) -> None:
        """Forget this consumer (when it holds nothing) and close the connections."""
        try:
            for queue in list(self._ready):
                keys = [stream_key(queue, lane) for lane in LANES]
                self._script("forget_consumers", keys, [GROUP, self.consumer, int(FORGET_IDLE_S * 1000)])
        except redis.RedisError:
            pass  # best effort: a consumer left behind holds nothing and costs a few bytes
        finally:
            self._redis.close()
