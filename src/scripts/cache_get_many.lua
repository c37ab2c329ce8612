#!lua flags=no-writes
-- cache_get_many: several cache entries and their remaining times to live.
--
-- KEYS[i]  the i-th entry's key
-- ARGV     none
-- Returns  one {value, pttl} pair per key, in KEYS order, as in cache_get.
--
-- Flagged no-writes so that reads keep working when Redis is out of memory.
local entries = {}
for i, key in ipairs(KEYS) do
  entries[i] = {redis.call('GET', key), redis.call('PTTL', key)}
end
return entries
