"""The Lua scripts behind :mod:`nearline.store.redis_hashes`: each transition is one atomic step.

A job is the hash ``nearline:job:<id>`` (``status``, ``updated``, ``idempotency_slot`` and
``fingerprint`` plain, the other fields JSON). ``nearline:jobs:deadlines`` (sorted set, score =
deadline) lists the unfinished jobs that have a deadline; ``nearline:jobs:finished`` (score =
``updated``) lists the ended ones. A keyed job's slot is the string ``nearline:job-slot:<slot>``
holding the job id: it lives as long as the record (the same TTL once the job ends) and goes
with it; a slot whose holder's record is gone is free. The callback outbox is the sorted set
``nearline:deliveries`` (score = when a delivery is next due, or its lease's end) and a hash
``nearline:delivery:<id>`` per delivery, with the record's TTL.
"""

from __future__ import annotations

from nearline.outcomes import MAX_WINDOW_S
from nearline.store.outcomes_redis import OUTCOMES_PREFIX

_TERMINAL = """
local TERMINAL = {Completed = true, Failed = true, Terminated = true}
"""

# The slot's holder, {id, its hash}, or false when the slot is free (unset, or its job's record
# gone: a record that expired by TTL frees its slot even where the slot key outlived it).
_HOLDER = """
local function holder(slot_key, prefix)
  local id = redis.call('GET', slot_key)
  if not id then return false end
  local found = redis.call('HGETALL', prefix .. id)
  if #found == 0 then return false end
  return {id, found}
end
"""

# Frees the slot of the job whose hash is KEY, if the job holds it: before the hash goes.
_RELEASE = """
local function release(key, id, slot_prefix)
  local slot = redis.call('HGET', key, 'idempotency_slot')
  if slot and redis.call('GET', slot_prefix .. slot) == id then
    redis.call('DEL', slot_prefix .. slot)
  end
end
"""

#: ``create_found(K, A)`` and ``create_insert(K, A)``: K: job hash, deadlines, finished, then the
#: slot key for a keyed job. A: id, status, updated, deadline or "", retention ms, job key
#: prefix, then the hash's field/value pairs. ``create_found`` returns {id, hash} of the slot's
#: holder or of the job of this id, else false; ``create_insert`` writes the record. Functions,
#: so that the submit script (:mod:`nearline.store.redis_submit`) creates with them too.
CREATE_FUNCTIONS = (
    _TERMINAL
    + _HOLDER
    + """
local function create_found(K, A)
  if K[4] then
    local found = holder(K[4], A[6])
    if found then return found end
  end
  if redis.call('EXISTS', K[1]) == 1 then return {A[1], redis.call('HGETALL', K[1])} end
  return false
end

local function create_insert(K, A)
  redis.call('HSET', K[1], unpack(A, 7))
  redis.call('ZREM', K[3], A[1])  -- a past job of this id that expired by TTL
  if K[4] then redis.call('SET', K[4], A[1]) end
  if TERMINAL[A[2]] then
    redis.call('ZADD', K[3], A[3], A[1])
    redis.call('PEXPIRE', K[1], A[5])
    if K[4] then redis.call('PEXPIRE', K[4], A[5]) end
  elseif A[4] ~= '' then
    redis.call('ZADD', K[2], A[4], A[1])
  end
end
"""
)

#: KEYS and ARGV: those of the create functions. Returns nil when created, else {id, hash} of
#: the slot's holder or of the job of this id.
CREATE = (
    CREATE_FUNCTIONS
    + """
local found = create_found(KEYS, ARGV)
if found then return found end
create_insert(KEYS, ARGV)
return false
"""
)

#: KEYS: slot key. ARGV: job key prefix. Returns {id, hash} of the slot's holder, or nil.
KEYED = (
    _HOLDER
    + """
return holder(KEYS[1], ARGV[1])
"""
)

#: KEYS: job hash. Marks the job's request message sent; 0 (and nothing created) when absent.
MARK_ENQUEUED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'enqueued', 'true')
return 1
"""

#: KEYS: job hashes. ARGV: updated. Moves the Pending ones to Running.
MARK_RUNNING = """
for _, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'status') == 'Pending' then
    redis.call('HSET', key, 'status', 'Running', 'updated', ARGV[1])
  end
