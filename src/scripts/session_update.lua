#!lua
-- session_update: sets and removes attributes, optionally only at a given version.
--
-- KEYS[1]        the session's hash (see session_create)
-- KEYS[2]        with a fence: the lock's state (see lock_grant and fenced_write)
-- ARGV[1]        the expected version, or '' to update whatever the version
-- ARGV[2]        the most attributes a session may hold
-- ARGV[3]        n, the number of attributes to set
-- ARGV[4..3+2n]  their names and values, alternating
-- ARGV[4+2n..]   names of attributes to remove, then with a fence the
--                caller's fencing token (the last argument)
-- Returns        {'ok', <hash as HGETALL>...} after the update;
--                {'missing'} when the session is unknown or expired;
--                {'stale', version} when the version is not the expected one;
--                {'full', count} when the update would exceed the attribute limit;
--                {'fenced', f} when a grant of the fence's lock newer than the
--                token holds fencing token f; {'permits', p} when the lock is a
--                semaphore (fenced_write refuses the same)
--
-- Atomicity: the version check, the limit check and the changes are one script,
-- so of concurrent updates expecting the same version exactly one applies.
-- The fence first: a holder whose lease is over hears so, whatever the session.
local last_name = #ARGV
if #KEYS == 2 then
  local state = redis.call('HMGET', KEYS[2], 'f', 'p')
  if state[2] and tonumber(state[2]) > 1 then return {'permits', state[2]} end
  if state[1] and tonumber(state[1]) > tonumber(ARGV[#ARGV]) then return {'fenced', state[1]} end
  last_name = #ARGV - 1
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
local version = redis.call('HGET', KEYS[1], 'ver')
if ARGV[1] ~= '' and version ~= ARGV[1] then
  return {'stale', version}
end

local names = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 2) == 'a:' then
    names[field] = true
  end
end
local to_set = tonumber(ARGV[3])
local set_fields, remove_fields = {}, {}
for i = 4, 3 + 2 * to_set, 2 do
  local field = 'a:' .. ARGV[i]
  names[field] = true
  set_fields[#set_fields + 1] = field
  set_fields[#set_fields + 1] = ARGV[i + 1]
end
for i = 4 + 2 * to_set, last_name do
  local field = 'a:' .. ARGV[i]
  names[field] = nil
  remove_fields[#remove_fields + 1] = field
end
local count = 0
for _ in pairs(names) do
  count = count + 1
end
if count > tonumber(ARGV[2]) then
  return {'full', count}
end

-- unpack() of more than a few thousand values fails: change in even-sized chunks.
for first = 1, #remove_fields, 1000 do
  redis.call('HDEL', KEYS[1], unpack(remove_fields, first, math.min(first + 999, #remove_fields)))
end
for first = 1, #set_fields, 1000 do
  redis.call('HSET', KEYS[1], unpack(set_fields, first, math.min(first + 999, #set_fields)))
end
redis.call('HINCRBY', KEYS[1], 'ver', 1)
local reply = {'ok'}
for _, value in ipairs(redis.call('HGETALL', KEYS[1])) do
  reply[#reply + 1] = value
end
return reply
