#!lua
-- lock_extend: gives a held lock a new lease if the token still holds it.
--
-- KEYS[1]  the lock's record (see lock_acquire)
-- ARGV[1]  the holder's token
-- ARGV[2]  the new lease in milliseconds, counted from now
-- Returns  the grant's fencing token when extended; 0 when the token does not
--          hold the lock
--
-- Atomicity: the ownership check and the PEXPIRE are one script, so a lease that
-- changed hands cannot be extended for the new holder by the old one.
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('HGET', KEYS[1], 'fence'))
end
return 0