end
return 0
"""

#: ``start(key, updated)``: the job's status as it was (false when absent), and a Pending job
#: moved to Running. A function, so that a worker's receive starts its jobs with it too
#: (:mod:`nearline.store.redis_receive`).
START_FUNCTION = """
local function start(key, updated)
  local status = redis.call('HGET', key, 'status')
  if status == 'Pending' then
    redis.call('HSET', key, 'status', 'Running', 'updated', updated)
  end
  return status
end
"""

#: KEYS: job hashes. ARGV: updated. Returns each job's status (nil when absent) as it was, and
#: moves the Pending ones to Running: the worker's liveness check in one step.
START_JOBS = (
    START_FUNCTION
    + """
local found = {}
for i, key in ipairs(KEYS) do found[i] = start(key, ARGV[1]) end
return found
"""
)

#: ``outcome(key, id, status, updated)``: the ended job's entry in its endpoint's outcomes log
#: (:mod:`nearline.store.outcomes_redis`), the log trimmed to its span and given it as TTL.
_OUTCOME_FUNCTION = f"""
local function outcome(key, id, status, updated)
  local f = redis.call('HMGET', key, 'pipeline', 'deployment', 'created', 'shadow_of')
  local log = '{OUTCOMES_PREFIX}' .. cjson.decode(f[1])
  local member = '{{"id":"' .. id .. '","deployment":' .. (f[2] or 'null') .. ',"status":"' .. status
    .. '","created":' .. (f[3] or updated) .. ',"ended":' .. updated
    .. ',"shadow_of":' .. (f[4] or 'null') .. '}}'
  redis.call('ZADD', log, updated, member)
  redis.call('ZREMRANGEBYSCORE', log, '-inf', '(' .. (tonumber(updated) - {MAX_WINDOW_S}))
  redis.call('EXPIRE', log, {MAX_WINDOW_S})
end
"""

#: ``finish(K, A)``: K: job hash, deadlines, finished, outbox. A: id, status, output JSON,
#: updated, retention ms, channel, message, slot key prefix, delivery key prefix, pending
#: callback status JSON, then (optional) per-step timings JSON ("" = none) and (optional) the
#: largest output whose ended record goes with the announcement (a worker's end,
#: :mod:`nearline.store.redis_settle`: the announcement becomes ``<message> <1|0 callback>
#: <the hash as a JSON array, or nothing>``, for the long-polls of other processes). Returns 1 when the
#: job moved to ``status``, 0 when absent or already ended. The job's slot key gets the
#: record's TTL. A job with a callback_url gets its delivery (the hash
#: ``<delivery prefix><id>``, due now in the outbox) in the same step (and the answer is 2
#: instead of 1), and a job ended Completed or Failed its outcome (``outcome``).
FINISH_FUNCTION = (
    _OUTCOME_FUNCTION
    + """
local function finish(K, A)
  local status = redis.call('HGET', K[1], 'status')
  if status ~= 'Pending' and status ~= 'Running' then return 0 end
  redis.call('HSET', K[1], 'status', A[2], 'output', A[3], 'updated', A[4])
  if A[11] and A[11] ~= '' then redis.call('HSET', K[1], 'timings', A[11]) end
  redis.call('ZREM', K[2], A[1])
  redis.call('ZADD', K[3], A[4], A[1])
  redis.call('PEXPIRE', K[1], A[5])
  local slot = redis.call('HGET', K[1], 'idempotency_slot')
  if slot and redis.call('GET', A[8] .. slot) == A[1] then
    redis.call('PEXPIRE', A[8] .. slot, A[5])
  end
  local callback = redis.call('HGET', K[1], 'callback_url')
  if callback and callback ~= 'null' then
    local delivery = A[9] .. A[1]
    redis.call('HSET', delivery, 'url', callback, 'created', A[4], 'attempts', 0)
    redis.call('PEXPIRE', delivery, A[5])
    redis.call('ZADD', K[4], A[4], A[1])
    redis.call('HSET', K[1], 'custom_status', A[10])
  end
  if A[2] ~= 'Terminated' then outcome(K[1], A[1], A[2], A[4]) end
  local has_callback = callback and callback ~= 'null'
  local message = A[7]
  if A[12] then  -- another process waits: say whether it has a callback, and hand it the record
    local record = ''
    if #A[3] <= tonumber(A[12]) then record = cjson.encode(redis.call('HGETALL', K[1])) end
    message = message .. (has_callback and ' 1 ' or ' 0 ') .. record
  end
  redis.call('PUBLISH', A[6], message)
  if has_callback then return 2 end
  return 1
