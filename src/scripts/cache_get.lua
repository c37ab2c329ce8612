#!lua flags=no-writes
-- cache_get: cache entries and their remaining times to live, in one round trip.
--
-- KEYS     the entries' keys: one Get's, or those of Gets that arrived together
--          (group commit; all in one slot)
-- ARGV     none
-- Returns  one {value, pttl} per key: value is nil when the key is missing; pttl
--          is the remaining time to live in milliseconds (-2 missing, -1 no
--          expiry); {nil, -3} when the key holds something other than a string
--          (written by something other than cachelock), so that one such key
--          fails its own Get and not the others of its batch.
--
-- Flagged no-writes so that reads keep working when Redis is out of memory.

-- One key, the common case: no protected call, no loop (a foreign value then
-- fails the call, which is that one Get's).
if #KEYS == 1 then
  return {{redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}}
end

local answers = {}
for i = 1, #KEYS do
  local value = redis.pcall('GET', KEYS[i])
  if type(value) == 'table' and value.err then
    answers[i] = {false, -3}
  else
    answers[i] = {value, redis.call('PTTL', KEYS[i])}
  end
end
return answers
