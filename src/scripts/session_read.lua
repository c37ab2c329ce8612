#!lua flags=no-writes
-- session_read: a session's hash, without touching it.
--
-- KEYS[1]  the session's hash (see session_create)
-- Returns  the hash as HGETALL does; empty when the session is unknown or expired
--
-- Flagged no-writes so that reads keep working when Redis is out of memory.
return redis.call('HGETALL', KEYS[1])
