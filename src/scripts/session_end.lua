#!lua
-- session_end: ends sessions and removes them from their user's index.
--
-- KEYS[1]     the user's index (see session_create)
-- KEYS[2..n]  the session hashes to delete
-- ARGV[1..]   their members in the index, in the same order
-- Returns     how many of the sessions still existed
local ended = 0
for i = 2, #KEYS do
  ended = ended + redis.call('DEL', KEYS[i])
end
if #ARGV > 0 then
  redis.call('ZREM', KEYS[1], unpack(ARGV))
end
return ended
