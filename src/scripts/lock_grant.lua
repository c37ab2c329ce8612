#!lua flags=allow-oom
-- lock_grant: the one place where a lock's permit is granted or a lease
-- extended. Everything a grant depends on is checked here, in the same atomic
-- step that writes it; what the service holds in memory may only make it
-- stricter (ARGV[10]), never let a grant through:
--   1. a memory policy that cannot evict the lease (unless the operator allows it);
--   2. the data epoch of the node holding the lock (see "Epoch" below);
--   3. the permits the name is held with;
--   4. the request id with its client and owner (they are hashed into its key);
--   5. the queue of earlier waiters.
--
-- A lock is a semaphore of one permit; every grant of a name, whatever its
-- permits, draws its fencing token from one counter.
--
-- KEYS[1]  the holders: a sorted set of grant tokens scored by when each lease
--          ends (milliseconds, Redis clock)
-- KEYS[2]  the lock's state, a hash: f = the last fencing token granted,
--          r = the last token released, q = the last queue number given,
--          p = the permits the holders were granted with, and per holder
--          f:<token>, o:<token>, i:<token> (fencing token, owner, request key)
--          and g:<request key> = token
-- KEYS[3]  the queue: a sorted set of waiters' tickets scored by arrival
-- KEYS[4]  the waiters' places: the same tickets scored by when the place
--          lapses unless the waiter renews it (it attempts again)
-- KEYS[5]  the epoch marker of the lock's slot tag, a hash: id, since (ms),
--          paused_until (ms), why (lost, young, restarted or evicted), longest
--          (the longest pause any instance asked for), evicted (the node's
--          evicted_keys when last seen), saved (its LASTSAVE when last seen),
--          run (its run_id then), trusted ('1' while no instance has checked the
--          node's age since one created it trusting a young Redis)
-- ARGV[1]  'acquire' (a new grant) or 'extend' (a new lease for a grant)
-- ARGV[2]  the grant's token: for acquire the new one (fresh for each Acquire
--          call, so the same call sent again finds its own grant)
-- ARGV[3]  the lease in milliseconds (a positive integer)
-- ARGV[4]  acquire: the owner text
-- ARGV[5]  acquire: the request key ('' for none)
-- ARGV[6]  acquire: the permits (1 for a lock)
-- ARGV[7]  acquire: the waiter's ticket ('' when the caller does not wait)
-- ARGV[8]  how long a waiter's place lasts without renewal, in milliseconds
-- ARGV[9]  how long the state outlives the lease, in milliseconds
-- ARGV[10] the marker id this instance saw here last ('' when none)
-- ARGV[11] a fresh marker id, used if the marker is missing
-- ARGV[12] the longest lease in milliseconds (--lock-max-ttl): the pause
-- ARGV[13] '1' to trust a young Redis that has no marker (--lock-trust-young-redis)
-- ARGV[14] '1' to grant although Redis may evict keys (--allow-evicting-redis)
-- ARGV[15] how long the marker lives unused, in milliseconds
-- ARGV[16] '1' to trust that a restart loses nothing (--lock-trust-persistence)
-- Returns  {code, token, fencing token, ms, n, marker id, detail}:
--   1   granted or extended: the grant's token, fencing token, and lease
--       left in ms. For acquire also when this grant already holds a permit:
--       the same call sent again (same token), or a retry with the same
--       request key (the earlier grant, unchanged).
--   0   acquire only, not granted: ms until the first holder's lease ends
--       (0: none holds it, earlier waiters go first), n = waiters ahead.
--   -1  extend only: another token holds the lock.
--   -2  extend only: nobody holds it (the lease ran out or was released).
--   -3  grants are paused: ms of the pause left, detail = why. An extension
--       of a live lease goes on through a pause, unless it is `lost` (a lease
--       granted just before a loss was noticed may be one too many).
--   -4  Redis may evict keys: detail = its maxmemory-policy.
--   -5  acquire only: the holders have other permits: n = theirs.
--   An OOM error when an acquire would grow a full Redis.
--
-- Epoch. A Redis that lost its data (a restart without persistence, a
-- failover to an empty replica, a flush, an eviction) forgets the leases it
-- held while their holders still work. A marker per slot tag, beside the lock
-- (so in its slot, on whichever node holds it), tells: while it is there, the
-- data has been there since it was made. It is missing or replaced after a
-- loss, or was never made. Then grants on the tag pause until every lease
-- granted before may have ended, counted from the loss:
--   lost      the marker this instance saw is gone (from now) or replaced (from
--             the new marker's making, which followed the loss);
--   young     no instance saw one, and the node started less than the longest
--             lease ago: it may have restarted empty (from its start);
--   restarted the marker came back with the node's data from an RDB snapshot or
--             an AOF, which may miss the last grants (from the node's start; not
--             for a replica promoted in a failover, whose data came by
--             replication, nor with --lock-trust-persistence);
--   evicted   the node evicted keys since the marker last looked, or at some
--             time before there was one (from now).
-- Every instance reads the pause from the marker, so one that never saw the
-- old data pauses too. A LASTSAVE that moved (a save, or a restart), or one of
-- the last two seconds, is what makes the script look at the node's run id, so
-- that a grant pays for INFO server only then.
local clock = redis.call('TIME')
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local now = math.floor(now_us / 1000)
local mode, token, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local place_life, retention = tonumber(ARGV[8]), tonumber(ARGV[9])
local allow_evicting = ARGV[14] == '1'

-- 1. The memory policy. INFO is the only way a script can read it.
local memory = redis.call('INFO', 'memory', 'stats')
local function info(text, name)
  return string.match(text, '\n' .. name .. ':([^\r\n]*)')
end
local maxmemory = tonumber(info(memory, 'maxmemory')) or 0
local policy = info(memory, 'maxmemory_policy') or 'noeviction'
local evicted = tonumber(info(memory, 'evicted_keys')) or 0
if maxmemory > 0 and policy ~= 'noeviction' and not allow_evicting then
  return {-4, '', 0, 0, 0, '', policy}
end

-- 2. The epoch.
local marker = redis.call('HMGET', KEYS[5], 'id', 'since', 'paused_until', 'why', 'longest', 'evicted', 'saved',
  'run', 'trusted')
local id, since, paused, why = marker[1], tonumber(marker[2]), tonumber(marker[3]) or 0, marker[4] or ''
local longest = math.max(tonumber(ARGV[12]), tonumber(marker[5]) or 0)
local seen_evicted, seen_saved, run, trusted = tonumber(marker[6]), tonumber(marker[7]), marker[8], marker[9]
local changed = longest ~= tonumber(marker[5])
local function pause_until(until_ms, cause)
  if until_ms > paused then
    paused, why, changed = until_ms, cause, true
  end
end
local server
local function node()
  if not server then
    local text = redis.call('INFO', 'server', 'replication')
    server = {
      born = now - (tonumber(info(text, 'uptime_in_seconds')) or 0) * 1000,
      run = info(text, 'run_id') or '',
      promoted = (tonumber(info(text, 'second_repl_offset')) or -1) >= 0,
    }
  end
  return server
end
local saved = redis.call('LASTSAVE')
if not id then
  id, since, changed = ARGV[11], now, true
  if ARGV[10] ~= '' then
    pause_until(now + longest, 'lost')
  elseif ARGV[13] ~= '1' then
    pause_until(node().born + longest, 'young')
  end
  trusted = ARGV[13] == '1' and '1' or '0'
  run = node().run
  if evicted > 0 and not allow_evicting then
    pause_until(now + longest, 'evicted')
  end
else
  if ARGV[10] ~= '' and id ~= ARGV[10] then
    pause_until(since + longest, 'lost')
  end
  if trusted == '1' and ARGV[13] ~= '1' then
    -- Made by an instance that trusted a young node: its age is checked now.
    pause_until(node().born + longest, 'young')
    trusted, changed = '0', true
  end
  -- LASTSAVE counts whole seconds: a restart in the second of the last save it
  -- recorded would look like none, so within two seconds of one the run id is
  -- read anyway.
  if saved ~= seen_saved or clock[1] - saved <= 2 then
    if node().run ~= run then
      if not server.promoted and ARGV[16] ~= '1' then
        pause_until(server.born + longest, 'restarted')
      end
      run = server.run
    end
    changed = changed or saved ~= seen_saved
  end
  -- A counter that went down was reset (a restart, CONFIG RESETSTAT): only what
  -- it counted since says anything.
  if evicted ~= seen_evicted and evicted > 0 and not allow_evicting then
    pause_until(now + longest, 'evicted')
  end
end
-- An instance that allows evictions leaves the count as it found it, so that
-- one that does not still sees every eviction since.
if allow_evicting then
  evicted = seen_evicted or 0
end
if changed or evicted ~= seen_evicted then
  redis.call('HSET', KEYS[5], 'id', id, 'since', since, 'paused_until', paused, 'why', why, 'longest', longest,
    'evicted', evicted, 'saved', saved, 'run', run, 'trusted', trusted)
end
if redis.call('PTTL', KEYS[5]) < tonumber(ARGV[15]) / 2 then
  redis.call('PEXPIRE', KEYS[5], ARGV[15])
end

-- Keeps a waiting caller's place in the queue (taking one at its first attempt).
local function keep_place(ticket, place)
  if ticket == '' then
    return
  end
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

local ticket = ARGV[7]
local live_extension = mode == 'extend' and why ~= 'lost'
if paused > now and not live_extension then
  -- A waiter keeps its place through the pause, so the line is kept after it.
  if mode == 'acquire' then
    keep_place(ticket, ticket ~= '' and redis.call('ZSCORE', KEYS[3], ticket))
  end
  return {-3, '', 0, paused - now, 0, id, why}
end

-- Sets the holders' expiry to the longest lease among them.
local function expire_holders()
  local last_end = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]
  redis.call('PEXPIRE', KEYS[1], tonumber(last_end) - now)
  if redis.call('PTTL', KEYS[2]) < lease + retention then
    redis.call('PEXPIRE', KEYS[2], lease + retention)
  end
