#!lua flags=allow-oom
-- lock_release: gives a lock up if the token still holds it, and wakes waiters.
--
-- KEYS[1]  the lock's record (see lock_acquire)
-- KEYS[2]  the lock's fencing counter (see lock_acquire)
-- ARGV[1]  the holder's token
-- ARGV[2]  the lock's release channel
-- ARGV[3]  how long the counter is kept when it has no expiry, in milliseconds
-- Returns  1 when released, or when this token was the last one released (the
--          same Release sent again after a lost connection); 0 when nobody
--          holds the lock (the lease expired); -1 when another token holds it
--
-- Atomicity: the ownership check and the delete are one script, so a lease that
-- expires and is granted to another caller in between cannot be deleted by
-- mistake. The PUBLISH happens after the delete, so a waiter woken by it finds
-- the lock free. Flagged allow-oom: releasing frees memory, so it must work when
-- Redis is full.
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'r', ARGV[1])
  if redis.call('PTTL', KEYS[2]) < 0 then
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
  end
  redis.call('PUBLISH', ARGV[2], '')
  return 1
end
if redis.call('HGET', KEYS[2], 'r') == ARGV[1] then
  return 1
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
return 0
