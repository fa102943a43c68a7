"""The Lua scripts behind :mod:`nearline.brokers.redis_streams`, one per broker operation.

Each script runs atomically on the server, so a check and the change it guards (is this id
queued? is this lease still held?) can never be split by another client, and each operation is
one round trip. Times come from the server's clock (``TIME``), so leases and TTLs do not depend
on the clocks of the hosts that run workers and API replicas.

A queue's keys share the prefix ``<queue>``: lane streams ``<queue>:<lane>``, the dead-letter
stream ``<queue>:dead``, ``<queue>:msg:<message id>`` (the id's entry, for idempotent sends),
``<queue>:blob:<message id>`` (claim-checked bodies) and ``<queue>:expiry`` (a sorted set of
messages with a TTL, scored by expiry in ms). Scripts derive the per-message keys from the
prefix, so they need a single Redis primary (not Redis Cluster).

A lease is the pending-list entry's idle clock (see the broker's docstring): leasing for L ms
sets the idle time to ``horizon - L``, so the entry becomes claimable by ``XAUTOCLAIM
min-idle-time=horizon`` exactly L ms later; an idle time at or past the horizon is an expired
(or given back) lease.
"""

from __future__ import annotations

from typing import Any

PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The n items of t from index from: a script's KEYS or ARGV for one of its functions.
local function slice(t, from, n)
  local out = {}
  for i = from, from + n - 1 do out[#out + 1] = t[i] end
  return out
end

local function fields_of(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end

-- Wake one receiver blocked on the queue's bell (BLPOP, see the broker's docstring): at most
-- one token waits, so a burst of sends wakes as many receivers as are blocked, one each.
local function ring(bell)
  if redis.call('LLEN', bell) == 0 then redis.call('RPUSH', bell, '1') end
end

-- Remove one message for good: its entry, its pending slot, its id key, TTL slot and blob.
local function drop(prefix, group, lane, entry, mid)
  local stream = prefix .. ':' .. lane
  redis.call('XACK', stream, group, entry)
  redis.call('XDEL', stream, entry)
  redis.call('DEL', prefix .. ':msg:' .. mid, prefix .. ':blob:' .. mid)
  redis.call('ZREM', prefix .. ':expiry', lane .. '|' .. entry .. '|' .. mid)
end
"""

#: ``send(K, A, quiet)``: K: lane stream, id key, expiry zset, blob key, the queue's bell.
#: A: message id, lane, body, "1" to store the body as a blob, TTL ms or "", blob TTL ms.
#: ``quiet``: leave the bell alone (the message waits for a receiver's next look: see
#: :mod:`nearline.store.redis_settle`). Returns 1 when enqueued, 0 when a message with that id
#: is still queued or leased. A function, so that the status store's submit script
#: (:mod:`nearline.store.redis_submit`) sends with it too.
SEND_FUNCTION = """
local function send(K, A, quiet)
  if redis.call('EXISTS', K[2]) == 1 then return 0 end
  local fields = {'id', A[1]}
  local exp = nil
  if A[5] ~= '' then
    exp = string.format('%.0f', now_ms() + tonumber(A[5]))
    table.insert(fields, 'exp'); table.insert(fields, exp)
  end
  if A[4] == '1' then
    redis.call('SET', K[4], A[3], 'PX', A[6])
    table.insert(fields, 'blob'); table.insert(fields, '1')
  else
    table.insert(fields, 'body'); table.insert(fields, A[3])
  end
  local entry = redis.call('XADD', K[1], '*', unpack(fields))
  redis.call('SET', K[2], entry)
  if exp then redis.call('ZADD', K[3], exp, A[2] .. '|' .. entry .. '|' .. A[1]) end
  if not quiet then ring(K[5]) end
  return 1
end
"""

#: KEYS and ARGV: those of ``send``.
SEND = (
    SEND_FUNCTION
    + """
return send(KEYS, ARGV)
"""
)

#: ``receive(KEYS, ARGV)``: KEYS: the lane streams, highest lane first. ARGV: group, consumer,
#: max messages, lease ms, horizon ms, queue prefix, then per lane its name and XAUTOCLAIM
#: cursor (ARGV past those are left to the caller: the status store's receive that also
#: starts the jobs, :mod:`nearline.store.redis_receive`, leases with this function too).
#: Returns {cursors, deliveries, length}; a delivery is {lane index, entry id, delivery count,
#: message id, body, "1" if the body is a blob}. The length (entries waiting or leased) whenever
#: fewer than max messages were delivered (every new entry was taken): the caller blocks on the
#: bell, now or on its next receive, with no empty look first. When max messages were delivered
#: more may wait: the bell is rung for another receiver.
RECEIVE_FUNCTION = """
local function receive(KEYS, ARGV)
  local group, consumer, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
  local horizon, prefix = tonumber(ARGV[5]), ARGV[6]
  local idle = tostring(horizon - tonumber(ARGV[4]))
  local now = now_ms()
  local out, cursors = {}, {}

  -- Lease what was read: drop expired entries, set the rest's idle clock to the lease.
  local function take(i, lane, entries, counts)
    -- XCLAIM key group consumer 0 <ids...> IDLE <ms> JUSTID (unpack must come last in Lua)
    local ids = {KEYS[i], group, consumer, 0}
    for j, e in ipairs(entries) do
      local f = fields_of(e[2])
      local mid = f['id'] or e[1]
      if f['exp'] and tonumber(f['exp']) <= now then
        drop(prefix, group, lane, e[1], mid)
      else
        table.insert(ids, e[1])
        table.insert(out, {i, e[1], counts[j], mid, f['body'] or '', f['blob'] or '0'})
      end
    end
    if #ids > 4 then
      table.insert(ids, 'IDLE'); table.insert(ids, idle); table.insert(ids, 'JUSTID')
      redis.call('XCLAIM', unpack(ids))
    end
  end

  for i = 1, #KEYS do
    local lane, cursor = ARGV[5 + 2 * i], ARGV[6 + 2 * i]
    -- Expired leases (dead consumers, given-back messages) first: they are the oldest.
    if #out < n then
      local r = redis.call('XAUTOCLAIM', KEYS[i], group, consumer, horizon, cursor, 'COUNT', n - #out)
      cursor = r[1]
      local counts = {}
      for j, e in ipairs(r[2]) do
        counts[j] = tonumber(redis.call('XPENDING', KEYS[i], group, e[1], e[1], 1)[1][4])
      end
      take(i, lane, r[2], counts)
    end
    cursors[i] = cursor
    while #out < n do
      local want = n - #out
      local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', want, 'STREAMS', KEYS[i], '>')
      if not r then break end
      local entries, counts = r[1][2], {}
      for j = 1, #entries do counts[j] = 1 end
      take(i, lane, entries, counts)
      if #entries < want then break end
    end
  end

  local length = 0
  if #out < n then
    for i = 1, #KEYS do length = length + redis.call('XLEN', KEYS[i]) end
  else
    ring(prefix .. ':bell')
  end
  return {cursors, out, length}
end
"""

#: KEYS and ARGV: those of ``receive``.
RECEIVE = (
    RECEIVE_FUNCTION
    + """
return receive(KEYS, ARGV)
"""
)

#: ``settle(K, A)``: K: lane stream, dead-letter stream. A: group, op (complete|abandon|dead),
#: entry id, delivery count, consumer, horizon ms, queue prefix, lane, message id, reason (dead),
#: dead-letter stream's approximate cap.
#: Returns 1 when done, 0 when the lease is no longer held (nothing changed).
SETTLE_FUNCTION = """
local function settle(K, A)
  local group, op, entry, count = A[1], A[2], A[3], A[4]
  local horizon = tonumber(A[6])
  local p = redis.call('XPENDING', K[1], group, entry, entry, 1)[1]
  if not p or p[2] ~= A[5] or tostring(p[4]) ~= count or tonumber(p[3]) >= horizon then
    return 0
  end
  if op == 'abandon' then
    redis.call('XCLAIM', K[1], group, A[5], 0, entry, 'IDLE', tostring(horizon), 'JUSTID')
    ring(A[7] .. ':bell')  -- claimable at once: wake a receiver for it
    return 1
  end
  local prefix, lane, mid = A[7], A[8], A[9]
  if op == 'dead' then
    local row = redis.call('XRANGE', K[1], entry, entry)[1]
    local f = row and fields_of(row[2]) or {}
    local body = f['body']
    if f['blob'] == '1' then body = redis.call('GET', prefix .. ':blob:' .. mid) end
    redis.call('XADD', K[2], 'MAXLEN', '~', A[11], '*', 'id', mid, 'reason', A[10],
      'count', count, 'lane', lane, 'body', body or '')
  end
  drop(prefix, group, lane, entry, mid)
  return 1
end
"""

#: KEYS and ARGV: those of ``settle``.
SETTLE = (
    SETTLE_FUNCTION
    + """
return settle(KEYS, ARGV)
"""
)

#: Per message ``send``'s KEYS (5) and ARGV (6), then per delivery ``settle``'s KEYS (2) and
#: ARGV (11, op ``complete``); ARGV[1] is the number of messages. Every send runs before any
#: settle (publish, then settle: at-least-once even if the script stops part way). Returns each
#: delivery's ``settle`` answer, in order. A worker's results and completions in one round trip.
SEND_THEN_COMPLETE = (
    SEND_FUNCTION
    + SETTLE_FUNCTION
    + """
local m = tonumber(ARGV[1])
for i = 0, m - 1 do send(slice(KEYS, 1 + 5 * i, 5), slice(ARGV, 2 + 6 * i, 6)) end
local done = {}
for i = 0, (#KEYS - 5 * m) / 2 - 1 do
  done[i + 1] = settle(slice(KEYS, 1 + 5 * m + 2 * i, 2), slice(ARGV, 2 + 6 * m + 11 * i, 11))
end
return done
"""
)

#: ``depth(K, A)``: K: the lane streams, the expiry zset. A: group, horizon ms, queue prefix,
#: scan limit. Drops messages whose TTL has passed and that no live lease holds; returns the
#: number of entries left (waiting or leased). A function, for the submit script too.
DEPTH_FUNCTION = """
local function depth(K, A)
  local group, horizon, prefix = A[1], tonumber(A[2]), A[3]
  local zset = K[#K]
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', zset, '-inf', now_ms(), 'LIMIT', 0, A[4])) do
    local lane, entry, mid = string.match(member, '^([^|]*)|([^|]*)|(.*)$')
    local p = redis.call('XPENDING', prefix .. ':' .. lane, group, entry, entry, 1)[1]
    if not p or tonumber(p[3]) >= horizon then
      drop(prefix, group, lane, entry, mid)
    end
  end
  local length = 0
  for i = 1, #K - 1 do length = length + redis.call('XLEN', K[i]) end
  return length
end
"""

#: KEYS and ARGV: those of ``depth``.
DEPTH = (
    DEPTH_FUNCTION
    + """
return depth(KEYS, ARGV)
"""
)

#: KEYS: the lane streams. ARGV: group, this consumer, idle ms after which an empty consumer
#: of another process is forgotten. Deletes consumers with nothing pending (this one, and dead
#: ones), so restarts do not pile names up in XINFO CONSUMERS. Returns how many.
FORGET_CONSUMERS = """
local removed = 0
for i = 1, #KEYS do
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[i], ARGV[1])) do
    local f = fields_of(c)
    if f['pending'] == 0 and (f['name'] == ARGV[2] or f['idle'] > tonumber(ARGV[3])) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[i], ARGV[1], f['name'])
      removed = removed + 1
    end
  end
end
return removed
"""

SCRIPTS = {
    "send": PRELUDE + SEND,
    "receive": PRELUDE + RECEIVE,
    "settle": PRELUDE + SETTLE,
    "send_then_complete": PRELUDE + SEND_THEN_COMPLETE,
    "depth": PRELUDE + DEPTH,
    "forget_consumers": PRELUDE + FORGET_CONSUMERS,
}


def send_then_complete_args(
    sends: list[tuple[list[str], list[Any]]], settles: list[tuple[list[str], list[Any]]]
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``send_then_complete`` from each message's ``send`` KEYS and ARGV and
    each delivery's ``settle`` KEYS and ARGV."""
    keys = [k for part in (*sends, *settles) for k in part[0]]
    args: list[Any] = [len(sends), *(a for part in (*sends, *settles) for a in part[1])]
    return keys, args
