#!lua
-- session_create: stores a new session and adds it to its user's index.
--
-- KEYS[1]   the session's hash (see below)
-- KEYS[2]   the user's index: a sorted set of session members, scored by absolute expiry
-- ARGV[1]   the session's member in the index (the random part of its id)
-- ARGV[2]   the user id
-- ARGV[3]   the idle timeout in milliseconds
-- ARGV[4]   the absolute timeout in milliseconds (>= the idle timeout)
-- ARGV[5]   device label, ARGV[6] IP, ARGV[7] user agent
-- ARGV[8]   the session's handle (random, not a secret: listings show it)
-- ARGV[9..] attribute names and values, alternating
-- Returns   {sessions in the user's index, the session hash as HGETALL would};
--           {-1, {}} if the id belongs to another user's session
--
-- The hash holds uid, created, accessed, idle, absexp (milliseconds since the
-- epoch, by the Redis clock), ver, dev, ip, ua, hd (the handle), and one
-- 'a:<name>' per attribute.
-- It expires at the earlier of accessed + idle and absexp. The index expires with
-- the last of its sessions' absolute expiries, and entries past theirs are pruned
-- here; ListUserSessions also drops entries whose session is gone.
--
-- The id is 128 fresh random bits chosen for this call, so a session that
-- already exists under it for the same user is this call's own, sent again after
-- a lost connection: it is returned as it is, and nothing is written twice.
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'uid') ~= ARGV[2] then
    return {-1, {}}
  end
  return {redis.call('ZCARD', KEYS[2]), redis.call('HGETALL', KEYS[1])}
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local idle = tonumber(ARGV[3])
local absolute = now + tonumber(ARGV[4])
local fields = {'uid', ARGV[2], 'created', now, 'accessed', now, 'idle', idle, 'absexp', absolute,
  'ver', 1, 'dev', ARGV[5], 'ip', ARGV[6], 'ua', ARGV[7], 'hd', ARGV[8]}
for i = 9, #ARGV, 2 do
  fields[#fields + 1] = 'a:' .. ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
-- unpack() of more than a few thousand values fails: write in even-sized chunks.
for first = 1, #fields, 1000 do
  redis.call('HSET', KEYS[1], unpack(fields, first, math.min(first + 999, #fields)))
end
redis.call('PEXPIREAT', KEYS[1], math.min(now + idle, absolute))

redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], absolute, ARGV[1])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[2], last[2])
return {redis.call('ZCARD', KEYS[2]), redis.call('HGETALL', KEYS[1])}
