"""A worker's receive on Redis that also starts its jobs: one round trip fewer before a batch.

Step by step (every other store and broker) a worker leases a batch of requests, then reads
their jobs' statuses and marks the Pending ones Running (``StatusStore.start_jobs``, the
liveness hook of :mod:`nearline.worker.hooks`) before computing: two round trips on Redis. When
the status store and the broker share a database, :meth:`RedisStore.start_on_receive
<nearline.store.redis_hashes.RedisStore.start_on_receive>` has the broker lease with
:data:`RECEIVE_STARTED` instead, one Lua script built from the broker's ``receive`` function
and the store's ``start`` (each written once): each leased request's job is read and, if
Pending, marked Running in the same step, and its status as it was comes back with the
delivery (``Delivery.job_status``), which the liveness hook then uses as it would its own read.

What changes for a job: it shows Running from the moment a worker holds its request, rather
than from its batch's start (the two differ only while a busy worker holds a window of
batches, a quarter of a lease at most); a terminate after that is ended at once, and the
worker's result then changes nothing (compare-and-set), as for a terminate during the batch.
A request whose job ended or is gone is still skipped before computing, so "a job no worker
has taken is never scored" holds as before. A worker killed after the script leaves the jobs
Running with their requests leased: the leases run out and another worker computes them.
"""

from __future__ import annotations

from nearline.brokers.redis_lua import PRELUDE, RECEIVE_FUNCTION
from nearline.store.redis_lua import START_FUNCTION

#: KEYS and ARGV: ``receive``'s, then ARGV[#ARGV]: the job hash prefix. Returns ``receive``'s
#: {cursors, deliveries, length} and, per delivery, its job's status as it was (false: absent).
RECEIVE_STARTED = (
    PRELUDE
    + RECEIVE_FUNCTION
    + START_FUNCTION
    + """
local r = receive(KEYS, ARGV)
local updated = string.format('%.3f', now_ms() / 1000)
local statuses = {}
for i, d in ipairs(r[2]) do statuses[i] = start(ARGV[#ARGV] .. d[4], updated) end
r[4] = statuses
return r
"""
)
