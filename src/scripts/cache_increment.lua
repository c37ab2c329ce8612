#!lua
-- cache_increment: adds to an integer counter, giving it a time to live when it
-- has none (that is, when this call created it).
--
-- KEYS[1]  the counter's key
-- ARGV[1]  the signed delta (a 64-bit integer)
-- ARGV[2]  the time to live in milliseconds for a new counter
-- Returns  the counter's new value; an error reply (from INCRBY) when the value
--          is not an integer or the result would overflow 64 bits
--
-- INCRBY and the PEXPIRE run in one script, so no reader ever sees a new
-- counter without its time to live, and a crash between them cannot leave one.
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