end

if mode == 'extend' then
  local ends = redis.call('ZSCORE', KEYS[1], token)
  local fence = redis.call('HGET', KEYS[2], 'f:' .. token)
  if ends and fence and tonumber(ends) > now then
    redis.call('ZADD', KEYS[1], 'XX', now + lease, token)
    expire_holders()
    return {1, token, tonumber(fence), lease, 0, id, ''}
  end
  if paused > now then
    return {-3, '', 0, paused - now, 0, id, why}
  end
  if redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') > 0 then
    return {-1, '', 0, 0, 0, id, ''}
  end
  return {-2, '', 0, 0, 0, id, ''}
end

local owner, request_key, permits = ARGV[4], ARGV[5], tonumber(ARGV[6])

-- Leases that ran out, and waiters whose instance went away without leaving.
for _, expired in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  local fields = {'f:' .. expired, 'o:' .. expired, 'i:' .. expired}
  local expired_key = redis.call('HGET', KEYS[2], 'i:' .. expired)
  if expired_key and expired_key ~= '' then
    fields[4] = 'g:' .. expired_key
  end
  redis.call('HDEL', KEYS[2], unpack(fields))
  redis.call('ZREM', KEYS[1], expired)
end
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)) do
  redis.call('ZREM', KEYS[3], gone)
  redis.call('ZREM', KEYS[4], gone)
