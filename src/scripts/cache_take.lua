#!lua flags=allow-oom
-- cache_take: reads and deletes an entry at once (one-time codes, reset tokens),
-- ending its fill lease as every write does.
--
-- KEYS[1]  the entry's key
-- KEYS[2]  the entry's fill record (see cache_get_or_lease)
-- Returns  {the value, or false when there was none; 1 if it ended a fill lease else 0}
--
-- Flagged allow-oom: it only frees memory, so a full Redis still serves it (a
-- MULTI of GETDEL and UNLINK would be refused whole, as Redis refuses every
-- queued command of a transaction when it is over maxmemory).
local value = redis.call('GETDEL', KEYS[1])
local ended = redis.call('UNLINK', KEYS[2])
return {value, ended}
