"""A worker's batch on Redis in one round trip: results sent, jobs ended, requests completed.

Step by step (every other store and broker) a job's end takes two more hops after the worker:
the result message goes to the response queue, the lifecycle (in an API process) receives it
and ends the job record, and only then is the long-poll answered. When the Redis store and
the Redis broker share a database (``nearline serve --broker redis://…`` and ``python -m
workers`` on the same URL), :meth:`RedisStore.settle_ended
<nearline.store.redis_hashes.RedisStore.settle_ended>` runs :data:`SETTLE_ENDED`, one Lua script
built from the broker's ``send`` and ``settle`` functions and the store's ``finish``, so each
stays written once:

1. every result message is sent, without ringing the response queue's bell: the lifecycle
   still receives them, for the per-hop timings and the traces (its compare-and-set finds the
   jobs already ended), but on its next look, at most its idle wait (0.5 s) later and in one
   batch, not the moment the job ends. Woken then, the lifecycle's thread (in an API process)
   would compete for the GIL and the cores with the listener and the event loop that answer
   the long-poll: on 2 cores that cost the answer ~0.4 ms (docs/benchmarks.md);
2. every job is ended as the lifecycle would end it (compare-and-set; the outcomes log, the
   callback outbox, the finished index, the retention TTL), and the end is announced with the
   ended record (up to :data:`HANDOVER_BYTES` of output) so a long-poll on any API replica
   answers without reading it back;
3. the request messages are completed.

The order is the worker's at-least-once order (publish, then settle): a script that stops part
way has completed nothing whose result was not sent and whose job was not ended, and running
it again changes nothing (sends are idempotent, ends compare-and-set). A ``kill -9`` of the
worker loses what it lost before: its leases run out and the requests are computed again.
"""

from __future__ import annotations

from typing import Any

from nearline.brokers.redis_lua import PRELUDE, SEND_FUNCTION, SETTLE_FUNCTION
from nearline.store.redis_lua import FINISH_FUNCTION

#: The largest output (JSON bytes) whose ended record goes with the announcement; a larger one
#: is read back by the replica that answers its long-poll (pub/sub sends every announcement to
#: every replica).
HANDOVER_BYTES = 16 * 1024

#: KEYS: each message's ``send`` KEYS (5), then deadlines, finished, outbox, then each job's
#: hash, then each delivery's ``settle`` KEYS (2). ARGV: the number of messages, of jobs, then
#: each message's ``send`` ARGV (6), then ``finish``'s shared ARGV (updated, retention ms,
#: channel, slot key prefix, delivery key prefix, pending callback status JSON,
#: :data:`HANDOVER_BYTES`), then per job its id, status, output JSON, announcement and timings
#: JSON ("" = none), then each delivery's ``settle`` ARGV (11, op ``complete``).
#: Returns {each job's ``finish`` answer, each delivery's ``settle`` answer}.
SETTLE_ENDED = (
    PRELUDE
    + SEND_FUNCTION
    + SETTLE_FUNCTION
    + FINISH_FUNCTION
    + """
local m, n = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 0, m - 1 do send(slice(KEYS, 1 + 5 * i, 5), slice(ARGV, 3 + 6 * i, 6), true) end
local k, a = 5 * m, 2 + 6 * m  -- KEYS and ARGV before finish's
local ended = {}
for i = 1, n do
  local j = a + 7 + (i - 1) * 5
  local K = {KEYS[k + 3 + i], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]}
  local A = {ARGV[j + 1], ARGV[j + 2], ARGV[j + 3], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
    ARGV[j + 4], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[j + 5], ARGV[a + 7]}
  ended[i] = finish(K, A)
end
k, a = k + 3 + n, a + 7 + 5 * n
local done = {}
for i = 0, (#KEYS - k) / 2 - 1 do
  done[i + 1] = settle(slice(KEYS, k + 1 + 2 * i, 2), slice(ARGV, a + 1 + 11 * i, 11))
end
return {ended, done}
"""
)


def settle_ended_args(
    sends: list[tuple[list[str], list[Any]]],
    finish_keys: list[str],
    finish_shared: list[Any],
    ends: list[list[Any]],
    settles: list[tuple[list[str], list[Any]]],
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of :data:`SETTLE_ENDED` from its parts: each message's ``send`` KEYS and
    ARGV, ``finish``'s keys (deadlines, finished, outbox, then the job hashes) and shared ARGV,
    each job's own ARGV, and each delivery's ``settle`` KEYS and ARGV."""
    keys = [k for part in sends for k in part[0]] + finish_keys + [k for part in settles for k in part[0]]
    args: list[Any] = [len(sends), len(ends), *(a for part in sends for a in part[1]), *finish_shared]
    args += [a for end in ends for a in end]
    args += [a for part in settles for a in part[1]]
    return keys, args
