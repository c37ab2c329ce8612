#!lua flags=allow-oom
-- session_end: ends sessions and removes them from their user's index.
--
-- KEYS[1]     the user's index (see session_create)
-- KEYS[2..n]  the session hashes to delete
-- ARGV[1..]   their members in the index, in the same order
-- Returns     how many of the sessions still existed
--
-- The caller sends a few hundred sessions per call at most; ZREM goes in chunks
-- all the same, since unpack() of a few thousand values fails. UNLINK frees large
-- sessions off Redis's main thread. Flagged allow-oom: it only frees memory.
local ended = 0
for i = 2, #KEYS do
  ended = ended + redis.call('UNLINK', KEYS[i])
end
for first = 1, #ARGV, 500 do
  redis.call('ZREM', KEYS[1], unpack(ARGV, first, math.min(first + 499, #ARGV)))
end
return ended
