#!lua
-- lock_release: gives a lock up if the token still holds it, and wakes waiters.
--
-- KEYS[1]  the lock's record (see lock_acquire)
-- ARGV[1]  the holder's token
-- ARGV[2]  the lock's release channel
-- Returns  1 when released; 0 when the token does not hold the lock (expired,
--          released already, or granted to someone else since)
--
-- Atomicity: the ownership check and the delete are one script, so a lease that
-- expires and is granted to another caller in between cannot be deleted by
-- mistake. The PUBLISH happens after the delete, so a waiter woken by it finds
-- the lock free.
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], '')
  return 1
end
return 0
