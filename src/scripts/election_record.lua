#!lua
-- election_record: records the start of an election's term (for Leader and
-- Observe; the leadership itself is the lock's), unless a later term's record
-- is there already: a delayed write of an ended term never hides the current
-- one's start.
--
-- KEYS[1]  the election's record (a hash: term, candidate, since)
-- ARGV[1]  the term
-- ARGV[2]  its candidate
-- ARGV[3]  when it began, in milliseconds since the Unix epoch (the service's clock)
-- ARGV[4]  how long the record is kept, in milliseconds
-- Returns  1 when recorded, 0 when a later term's record was kept

local recorded = tonumber(redis.call('HGET', KEYS[1], 'term') or '0')
if recorded > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'term', ARGV[1], 'candidate', ARGV[2], 'since', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
