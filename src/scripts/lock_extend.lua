#!lua flags=allow-oom
-- lock_extend: gives a held permit a new lease if the token still holds it.
--
-- KEYS[1..2]  the holders and state (see lock_acquire)
-- ARGV[1]  the holder's token
-- ARGV[2]  the new lease in milliseconds, counted from now
-- ARGV[3]  how long the state outlives the lease, in milliseconds
-- Returns  the grant's fencing token when extended; 0 when nobody holds the
--          lock (the lease expired or was released); -1 when another token holds it
--
-- Atomicity: the ownership check and the new lease are one script, so a lease
-- that changed hands cannot be extended for the new holder by the old one.
-- Repeating it gives the same answer and nearly the same lease. The state is
-- kept at least as long as the lease. Flagged allow-oom: it changes no size,
-- and a holder must be able to keep its lease when Redis is full.
local clock = redis.call('TIME')
local now = math.floor((tonumber(clock[1]) * 1000000 + tonumber(clock[2])) / 1000)
local token, lease = ARGV[1], tonumber(ARGV[2])
local ends = redis.call('ZSCORE', KEYS[1], token)
if ends and tonumber(ends) > now then
  redis.call('ZADD', KEYS[1], 'XX', now + lease, token)
  local last_end = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]
  redis.call('PEXPIRE', KEYS[1], tonumber(last_end) - now)
  if redis.call('PTTL', KEYS[2]) < lease + tonumber(ARGV[3]) then
    redis.call('PEXPIRE', KEYS[2], lease + tonumber(ARGV[3]))
  end
  return tonumber(redis.call('HGET', KEYS[2], 'f:' .. token))
end
if redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') > 0 then
  return -1
end
return 0
