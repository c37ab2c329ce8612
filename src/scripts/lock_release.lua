#!lua flags=allow-oom
-- lock_release: gives a permit up if the token holds it, and wakes the waiters
-- first in line for the permits now free.
--
-- KEYS[1..4]  the holders, state, queue and waiters' places (see lock_acquire)
-- ARGV[1]  the holder's token
-- ARGV[2]  the lock's release channel
-- ARGV[3]  how long the state is kept when it has no expiry, in milliseconds
-- Returns  1 when released, or when this token was the last one released (the
--          same Release sent again after a lost connection); 0 when nobody
--          holds the lock (the lease expired); -1 when another token holds it
--
-- Atomicity: the ownership check and the removal are one script, so a lease
-- that expires and is granted to another caller in between cannot be removed by
-- mistake. The PUBLISH names the tickets of the waiters to wake (space-
-- separated), after the removal, so a waiter woken by it finds the permit free;
-- the others sleep on. Flagged allow-oom: releasing frees memory, so it must
-- work when Redis is full.
local clock = redis.call('TIME')
local now = math.floor((tonumber(clock[1]) * 1000000 + tonumber(clock[2])) / 1000)
local token = ARGV[1]
local ends = redis.call('ZSCORE', KEYS[1], token)
if ends and tonumber(ends) > now then
  redis.call('ZREM', KEYS[1], token)
  local fields = {'f:' .. token, 'o:' .. token, 'i:' .. token}
  local rid = redis.call('HGET', KEYS[2], 'i:' .. token)
  if rid and rid ~= '' then
    fields[4] = 'g:' .. rid
  end
  redis.call('HDEL', KEYS[2], unpack(fields))
  redis.call('HSET', KEYS[2], 'r', token)
  if redis.call('PTTL', KEYS[2]) < 0 then
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
  end
  -- Nobody waits in the common case; only a queue needs the count of free permits.
  -- The wake-up below is lock_leave.lua's too: change both together.
  if redis.call('EXISTS', KEYS[3]) == 1 then
    local permits = tonumber(redis.call('HGET', KEYS[2], 'p') or '1')
    local free = permits - redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
    if free > 0 then
      local next = redis.call('ZRANGE', KEYS[3], 0, free - 1)
      if #next > 0 then
        redis.call('PUBLISH', ARGV[2], table.concat(next, ' '))
      end
    end
  end
  return 1
end
if redis.call('HGET', KEYS[2], 'r') == token then
  return 1
end
if redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') > 0 then
  return -1
end
return 0
