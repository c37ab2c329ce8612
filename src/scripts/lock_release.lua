#!lua flags=allow-oom
-- lock_release: gives a permit up if the token holds it, takes a waiter's
-- ticket out of the queue, and wakes the waiters first in line for the permits
-- now free. A Release gives its token; an Acquire or Hold that ends without
-- handing its grant to its caller (its wait ran out, it failed, its caller went
-- away) gives its ticket and its token, so that neither its place in the line
-- nor a grant its last attempt may have made outlives it.
--
-- KEYS[1..4]  the holders, state, queue and waiters' places (see lock_grant)
-- ARGV[1]  the holder's token
-- ARGV[2]  the waiter's ticket ('' when none)
-- ARGV[3]  the lock's release channel
-- ARGV[4]  how long the state is kept when it has no expiry, in milliseconds
-- Returns  1 when released, or when this token was the last one released (the
--          same Release sent again after a lost connection); 0 when nobody
--          holds the lock (the lease expired); -1 when another token holds it
--
-- Atomicity: the ownership check and the removal are one script, so a lease
-- that expires and is granted to another caller in between cannot be removed by
-- mistake. The PUBLISH names the tickets of the waiters to wake (space-
-- separated), after the removal, so a waiter woken by it finds the permit free;
-- the others sleep on. Flagged allow-oom: it only frees memory.
local clock = redis.call('TIME')
local now = math.floor((tonumber(clock[1]) * 1000000 + tonumber(clock[2])) / 1000)
local token, ticket = ARGV[1], ARGV[2]
local freed = false
if ticket ~= '' then
  redis.call('ZREM', KEYS[4], ticket)
  freed = redis.call('ZREM', KEYS[3], ticket) == 1
end
local answer
local ends = redis.call('ZSCORE', KEYS[1], token)
if ends and tonumber(ends) > now then
  redis.call('ZREM', KEYS[1], token)
  local fields = {'f:' .. token, 'o:' .. token, 'i:' .. token}
  local request_key = redis.call('HGET', KEYS[2], 'i:' .. token)
  if request_key and request_key ~= '' then
    fields[4] = 'g:' .. request_key
  end
  redis.call('HDEL', KEYS[2], unpack(fields))
  redis.call('HSET', KEYS[2], 'r', token)
  if redis.call('PTTL', KEYS[2]) < 0 then
    redis.call('PEXPIRE', KEYS[2], ARGV[4])
  end
  freed, answer = true, 1
elseif redis.call('HGET', KEYS[2], 'r') == token then
  answer = 1
elseif redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') > 0 then
  answer = -1
else
  answer = 0
end
-- Nobody waits in the common case; only a queue needs the count of free permits.
if freed and redis.call('EXISTS', KEYS[3]) == 1 then
  local permits = tonumber(redis.call('HGET', KEYS[2], 'p') or '1')
  local free = permits - redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
  if free > 0 then
    local next = redis.call('ZRANGE', KEYS[3], 0, free - 1)
    if #next > 0 then
      redis.call('PUBLISH', ARGV[3], table.concat(next, ' '))
    end
  end
end
return answer
