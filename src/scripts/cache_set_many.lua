#!lua
-- cache_set_many: stores several entries, all or none.
--
-- KEYS[i]       the i-th entry's key
-- ARGV[2i - 1]  the i-th entry's value
-- ARGV[2i]      the i-th entry's time to live in milliseconds (a positive integer)
-- Returns       the number of entries written
--
-- Atomicity: a script runs without interleaving; as a script that may write (a
-- shebang without the no-writes flag) Redis refuses it whole when out of memory,
-- before its first command; and a SET with a string value and a positive PX cannot
-- fail otherwise. So either the script is refused whole or every SET lands.
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[2 * i - 1], 'PX', ARGV[2 * i])
end
return #KEYS
