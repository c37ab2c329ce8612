#!lua
-- lock_acquire: grants a lock if it is free, with a new fencing token.
--
-- KEYS[1]  the lock's record, a hash {token, owner, fence, rid} with the lease as expiry
-- KEYS[2]  the lock's fencing counter, a hash {f = the last fencing token granted,
--          r = the last token released}
-- ARGV[1]  the new grant's token (random, fresh for each Acquire call)
-- ARGV[2]  the lease in milliseconds (a positive integer)
-- ARGV[3]  the owner text
-- ARGV[4]  the request id ('' for none)
-- ARGV[5]  how long the counter outlives the lease, in milliseconds
-- Returns  {1, token, fencing token, lease left in ms} when granted, or when this
--          grant already holds it: the same call sent again after a lost
--          connection (same token), or a retry with the same request id from the
--          same owner (the earlier grant, unchanged);
--          {0, '', 0, the holder's lease left in ms} when someone else holds it.
--
-- Fencing tokens never go backwards: the next one is the larger of the counter
-- plus one and the Redis clock in microseconds. With the counter, they increase
-- by one per grant; without it (expired, or lost with Redis's data) they start
-- from the clock, which is past every token granted before as long as the Redis
-- clock does not step back further than the counter is kept, since grants
-- happen far less often than once a microsecond.
-- Atomicity: the check for a holder and the grant happen in one script, so two
-- callers can never both see the lock free.
if redis.call('EXISTS', KEYS[1]) == 1 then
  local holder = redis.call('HMGET', KEYS[1], 'token', 'fence', 'rid', 'owner')
  local left = redis.call('PTTL', KEYS[1])
  local same_call = holder[1] == ARGV[1]
  local same_request = ARGV[4] ~= '' and holder[3] == ARGV[4] and holder[4] == ARGV[3]
  if same_call or same_request then
    -- A write of what is already there, so that a WAIT after this reply (see
    -- --lock-min-replicas) covers the grant this call or request made before,
    -- perhaps on a connection that was lost since.
    redis.call('HSET', KEYS[1], 'token', holder[1])
    return {1, holder[1], tonumber(holder[2]), left}
  end
  return {0, '', 0, left}
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local last = tonumber(redis.call('HGET', KEYS[2], 'f') or '0')
local fence = math.max(last + 1, now)
-- %.0f keeps all digits; Lua's default number format would round to 14.
local fence_text = string.format('%.0f', fence)
redis.call('HSET', KEYS[2], 'f', fence_text)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) + tonumber(ARGV[5]))
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'owner', ARGV[3], 'fence', fence_text, 'rid', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, ARGV[1], fence, tonumber(ARGV[2])}
