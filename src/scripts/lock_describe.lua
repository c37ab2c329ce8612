#!lua flags=no-writes
-- lock_describe: who holds a lock, without its token.
--
-- KEYS[1]  the lock's record (see lock_acquire)
-- KEYS[2]  the lock's fencing counter (see lock_acquire)
-- Returns  {held (0 or 1), owner, fencing token, lease left in ms}; when free,
--          the last fencing token granted (0 if none is remembered) and -2.
local holder = redis.call('HMGET', KEYS[1], 'owner', 'fence')
if holder[2] then
  return {1, holder[1] or '', tonumber(holder[2]), redis.call('PTTL', KEYS[1])}
end
return {0, '', tonumber(redis.call('HGET', KEYS[2], 'f') or '0'), -2}
