#!lua flags=allow-oom
-- session_index: a user's session members, after pruning expired entries.
--
-- KEYS[1]  the user's index (see session_create)
-- ARGV     none
-- Returns  the members whose absolute expiry has not passed. Some may belong to
--          sessions that expired idle or were deleted: the caller checks them.
--
-- Flagged allow-oom: it only removes entries, and listing must work when Redis is full.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
