"""The Lua scripts of the commit log; each runs atomically on the Redis node that holds the user.

Every script gets the user's keys as ``KEYS`` in the order of
``keys.UserKeys.script_keys`` (meta, events, owner, live, book, fills, snap), all in the user's
slot: Redis Cluster refuses a script any other key, and any other shard
channel to SPUBLISH on. The ``#!lua`` line (Redis 7.0 or newer) makes Redis
refuse a script before it runs when memory is full, not at its first write.

Numbers pass through Lua as doubles and print exactly up to 10^14, far above
any seq, token or millisecond time these scripts see.
"""

from __future__ import annotations

# Entries keep the stream's invariant: ids ``<seq>-0``, contiguous from the oldest kept to
# ``meta.seq``, fields ``t`` then ``d``; times never decrease along the stream.
_OPEN_EPOCH = """
local function open_epoch(state, new_epoch)
  if state[1] then return state[1], tonumber(state[2]) end
  -- A first use, or meta lost while the stream stayed: another incarnation's entries must not mix in.
  redis.call('DEL', KEYS[2], KEYS[7])
  redis.call('HSET', KEYS[1], 'epoch', new_epoch, 'seq', 0)
  return new_epoch, 0
end
"""

# KEYS: meta, events, owner, live, book, fills, snap.
# ARGV: token, commit id, new epoch, retain events, retain ms, max events, fill ids kept, the book
# ('' to keep the stored one), F, then F pairs (the fill's place among the events, from 1; its id),
# then the events (seq 0).
# Reply: {'ok', epoch, first seq, last seq, replayed (0|1)} or {'fenced', the owner's token or ''}.
COMMIT = (
    "#!lua\n"
    + _OPEN_EPOCH
    + r"""
local meta, events, owner, live = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local book, fills, snap = KEYS[5], KEYS[6], KEYS[7]
local state = redis.call('HMGET', meta, 'epoch', 'seq', 'ms', 'cid', 'cfirst')

-- The last commit sent again (a client's retry after a lost reply, or the caller's after
-- `unavailable`): its result, not a second copy of its events.
if state[1] and state[4] == ARGV[2] then
  return {'ok', state[1], tonumber(state[5]), tonumber(state[2]), 1}
end

local held = redis.call('GET', owner)
if held ~= ARGV[1] then
  return {'fenced', held or ''}
end

-- Check every event before the first write: a script that fails half-way keeps its writes.
local fill_count = tonumber(ARGV[9])
local base = 9 + 2 * fill_count
local n = #ARGV - base
if n < 1 then
  return redis.error_reply('ERR afl commit: no events')
end
local heads, tails = {}, {}
for i = 1, n do
  local raw = ARGV[base + i]
  local at = string.find(raw, ',"seq":0,', 1, true)
  if not at or not string.find(string.sub(raw, 1, at - 1), '^{"type":"[%a_]+"$') then
    return redis.error_reply('ERR afl commit: event ' .. i .. ' is not encoded with seq 0 by protocol.encode')
  end
  heads[i] = string.sub(raw, 1, at - 1)
  tails[i] = string.sub(raw, at + 9)
end

local epoch, seq = open_epoch(state, ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
-- Redis's clock can step back (NTP, a failover); the stream's times must not, or trimming misjudges.
local last_ms = tonumber(state[3])
if last_ms and now < last_ms then now = last_ms end

local stamped = {}
for i = 1, n do
  local s = seq + i
  local event = heads[i] .. ',"seq":' .. s .. ',' .. tails[i]
  redis.call('XADD', events, s .. '-0', 't', now, 'd', event)
  stamped[i] = event
end
local first, last = seq + 1, seq + n
redis.call('HSET', meta, 'epoch', epoch, 'seq', last, 'ms', now, 'cid', ARGV[2], 'cfirst', first)
if ARGV[8] ~= '' then
  redis.call('SET', book, ARGV[8])
end
if fill_count > 0 then
  for i = 1, fill_count do
    redis.call('ZADD', fills, seq + tonumber(ARGV[8 + 2 * i]), ARGV[9 + 2 * i])
  end
  local kept_fills = tonumber(ARGV[7])
  if redis.call('ZCARD', fills) > kept_fills then
    redis.call('ZREMRANGEBYRANK', fills, 0, -(kept_fills + 1))
  end
end

-- Retention: the last `retain` events and those of the last `retain_ms` stay, whichever are more;
-- never more than `max_events`. Finding the boundary costs a few reads, so it waits until a
-- sixteenth of either bound's worth is past it.
local retain, retain_ms, max_events = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local function time_at(s)
  return tonumber(redis.call('XRANGE', events, s .. '-0', s .. '-0')[1][2][2])
end
local oldest = redis.call('XRANGE', events, '-', '+', 'COUNT', 1)[1]
local kept = tonumber(string.match(oldest[1], '^%d+'))
local keep_from = kept
local count_from = last - retain + 1
local cutoff = now - retain_ms
if kept < count_from - math.floor(retain / 16)
    and tonumber(oldest[2][2]) <= cutoff - math.floor(retain_ms / 16) then
  if time_at(count_from - 1) <= cutoff then
    keep_from = count_from
  else
    local lo, hi = kept, count_from - 1  -- time_at(lo) <= cutoff < time_at(hi)
    while hi - lo > 1 do
      local mid = math.floor((lo + hi) / 2)
      if time_at(mid) <= cutoff then lo = mid else hi = mid end
    end
    keep_from = hi
  end
end
-- What a node primes from is the snapshot and every event after it: those stay.
local snapped = redis.call('HMGET', snap, 'epoch', 'seq')
if snapped[1] == epoch then
  keep_from = math.min(keep_from, tonumber(snapped[2]) + 1)
else
  keep_from = kept
end
keep_from = math.max(keep_from, last - max_events + 1)
if keep_from > kept then
  redis.call('XTRIM', events, 'MINID', keep_from .. '-0')
end

redis.call('SPUBLISH', live, '{"epoch":"' .. epoch .. '","first_seq":' .. first .. ',"last_seq":' .. last
  .. ',"events":[' .. table.concat(stamped, ',') .. ']}')
return {'ok', epoch, first, last, 0}
"""
)

