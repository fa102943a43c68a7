"""The Lua scripts behind :mod:`nearline.store.redis_hashes`: each transition is one atomic step.

A job is the hash ``nearline:job:<id>`` (``status`` and ``updated`` plain, the other fields
JSON). ``nearline:jobs:deadlines`` (sorted set, score = deadline) lists the unfinished jobs
that have a deadline; ``nearline:jobs:finished`` (score = ``updated``) lists the ended ones.
"""

from __future__ import annotations

_TERMINAL = """
local TERMINAL = {Completed = true, Failed = true, Terminated = true}
"""

#: KEYS: job hash, deadlines, finished. ARGV: id, status, updated, deadline or "", retention ms,
#: then the hash's field/value pairs. Returns nil when created, else the existing hash.
CREATE = (
    _TERMINAL
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HGETALL', KEYS[1]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZREM', KEYS[3], ARGV[1])  -- a past job of this id that expired by TTL
if TERMINAL[ARGV[2]] then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
elseif ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
end
return false
"""
)

#: KEYS: job hashes. ARGV: updated. Moves the Pending ones to Running.
MARK_RUNNING = """
for _, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'status') == 'Pending' then
    redis.call('HSET', key, 'status', 'Running', 'updated', ARGV[1])
  end
end
return 0
"""

#: KEYS: job hash, deadlines, finished. ARGV: id, status, output JSON, updated, retention ms,
#: channel, message. Returns 1 when the job moved to ``status``, 0 when absent or already ended.
FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'Pending' and status ~= 'Running' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'output', ARGV[3], 'updated', ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
"""

#: KEYS: job hash, deadlines, finished. ARGV: id. Returns 1 when there was a record.
DELETE = """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return redis.call('DEL', KEYS[1])
"""

#: KEYS: finished. ARGV: updated before (exclusive), batch size, job key prefix.
#: Returns {records deleted, ids looked at}; the caller repeats while a full batch came back.
PURGE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
local deleted = 0
for _, id in ipairs(ids) do
  deleted = deleted + redis.call('DEL', ARGV[3] .. id)
  redis.call('ZREM', KEYS[1], id)
end
return {deleted, #ids}
"""

SCRIPTS = {
    "create": CREATE,
    "mark_running": MARK_RUNNING,
    "finish": FINISH,
    "delete": DELETE,
    "purge": PURGE,
}
