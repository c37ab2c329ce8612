#!lua
-- cache_increment: adds to an integer counter, giving it a time to live when it
-- has none (that is, when this call created it), and ends the key's fill lease as
-- every write does (a filler holding an older lease must not overwrite it).
--
-- KEYS[1]  the counter's key
-- KEYS[2]  the key's fill record (see cache_get_or_lease)
-- ARGV[1]  the signed delta (a 64-bit integer, as text)
-- ARGV[2]  the time to live in milliseconds for a new counter
-- Returns  {the counter's new value as text, 1 if it ended a fill lease else 0};
--          an error reply (from INCRBY), with nothing changed, when the value is
--          not an integer or the result would overflow 64 bits
--
-- The value is returned as Redis stores it (text), not as INCRBY's reply: Lua
-- numbers are doubles, which cannot hold every 64-bit integer above 2^53.
-- INCRBY and the PEXPIRE run in one script, so no reader ever sees a new
-- counter without its time to live, and a crash between them cannot leave one.
redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local ended = redis.call('UNLINK', KEYS[2])
return {redis.call('GET', KEYS[1]), ended}
