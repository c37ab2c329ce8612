#!lua
-- lock_fence_out: ends a term for fenced writes. Raises the lock's last
-- fencing token to at least ARGV[1] (an election's term plus one), so that a
-- write fenced by the term is refused (see fenced_write) even when no later
-- grant came: a resigned leader cannot write as one. Grants go on as before:
-- the next takes a fencing token above this one (see lock_grant).
--
-- KEYS[1]  the lock's state (see lock_grant)
-- ARGV[1]  the lowest last fencing token the lock may now show
-- ARGV[2]  how long the state is kept when it has no expiry, in milliseconds
-- Returns  the lock's last fencing token now

local last = tonumber(redis.call('HGET', KEYS[1], 'f') or '0')
if last < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'f', ARGV[1])
  last = tonumber(ARGV[1])
end
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return string.format('%.0f', last)