end
"""
)

#: KEYS and ARGV: those of ``finish``.
FINISH = (
    FINISH_FUNCTION
    + """
return finish(KEYS, ARGV)
"""
)

#: Several jobs' ``finish`` in one step (the lifecycle's batch of results). KEYS: deadlines,
#: finished, outbox, then the job hashes. ARGV: updated, retention ms, channel, slot key prefix,
#: delivery key prefix, pending callback status JSON, then per job its id, status, output JSON,
#: message, "1" when the caller wants the ended record, and its timings JSON ("" = none).
#: Returns each job's ``finish`` answer, in order; an ended job whose record was wanted is
#: answered with its hash instead of 1 or 2.
FINISH_MANY = (
    FINISH_FUNCTION
    + """
local ended = {}
for i = 4, #KEYS do
  local j = 7 + (i - 4) * 6
  local K = {KEYS[i], KEYS[1], KEYS[2], KEYS[3]}
  local A = {ARGV[j], ARGV[j + 1], ARGV[j + 2], ARGV[1], ARGV[2], ARGV[3], ARGV[j + 3],
    ARGV[4], ARGV[5], ARGV[6], ARGV[j + 5]}
  ended[i - 3] = finish(K, A)
  if ended[i - 3] ~= 0 and ARGV[j + 4] == '1' then ended[i - 3] = redis.call('HGETALL', K[1]) end
end
return ended
"""
)

#: KEYS: outbox. ARGV: now, lease end, limit, token, delivery key prefix. Leases the due
#: deliveries (their score becomes the lease's end) and returns {id, url JSON, created,
#: attempts} of each; drops ids whose delivery hash expired with its job.
CLAIM_DELIVERIES = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local claimed = {}
for _, id in ipairs(ids) do
  local key = ARGV[5] .. id
  local found = redis.call('HMGET', key, 'url', 'created', 'attempts')
  if not found[1] then
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    redis.call('HSET', key, 'token', ARGV[4])
    table.insert(claimed, {id, found[1], found[2], found[3]})
  end
end
return claimed
"""

#: KEYS: outbox, delivery hash, job hash. ARGV: id, token, next due ("" = done), attempts,
#: callback status JSON. Returns 0 when the token is not the delivery's (the lease was lost).
SETTLE_DELIVERY = """
if redis.call('HGET', KEYS[2], 'token') ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  redis.call('HSET', KEYS[2], 'attempts', ARGV[4])
  redis.call('HDEL', KEYS[2], 'token')
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[3], 'custom_status', ARGV[5])
end
return 1
"""

#: KEYS: job hash, deadlines, finished. ARGV: id, slot key prefix. Returns 1 when there was a
#: record.
DELETE = (
    _RELEASE
    + """
release(KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return redis.call('DEL', KEYS[1])
"""
)

#: KEYS: finished. ARGV: updated before (exclusive), batch size, job key prefix, slot key prefix.
#: Returns {records deleted, ids looked at}; the caller repeats while a full batch came back.
PURGE = (
    _RELEASE
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
local deleted = 0
for _, id in ipairs(ids) do
  release(ARGV[3] .. id, id, ARGV[4])
  deleted = deleted + redis.call('DEL', ARGV[3] .. id)
  redis.call('ZREM', KEYS[1], id)
end
return {deleted, #ids}
"""
)

SCRIPTS = {
    "create": CREATE,
    "keyed": KEYED,
    "mark_enqueued": MARK_ENQUEUED,
    "mark_running": MARK_RUNNING,
    "start_jobs": START_JOBS,
    "finish": FINISH,
    "finish_many": FINISH_MANY,
    "claim_deliveries": CLAIM_DELIVERIES,
    "settle_delivery": SETTLE_DELIVERY,
    "delete": DELETE,
    "purge": PURGE,
}
