#!lua flags=allow-oom
-- fenced_remove: a delete or take applied only while no grant of a lock is
-- newer than the caller's fencing token, checked in the same atomic step (see
-- fenced_write, whose check this is). Flagged allow-oom: it only frees memory,
-- so it works on a full Redis as unfenced deletes do.
--
-- KEYS[1]        the lock's state (see lock_grant)
-- KEYS[2..n+1]   the keys to remove: cache entries, or one session
-- KEYS[n+2..]    the cache entries' fill records (none for a session)
-- ARGV[1]        the caller's fencing token
-- ARGV[2]        'delete' (every key) or 'take' (the value of the one key)
-- ARGV[3]        n
-- Returns        {-1, f, 0} or {-2, p, 0} when refused, as fenced_write;
--                delete: {1, how many of the keys existed, ended fill leases}
--                take:   {1, the value or false, ended fill leases}

local state = redis.call('HMGET', KEYS[1], 'f', 'p')
if state[2] and tonumber(state[2]) > 1 then return {-2, state[2], 0} end
if state[1] and tonumber(state[1]) > tonumber(ARGV[1]) then return {-1, state[1], 0} end

local n = tonumber(ARGV[3])
local ended = 0
if #KEYS > n + 1 then
  local records = {}
  for i = n + 2, #KEYS do records[#records + 1] = KEYS[i] end
  ended = redis.call('UNLINK', unpack(records))
end
if ARGV[2] == 'take' then
  return {1, redis.call('GETDEL', KEYS[2]), ended}
end
local keys = {}
for i = 2, n + 1 do keys[#keys + 1] = KEYS[i] end
return {1, redis.call('UNLINK', unpack(keys)), ended}