# KEYS: meta, events, owner, live, book, fills, snap. ARGV: token, new epoch.
# Reply: {'ok', epoch, seq} or {'fenced', the owner's token}.
CLAIM = (
    "#!lua\n"
    + _OPEN_EPOCH
    + r"""
local held = tonumber(redis.call('GET', KEYS[3]) or '0')
if held > tonumber(ARGV[1]) then
  return {'fenced', tostring(held)}
end
redis.call('SET', KEYS[3], ARGV[1])
local epoch, seq = open_epoch(redis.call('HMGET', KEYS[1], 'epoch', 'seq'), ARGV[2])
return {'ok', epoch, seq}
"""
)

# KEYS: meta, events, owner, live, book, fills, snap. ARGV: new epoch. Reply: {epoch, seq}.
HEAD = (
    "#!lua\n"
    + _OPEN_EPOCH
    + r"""
local epoch, seq = open_epoch(redis.call('HMGET', KEYS[1], 'epoch', 'seq'), ARGV[1])
return {epoch, seq}
"""
)

# KEYS: meta, events. ARGV: the resume epoch, the resume seq, at most how many (0: all).
# Reply: {'ok', epoch, seq, event...} or {'none'} | {'epoch'|'ahead'|'gone', epoch, seq}.
READ = r"""#!lua flags=no-writes
local state = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
if not state[1] then
  return {'none'}
end
local epoch, seq, after, limit = state[1], tonumber(state[2]), tonumber(ARGV[2]), tonumber(ARGV[3])
if epoch ~= ARGV[1] then
  return {'epoch', epoch, seq}
end
if after > seq then
  return {'ahead', epoch, seq}
end
local reply = {'ok', epoch, seq}
if after == seq then
  return reply
end
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
if not oldest or tonumber(string.match(oldest[1], '^%d+')) > after + 1 then
  return {'gone', epoch, seq}
end
local entries
if limit > 0 then
  entries = redis.call('XRANGE', KEYS[2], (after + 1) .. '-0', '+', 'COUNT', limit)
else
  entries = redis.call('XRANGE', KEYS[2], (after + 1) .. '-0', '+')
end
for i, entry in ipairs(entries) do
  reply[3 + i] = entry[2][4]
end
return reply
"""

# KEYS: meta, events, owner, live, book, fills, snap. ARGV: token, epoch, seq, the snapshot.
# Reply: {'ok'} | {'fenced', the owner's token or ''} | {'stale'} (another epoch, or an older seq
# than the stored snapshot's: nothing written).
CHECKPOINT = r"""#!lua
local held = redis.call('GET', KEYS[3])
if held ~= ARGV[1] then
  return {'fenced', held or ''}
end
local state = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
local at = tonumber(ARGV[3])
if state[1] ~= ARGV[2] or at > tonumber(state[2]) then
  return {'stale'}
end
local snapped = redis.call('HMGET', KEYS[7], 'epoch', 'seq')
if snapped[1] == ARGV[2] and tonumber(snapped[2]) >= at then
  return {'stale'}
end
redis.call('HSET', KEYS[7], 'epoch', ARGV[2], 'seq', at, 'd', ARGV[4])
return {'ok'}
"""

# KEYS: meta, events, owner, live, book, fills, snap.
# Reply: {'none'} or {'ok', epoch, seq, snapshot seq (0: none), snapshot ('' for none), first kept
# seq, event...}: every kept event, so a node's replay buffer starts where Redis's does.
PRIME = r"""#!lua flags=no-writes
local state = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
if not state[1] then
  return {'none'}
end
local snapped = redis.call('HMGET', KEYS[7], 'epoch', 'seq', 'd')
local snap_seq, snap = 0, ''
if snapped[1] == state[1] then
  snap_seq, snap = tonumber(snapped[2]), snapped[3]
end
local reply = {'ok', state[1], tonumber(state[2]), snap_seq, snap, tonumber(state[2]) + 1}
local entries = redis.call('XRANGE', KEYS[2], '-', '+')
if entries[1] then
  reply[6] = tonumber(string.match(entries[1][1], '^%d+'))
end
for i, entry in ipairs(entries) do
  reply[6 + i] = entry[2][4]
end
return reply
"""

# KEYS: the marks hash, the ticks shard channel. ARGV: the message to publish, then symbol, mark pairs.
# Reply: how many nodes the message reached.
TICK = r"""#!lua
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return redis.call('SPUBLISH', KEYS[2], ARGV[1])
"""
