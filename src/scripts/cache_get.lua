#!lua flags=no-writes
-- cache_get: one cache entry and its remaining time to live, in one round trip.
--
-- KEYS[1]  the entry's key
-- ARGV     none
-- Returns  {value, pttl}: value is nil when the key is missing; pttl is the
--          remaining time to live in milliseconds (-2 missing, -1 no expiry).
--
-- Flagged no-writes so that reads keep working when Redis is out of memory.
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
