#!lua flags=allow-oom
-- lock_extend: gives a held lock a new lease if the token still holds it.
--
-- KEYS[1]  the lock's record (see lock_acquire)
-- KEYS[2]  the lock's fencing counter (see lock_acquire)
-- ARGV[1]  the holder's token
-- ARGV[2]  the new lease in milliseconds, counted from now
-- ARGV[3]  how long the counter outlives the lease, in milliseconds
-- Returns  the grant's fencing token when extended; 0 when nobody holds the
--          lock (the lease expired or was released); -1 when another token holds it
--
-- Atomicity: the ownership check and the PEXPIRE are one script, so a lease that
-- changed hands cannot be extended for the new holder by the old one. Repeating
-- it gives the same answer and nearly the same lease. The counter is kept at
-- least as long as the lease. Flagged allow-oom: it changes no size, and a
-- holder must be able to keep its lease when Redis is full.
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) + tonumber(ARGV[3]))
  return tonumber(redis.call('HGET', KEYS[1], 'fence'))
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
return 0
