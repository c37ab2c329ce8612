#!lua
-- fenced_write: a cache write applied only while no grant of a lock is newer
-- than the caller's fencing token. The check and the write are this one
-- script, so no grant can come between them: a holder whose lease ran out and
-- whose lock went to another is refused, whatever its clock believes.
--
-- KEYS[1]          the lock's state (see lock_grant): f = the last fencing
--                  token granted, p = the permits its holders were granted with
-- KEYS[2..n+1]     the entries' keys
-- KEYS[n+2..2n+1]  their fill records (see cache_get_or_lease)
-- ARGV[1]          the caller's fencing token
-- ARGV[2]          the write: 'set', 'set_many', 'increment' or 'expire'
-- set:        ARGV[3] value, ARGV[4] ttl ms, ARGV[5] stale ttl ms (0: none),
--             ARGV[6] '' always, 'NX' if absent, 'XX' if present
-- set_many:   ARGV[3..] a value and a ttl in ms for each entry, in order
-- increment:  ARGV[3] delta, ARGV[4] ttl ms when the counter is created
-- expire:     ARGV[3] ttl ms
-- Returns     {-1, f, 0}       refused: a newer grant holds fencing token f
--             {-2, p, 0}       refused: the lock is a semaphore of p permits
--             {1, result, ended}  applied; result: set 1 stored / 0 not (the
--             condition), set_many the count, increment the new value as
--             text (a Lua number loses precision above 2^53), expire 1 found /
--             0 missing; ended: how many fill leases the write ended (their
--             waiters are told by the caller)
--
-- A missing state (the lock never granted, or forgotten long after its last
-- lease ended) refuses nothing: no newer grant is known. A grant after a loss
-- of Redis's data takes a fencing token above every earlier one (lock_grant
-- draws it from the clock), so an old holder stays refused.

local state = redis.call('HMGET', KEYS[1], 'f', 'p')
if state[2] and tonumber(state[2]) > 1 then return {-2, state[2], 0} end
if state[1] and tonumber(state[1]) > tonumber(ARGV[1]) then return {-1, state[1], 0} end

local n = (#KEYS - 1) / 2
local write = ARGV[2]

-- A write ends the entries' fill leases, as an unfenced one does.
local function end_fills()
  local records = {}
  for i = n + 2, 2 * n + 1 do records[#records + 1] = KEYS[i] end
  return redis.call('UNLINK', unpack(records))
end

if write == 'set' then
  local exists = redis.call('EXISTS', KEYS[2]) == 1
  if (ARGV[6] == 'NX' and exists) or (ARGV[6] == 'XX' and not exists) then
    return {1, 0, 0}
  end
  local ttl, stale = tonumber(ARGV[4]), tonumber(ARGV[5])
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ttl)
  local ended = end_fills()
  if stale > 0 then
    redis.call('HSET', KEYS[3], 'ttl', ttl, 'stale', ARGV[3])
    redis.call('PEXPIRE', KEYS[3], ttl + stale)
  end
  return {1, 1, ended}
elseif write == 'set_many' then
  for i = 1, n do
    redis.call('SET', KEYS[i + 1], ARGV[1 + 2 * i], 'PX', ARGV[2 + 2 * i])
  end
  return {1, n, end_fills()}
elseif write == 'increment' then
  redis.call('INCRBY', KEYS[2], ARGV[3])
  if redis.call('PTTL', KEYS[2]) == -1 then
    redis.call('PEXPIRE', KEYS[2], ARGV[4])
  end
  local ended = end_fills()
  return {1, redis.call('GET', KEYS[2]), ended}
elseif write == 'expire' then
  return {1, redis.call('PEXPIRE', KEYS[2], ARGV[3]), 0}
end
return redis.error_reply('fenced_write: unknown write ' .. tostring(write))
