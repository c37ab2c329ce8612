#!lua
-- session_rotate: moves a session to a new id; the old id stops working at once.
--
-- KEYS[1]  the session's hash under its old id
-- KEYS[2]  the session's hash under its new id (same user, so the same slot)
-- KEYS[3]  the user's index (see session_create)
-- ARGV[1]  the old member, ARGV[2] the new member, ARGV[3] the user id
-- Returns  the hash under the new id, as HGETALL does; empty when the old id is
--          unknown, expired or not the user's; {'taken'} when the new id exists
--
-- Atomicity: RENAME carries data and expiry over in one step, and the index moves
-- with it in the same script, so no reader sees both ids or neither. The new id
-- is 128 fresh random bits chosen for this call, so when the old id is gone and
-- the new one holds the user's session, this is the same Rotate sent again after
-- a lost connection: it returns the session under the new id.
if redis.call('HGET', KEYS[1], 'uid') ~= ARGV[3] then
  if redis.call('HGET', KEYS[2], 'uid') == ARGV[3] then
    return redis.call('HGETALL', KEYS[2])
  end
  return {}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'taken'}
end
redis.call('RENAME', KEYS[1], KEYS[2])
local absolute = redis.call('HGET', KEYS[2], 'absexp')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[3], absolute, ARGV[2])
local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[3], last[2])
return redis.call('HGETALL', KEYS[2])
