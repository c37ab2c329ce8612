#!lua
-- lock_acquire: grants one of a lock's permits when one is free and nobody who
-- queued earlier is waiting for it, with a new fencing token; otherwise keeps a
-- waiting caller's place in the lock's queue.
--
-- A lock is a semaphore of one permit; every grant of a name, whatever its
-- permits, draws its fencing token from one counter.
--
-- KEYS[1]  the holders: a sorted set of grant tokens scored by when each lease
--          ends (milliseconds, Redis clock)
-- KEYS[2]  the lock's state, a hash: f = the last fencing token granted,
--          r = the last token released, q = the last queue number given,
--          p = the permits of the last grant, and per holder
--          f:<token>, o:<token>, i:<token> (fencing token, owner, request id)
--          and g:<request id> = token
-- KEYS[3]  the queue: a sorted set of waiters' tickets scored by arrival
-- KEYS[4]  the waiters' places: the same tickets scored by when the place
--          lapses unless the waiter renews it (it attempts again)
-- ARGV[1]  the new grant's token (random, fresh for each Acquire call)
-- ARGV[2]  the lease in milliseconds (a positive integer)
-- ARGV[3]  the owner text
-- ARGV[4]  the request id ('' for none)
-- ARGV[5]  how long the state outlives the lease, in milliseconds
-- ARGV[6]  the permits (1 for a lock)
-- ARGV[7]  the waiter's ticket ('' when the caller does not wait)
-- ARGV[8]  how long a waiter's place lasts without renewal, in milliseconds
-- Returns  {1, token, fencing token, lease left in ms, 0} when granted, or when
--          this grant already holds a permit: the same call sent again after a
--          lost connection (same token), or a retry with the same request id
--          from the same owner (the earlier grant, unchanged);
--          {0, '', 0, ms until the first holder's lease ends (0: none holds
--          it, earlier waiters go first), waiters ahead} otherwise.
--
-- Fencing tokens never go backwards: the next one is the larger of the counter
-- plus one and the Redis clock in microseconds. With the counter, they increase
-- by one per grant; without it (expired, or lost with Redis's data) they start
-- from the clock, which is past every token granted before as long as the Redis
-- clock does not step back further than the counter is kept, since grants
-- happen far less often than once a microsecond.
-- Atomicity: the count of holders, the queue check and the grant happen in one
-- script, so no more callers than permits can ever hold the lock, and none
-- passes a waiter that queued before it.
local clock = redis.call('TIME')
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local now = math.floor(now_us / 1000)
local token, lease, owner, rid = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local permits, ticket, place_life = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])

-- Leases that ran out, and waiters whose instance went away without leaving.
for _, expired in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  local fields = {'f:' .. expired, 'o:' .. expired, 'i:' .. expired}
  local expired_rid = redis.call('HGET', KEYS[2], 'i:' .. expired)
  if expired_rid and expired_rid ~= '' then
    fields[4] = 'g:' .. expired_rid
  end
  redis.call('HDEL', KEYS[2], unpack(fields))
  redis.call('ZREM', KEYS[1], expired)
end
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)) do
  redis.call('ZREM', KEYS[3], gone)
  redis.call('ZREM', KEYS[4], gone)
end

-- This grant already: the same call again, or a retry of the same request.
local held_by = token
local ends = redis.call('ZSCORE', KEYS[1], token)
if not ends and rid ~= '' then
  local earlier = redis.call('HGET', KEYS[2], 'g:' .. rid)
  if earlier and redis.call('HGET', KEYS[2], 'o:' .. earlier) == owner then
    held_by = earlier
    ends = redis.call('ZSCORE', KEYS[1], earlier)
  end
end
if ends then
  local fence = redis.call('HGET', KEYS[2], 'f:' .. held_by)
  -- A write of what is already there, so that a WAIT after this reply (see
  -- --lock-min-replicas) covers the grant this call or request made before,
  -- perhaps on a connection that was lost since.
  redis.call('HSET', KEYS[2], 'f:' .. held_by, fence)
  return {1, held_by, tonumber(fence), tonumber(ends) - now, 0}
end

local holders = redis.call('ZCARD', KEYS[1])
local place = ticket ~= '' and redis.call('ZSCORE', KEYS[3], ticket)
local ahead
if place then
  ahead = redis.call('ZCOUNT', KEYS[3], '-inf', '(' .. place)
else
  ahead = redis.call('ZCARD', KEYS[3])
end

if holders + ahead < permits then
  if place then
    redis.call('ZREM', KEYS[3], ticket)
    redis.call('ZREM', KEYS[4], ticket)
  end
  local last = tonumber(redis.call('HGET', KEYS[2], 'f') or '0')
  local fence = math.max(last + 1, now_us)
  -- %.0f keeps all digits; Lua's default number format would round to 14.
  local fence_text = string.format('%.0f', fence)
  local fields = {'f', fence_text, 'p', permits,
    'f:' .. token, fence_text, 'o:' .. token, owner, 'i:' .. token, rid}
  if rid ~= '' then
    fields[11], fields[12] = 'g:' .. rid, token
  end
  redis.call('HSET', KEYS[2], unpack(fields))
  redis.call('ZADD', KEYS[1], now + lease, token)
  -- The holders last as long as the longest lease; alone, that is this one.
  local last_end = now + lease
  if holders > 0 then
    last_end = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
  end
  redis.call('PEXPIRE', KEYS[1], last_end - now)
  if redis.call('PTTL', KEYS[2]) < lease + tonumber(ARGV[5]) then
    redis.call('PEXPIRE', KEYS[2], lease + tonumber(ARGV[5]))
  end
  return {1, token, fence, lease, 0}
end

local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
local first_left = first and (tonumber(first) - now) or 0
if ticket ~= '' then
  if not place then
    local number = redis.call('HINCRBY', KEYS[2], 'q', 1)
    redis.call('ZADD', KEYS[3], number, ticket)
  end
  redis.call('ZADD', KEYS[4], now + place_life, ticket)
  redis.call('PEXPIRE', KEYS[3], place_life)
  redis.call('PEXPIRE', KEYS[4], place_life)
  -- The queue numbers must outlive the queue, or a newcomer could go first.
  if redis.call('PTTL', KEYS[2]) < place_life then
    redis.call('PEXPIRE', KEYS[2], place_life)
  end
end
return {0, '', 0, first_left, ahead}
