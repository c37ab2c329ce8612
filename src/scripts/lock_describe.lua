#!lua flags=no-writes
-- lock_describe: who holds a lock and how many wait, without any token.
--
-- KEYS[1..4]  the holders, state, queue and waiters' places (see lock_grant)
-- Returns  {holders, owner, fencing token, lease left in ms, waiters, permits}:
--          owner, fencing token and lease are the latest grant's among the
--          live holders; when none holds it, '' , the last fencing token
--          granted (0 if none is remembered) and -2. Permits are the last
--          grant's (1 if none is remembered).
local clock = redis.call('TIME')
local now = math.floor((tonumber(clock[1]) * 1000000 + tonumber(clock[2])) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
local waiters = redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf')
local permits = tonumber(redis.call('HGET', KEYS[2], 'p') or '1')
local owner, fence, left = '', 0, -2
for i = 1, #live, 2 do
  local this = tonumber(redis.call('HGET', KEYS[2], 'f:' .. live[i]) or '0')
  if this >= fence then
    fence = this
    owner = redis.call('HGET', KEYS[2], 'o:' .. live[i]) or ''
    left = tonumber(live[i + 1]) - now
  end
end
if #live == 0 then
  fence = tonumber(redis.call('HGET', KEYS[2], 'f') or '0')
end
return {#live / 2, owner, fence, left, waiters, permits}