end

-- This grant already: the same call again, or a retry of the same request (whose
-- key is a digest of the request id, the client and the owner, so another
-- caller's request id is another key).
local held_by = token
local ends = redis.call('ZSCORE', KEYS[1], token)
if not ends and request_key ~= '' then
  local earlier = redis.call('HGET', KEYS[2], 'g:' .. request_key)
  if earlier then
    held_by = earlier
    ends = redis.call('ZSCORE', KEYS[1], earlier)
  end
end
local fence = ends and redis.call('HGET', KEYS[2], 'f:' .. held_by)
if fence then
  -- A write of what is already there, so that a WAIT after this reply (see
  -- --lock-min-replicas) covers the grant this call or request made before,
  -- perhaps on a connection that was lost since.
  redis.call('HSET', KEYS[2], 'f:' .. held_by, fence)
  return {1, held_by, tonumber(fence), tonumber(ends) - now, 0, id, ''}
end

-- What follows may grow Redis: refused when it is full, as Redis refuses a
-- script without allow-oom (this one has it so that an extension never is).
local used = tonumber(info(memory, 'used_memory')) or 0
local not_counted = tonumber(info(memory, 'mem_not_counted_for_evict')) or 0
if maxmemory > 0 and used - not_counted > maxmemory then
  return redis.error_reply("OOM command not allowed when used memory > 'maxmemory'.")
end

-- The holders' permits bind every grant until the last of them is gone.
local holders = redis.call('ZCARD', KEYS[1])
if holders > 0 then
  local held_with = tonumber(redis.call('HGET', KEYS[2], 'p') or '1')
  if held_with ~= permits then
    return {-5, '', 0, 0, held_with, id, ''}
  end
end

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
    'f:' .. token, fence_text, 'o:' .. token, owner, 'i:' .. token, request_key}
  if request_key ~= '' then
    fields[11], fields[12] = 'g:' .. request_key, token
  end
  redis.call('HSET', KEYS[2], unpack(fields))
  redis.call('ZADD', KEYS[1], now + lease, token)
  if holders == 0 then
    -- Alone: the holders last as long as this lease (no read-back needed).
    redis.call('PEXPIRE', KEYS[1], lease)
    if redis.call('PTTL', KEYS[2]) < lease + retention then
      redis.call('PEXPIRE', KEYS[2], lease + retention)
    end
  else
    expire_holders()
  end
  return {1, token, fence, lease, 0, id, ''}
end

local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
keep_place(ticket, place)
return {0, '', 0, first and (tonumber(first) - now) or 0, ahead, id, ''}
