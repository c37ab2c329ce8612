#!lua flags=allow-oom
-- epoch: checks which copy of the data this Redis holds, so that a Redis that
-- lost its data (a restart without persistence, a failover to an empty replica,
-- a FLUSHALL) is noticed, and lock grants pause until every lease that may still
-- be held elsewhere has run out.
--
-- KEYS[1]  the epoch marker: a hash {id, created (ms), paused_until (ms)}
-- ARGV[1]  the id this instance saw last ('' when it has seen none)
-- ARGV[2]  a fresh random id, used when the marker is missing
-- ARGV[3]  the pause after a loss in milliseconds (the longest lease)
-- ARGV[4]  the marker's time to live in milliseconds
-- Returns  {id, paused_until (ms, 0 for none), now (ms), lost (0 or 1)}, times by
--          the Redis clock
--
-- A missing marker, or one whose id differs from the one this instance saw, means
-- the data it saw is gone. The pause is counted from the marker's creation, which
-- came after the loss, so every instance that notices the loss extends the same
-- pause; an instance that never saw the old data learns of it from paused_until.
-- Flagged allow-oom: under memory pressure the marker is still read, and a loss
-- still detected, even when the marker cannot be written again.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local marker = redis.call('HMGET', KEYS[1], 'id', 'created', 'paused_until')
local id, created, paused = marker[1], tonumber(marker[2]), tonumber(marker[3]) or 0
local lost = 0
if not id then
  id, created = ARGV[2], now
  if ARGV[1] ~= '' then
    lost, paused = 1, now + tonumber(ARGV[3])
  end
  redis.call('HSET', KEYS[1], 'id', id, 'created', created, 'paused_until', paused)
elseif ARGV[1] ~= '' and id ~= ARGV[1] then
  lost = 1
  local until_ms = (created or now) + tonumber(ARGV[3])
  if until_ms > paused then
    paused = until_ms
    redis.call('HSET', KEYS[1], 'paused_until', paused)
  end
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) / 2 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return {id, paused, now, lost}
