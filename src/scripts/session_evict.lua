#!lua flags=allow-oom
-- session_evict: ends a user's least recently used sessions beyond the limit.
--
-- KEYS[1]     the user's index (see session_create)
-- KEYS[2..n]  the hashes of the sessions listed in the index, in ARGV order
-- ARGV[1]     the most sessions a user may have
-- ARGV[2]     the member of the session just created, which is never ended
-- ARGV[3..]   the members listed in the index, one per session hash
-- Returns     {members ended}
--
-- Index entries whose session is gone (expired idle, deleted) are dropped and do
-- not count. Of the live sessions, those accessed longest ago are ended until at
-- most ARGV[1] remain. Flagged allow-oom: it only frees memory.
local max = tonumber(ARGV[1])
local live = {}
for i = 2, #KEYS do
  local member = ARGV[i + 1]
  local accessed = redis.call('HGET', KEYS[i], 'accessed')
  if accessed then
    live[#live + 1] = {member = member, key = KEYS[i], accessed = tonumber(accessed)}
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
table.sort(live, function(a, b)
  if a.member == ARGV[2] then return false end
  if b.member == ARGV[2] then return true end
  return a.accessed < b.accessed
end)
local ended = {}
local excess = #live - max
for i = 1, excess do
  if live[i].member ~= ARGV[2] then
    redis.call('UNLINK', live[i].key)
    redis.call('ZREM', KEYS[1], live[i].member)
    ended[#ended + 1] = live[i].member
  end
end
return ended
