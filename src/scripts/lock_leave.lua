#!lua flags=allow-oom
-- lock_leave: takes a waiter out of a lock's queue (its wait ended without the
-- lock), and wakes the waiters now first in line if a permit is free.
--
-- KEYS[1..4]  the holders, state, queue and waiters' places (see lock_acquire)
-- ARGV[1]  the waiter's ticket
-- ARGV[2]  the lock's release channel
-- Returns  1 when the ticket was queued, 0 when it was not (granted, lapsed)
--
-- Flagged allow-oom: it only frees memory.
local clock = redis.call('TIME')
local now = math.floor((tonumber(clock[1]) * 1000000 + tonumber(clock[2])) / 1000)
redis.call('ZREM', KEYS[4], ARGV[1])
if redis.call('ZREM', KEYS[3], ARGV[1]) == 0 then
  return 0
end
-- Wakes the waiters now first in line, as lock_release.lua does: change both together.
local permits = tonumber(redis.call('HGET', KEYS[2], 'p') or '1')
local free = permits - redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
if free > 0 then
  local next = redis.call('ZRANGE', KEYS[3], 0, free - 1)
  if #next > 0 then
    redis.call('PUBLISH', ARGV[2], table.concat(next, ' '))
  end
end
return 1
