#!lua
-- cache_fill: a Set that needs more than SET: one that fills a lease, keeps a
-- stale copy, or has a condition. Every waiter of a lease it ends is woken.
--
-- KEYS[1]  the entry's key
-- KEYS[2]  the entry's fill record (see cache_get_or_lease)
-- ARGV[1]  the value
-- ARGV[2]  its ttl in milliseconds
-- ARGV[3]  how long a stale copy is kept after the ttl, in milliseconds (0: none)
-- ARGV[4]  the fill lease's token ('' for none)
-- ARGV[5]  the condition: '' always, 'NX' only if absent, 'XX' only if present
-- ARGV[6]  the key's fill channel
-- Returns  1 stored; 0 not stored (the condition did not hold); -1 not stored
--          (the lease is no longer this token's: it ran out and may have
--          passed on, or a write or Delete of the key ended it)
--
-- Atomicity: the lease check and the write are one script, so a fill whose
-- lease ended cannot overwrite what was written since.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local record = redis.call('HMGET', KEYS[2], 'lease', 'until')
local leased = record[1] and tonumber(record[2]) > now
if ARGV[4] ~= '' then
  if not leased or record[1] ~= ARGV[4] then
    return -1
  end
elseif ARGV[5] == 'NX' and redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
elseif ARGV[5] == 'XX' and redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end

local ttl, stale = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('DEL', KEYS[2])
-- The ttl is remembered for refresh ahead when the entry is read through leases.
if stale > 0 then
  redis.call('HSET', KEYS[2], 'ttl', ttl, 'stale', ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ttl + stale)
elseif ARGV[4] ~= '' then
  redis.call('HSET', KEYS[2], 'ttl', ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
if leased then
  redis.call('PUBLISH', ARGV[6], '')
end
return 1
