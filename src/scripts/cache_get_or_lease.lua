#!lua flags=allow-oom
-- cache_get_or_lease: a cache entry, or the lease to fill it (the lease model
-- of memcache at Facebook): of the callers that find a key missing, exactly one
-- at a time holds the lease; the others wait for its fill or read the stale copy.
--
-- KEYS[1]  the entry's key (a string, as every cache write stores it)
-- KEYS[2]  the entry's fill record, a hash: lease = the fill lease's token,
--          until = when it ends (ms, Redis clock), ttl = the entry's ttl when
--          last filled (ms), stale = a copy of the value kept past its ttl
--          for stale_ttl; the hash lives until the later of the two ends
-- ARGV[1]  the token of a lease this call may be given
-- ARGV[2]  that lease's ttl in milliseconds
-- ARGV[3]  refresh ahead, in millionths: when the entry has less than this
--          fraction of its ttl left, one caller gets a lease to refresh it
--          (0: never)
-- Returns  {outcome, value or nil, value's ttl left in ms (-2 none), lease
--          token or '', lease left in ms (0 none)}:
--          outcome 1 fresh value (with a token: refresh it), 2 stale value
--          (another caller fills it), 3 lease granted (the stale value with it
--          if one is kept), 4 another caller fills it and nothing is kept.
--
-- Flagged allow-oom: reads must work when Redis is full. A lease whose record
-- is new would grow it, so a full Redis refuses it (OOM, as it refuses any
-- write): the caller reads its source without a lease; a lease on a record that
-- exists changes no size.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local token, lease = ARGV[1], tonumber(ARGV[2])
local record = redis.call('HMGET', KEYS[2], 'lease', 'until', 'ttl', 'stale')
local lease_left = record[1] and (tonumber(record[2]) - now) or 0
if lease_left < 0 then
  lease_left = 0
end

-- This call's own lease: the same call sent again after a lost connection.
local mine = record[1] == token and lease_left > 0

local function full()
  local memory = redis.call('INFO', 'memory')
  local function field(name)
    return tonumber(string.match(memory, '\n' .. name .. ':(%d+)')) or 0
  end
  local maxmemory = field('maxmemory')
  return maxmemory > 0 and field('used_memory') - field('mem_not_counted_for_evict') > maxmemory
end

-- Gives this call the lease; false when its record is new and Redis is full.
local function grant()
  if redis.call('EXISTS', KEYS[2]) == 0 and full() then
    return false
  end
  redis.call('HSET', KEYS[2], 'lease', token, 'until', now + lease)
  if redis.call('PTTL', KEYS[2]) < lease then
    redis.call('PEXPIRE', KEYS[2], lease)
  end
  return true
end

local value = redis.call('GET', KEYS[1])
if value then
  local left = redis.call('PTTL', KEYS[1])
  local refresh = tonumber(ARGV[3])
  if mine then
    return {1, value, left, token, lease_left}
  end
  if refresh > 0 and lease_left == 0 and record[3] and left >= 0
      and left * 1000000 < tonumber(record[3]) * refresh and grant() then
    return {1, value, left, token, lease}
  end
  return {1, value, left, '', 0}
end

local stale_left = record[4] and redis.call('PTTL', KEYS[2]) or -2
if mine then
  return {3, record[4] or false, stale_left, token, lease_left}
end
if lease_left > 0 then
  if record[4] then
    return {2, record[4], stale_left, '', lease_left}
  end
  return {4, false, -2, '', lease_left}
end
if not grant() then
  return redis.error_reply("OOM command not allowed when used memory > 'maxmemory'.")
end
return {3, record[4] or false, stale_left, token, lease}
