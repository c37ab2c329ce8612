#!lua flags=allow-oom
-- session_touch: slides a session's idle expiry, never past its absolute expiry.
--
-- KEYS[1]  the session's hash (see session_create)
-- Returns  the hash after the touch, as HGETALL does; empty when unknown or expired
--
-- The user index is scored by absolute expiry, which a touch never changes, so
-- the index needs no update here. Flagged allow-oom: a touch rewrites one field
-- with a number of the same width, so it keeps the size, and a user must not be
-- logged out because Redis is full.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local timing = redis.call('HMGET', KEYS[1], 'idle', 'absexp')
local expires = math.min(now + tonumber(timing[1]), tonumber(timing[2]))
redis.call('HSET', KEYS[1], 'accessed', now)
redis.call('PEXPIREAT', KEYS[1], expires)
return redis.call('HGETALL', KEYS[1])
