#!lua flags=allow-oom
-- ratelimit: decides rate limits and consumes their cost, group by group, each
-- group all or nothing: one request's limits, or the requests of a batch.
--
-- KEYS[i]       the i-th limit's state key (one key per user key and algorithm)
-- ARGV[5i - 4]  the i-th algorithm: 1 token bucket (GCRA), 2 fixed window, 3 sliding window
-- ARGV[5i - 3]  the i-th limit: units per period, 1 <= limit <= period in microseconds
-- ARGV[5i - 2]  the i-th period in microseconds (>= 1000), or for a fixed window
--               aligned to a calendar, six boundaries the service computed around
--               its own now, 'b1,...,b6' in microseconds since the EPOCH below:
--               the starts of the two windows before its window, that window's
--               start and end, and the ends of the two after it. The window the
--               Redis clock falls in must be one of the middle three.
-- ARGV[5i - 1]  the i-th cost: units to consume; 0 decides as for 1 but consumes nothing
-- ARGV[5i]      the i-th limit's group: 'g' (a positive number) shared by limits decided
--               all or nothing together (one request's); '0' for a limit that stands alone
--               (an Envoy rule in shadow mode on a counter of its own); 'fg' for a limit
--               that follows group g without deciding it (a shadow rule on a counter an
--               enforced limit of the request also counts); 'qg' for a quota member of
--               group g (an Envoy rule in quota mode: the group is refused when every
--               quota member of it is over, as well as when any plain member is)
-- ARGV[5n + 1]  optionally 'roomy': the service's last probe found every primary
--               under 90% of its maxmemory, so new state is taken without reading INFO
-- Returns       one {allowed, remaining, reset_after_us, retry_after_us} per limit.
--               allowed is 1 or 0, or -1 when the limit would have created new state
--               in a Redis 5% past its maxmemory (not decided; nothing of its group was
--               written), or -3 when the Redis clock is outside a calendar limit's
--               boundaries (the two clocks differ by more than a window). retry_after_us is 0 when allowed and -1 when the cost
--               exceeds the limit (no wait lets it pass). A group's limits are written
--               only if it is allowed; otherwise their remaining and reset_after
--               describe the state as it is. A limit that stands alone is written
--               whenever it allows itself, whatever the others decide.
--
-- Budgets (ARGV[1] names the operation instead of an algorithm), one limit each:
-- KEYS[1]  the limit's state key; KEYS[2] the reservation's record (not for report):
--          a hash of k (the state key it was counted in), e (the estimate), w (the
--          window it was counted in), t (a token bucket's TAT after it), s (open,
--          commit or cancel) and, once settled, charged and refunded
-- ARGV[1]  'reserve', 'commit', 'cancel', 'report', 'wait' or 'unwait'
-- ARGV[2..4] the algorithm, the limit and the period (or boundaries), as above
-- ARGV[5]  reserve: the estimate; commit: the actual cost; report, wait, unwait: the cost
-- ARGV[6]  reserve: how long the reservation lasts, in ms; commit: '1' to charge an
--          excess beyond the limit (a debt); wait: how long the caller may wait, in
--          microseconds; unwait: the mark its wait answered (a token bucket: where
--          the caller's units end; a fixed window: the window they were counted in)
-- ARGV[7]  unwait: a fixed window's state stamp (g) its wait answered
-- Returns  reserve: a decision as above, the estimate counted and the record made
--          when allowed (a Reserve sent again finds its record and counts nothing);
--          commit, cancel: {1, charged, refunded, remaining, reset_after_us, 1 when
--          it was settled before (then the figures are that settlement's)}, {0}
--          when the reservation is unknown (it expired: settled at its estimate),
--          {-2} when it was counted under another limit; report: {remaining,
--          reset_after_us, retry_after_us for one unit}, or a refusal as not
--          decided when a full Redis would have to take new state; wait: a decision
--          as above and {delay_us, mark, stamp}: when allowed later than now, the
--          cost is counted now against the moment it fits (a token bucket's TAT
--          moves past the bucket; a fixed window counts it in the next window, field
--          x), after every caller counted before, and the caller is to be answered
--          after delay_us; unwait: gives back the cost of a waiting caller gone
--          before its moment, when that cannot move anyone else's moment and the
--          state is the one it was counted in (not after a Reset). Any of them: {-3} when a calendar limit's boundaries do not hold
--          the Redis clock.
-- Leases ('lease'): ARGV[5] the request's cost, ARGV[6] how many units more the
--          instance would like, ARGV[7] how long its slice may live (microseconds,
--          below the period), ARGV[8] units it gives back from its last slice,
--          ARGV[9] and ARGV[10] the mark and stamp that slice's lease answered. Gives those back first, then
--          decides the cost and, when it fits, counts it and up to the units more
--          that fit as well, at most a quarter of what is free beyond the cost:
--          the slice. Units given back count only where they were counted: a
--          token bucket's only for the time they have not refilled by themselves
--          (the bucket ended at mark), a fixed window's only into the window and
--          state (stamp g) that counted them. A token bucket's slice is decided as if the
--          bucket were smaller by what refills while the slice lives, so units used
--          up to that much later still never exceed the bucket (a cost that
--          leaves less headroom is leased for that headroom only); a fixed
--          window's slice lives at most until the window ends. Returns {allowed,
--          granted, remaining, reset_after_us, retry_after_us, life_us, mark,
--          stamp}: remaining is what is left outside every slice; mark and stamp
--          go back with the slice's unused units.
--
-- Groups are decided one after the other, in the order of their first limit, each
-- seeing what the ones before it consumed: a batch of requests (see the service's
-- group commit) is decided exactly as if they had come one by one in that order.
-- Within a group the limits are decided one after the other too, each seeing what
-- the ones before it would consume, so one counter named twice is charged both
-- costs (a request of [1, 100] hits on a limit of 10 is refused, not charged 1).
-- What a group would write is kept aside and written only once the group is
-- allowed, so a refused group writes nothing (and needs no command an operator's
-- ACL may deny, such as RESTORE).
--
-- Time is the Redis server's clock (TIME), so every service instance agrees. Times
-- are microseconds since 2024-01-01 UTC: small enough for a double to keep them to
-- about 0.01 us, and fixed windows still align to UTC minutes, hours and days.
--
-- Atomicity: the script runs without interleaving, so the reads and the writes of
-- every limit form one decision. Flagged allow-oom: a Redis full of other data
-- (one tenant's cache values) still decides every limit that exists, rather than
-- leaving it to the outage policy; a limiter's state is a few dozen bytes with an
-- expiry of at most two periods. New state is refused once Redis is 5% past its
-- maxmemory, so that nobody can grow a full Redis without bound by checking ever
-- new keys.

local EPOCH = 1704067200
-- Float rounding tolerated when comparing GCRA times (microseconds).
local SLACK = 0.5

local clock = redis.call('TIME')
local now = (tonumber(clock[1]) - EPOCH) * 1000000 + tonumber(clock[2])

-- Durations are rounded up: waiting that long is always enough.
local function up(us)
  return math.ceil(us)
end

local function expire_ms(us)
  return math.ceil(us / 1000) + 1
end

-- What the group being decided would write, by key: reads see it before Redis.
local pending = {}

local function load_value(key)
  if pending[key] then
    return pending[key].value
  end
  return redis.call('GET', key)
end

local function load_fields(key, ...)
  local state = pending[key]
  if state then
    local values = {}
    for i, field in ipairs({...}) do
      values[i] = state.fields[field]
    end
    return values
  end
  return redis.call('HMGET', key, ...)
end

-- Whether Redis is more than 5% past its maxmemory (asked once per call, if at all).
-- A check whose service found every primary under 90% of its maxmemory a moment
-- ago says so in its last argument, and INFO (tens of microseconds) is not read.
local full
if #KEYS > 0 and ARGV[#ARGV] == 'roomy' and string.match(ARGV[1], '^%d') then
  full = false
end
local function too_full()
  if full == nil then
    local memory = redis.call('INFO', 'memory')
    local function field(name)
      return tonumber(string.match(memory, '\n' .. name .. ':(%d+)')) or 0
    end
    local maxmemory = field('maxmemory')
    local used = field('used_memory') - field('mem_not_counted_for_evict')
    full = maxmemory > 0 and used > maxmemory * 1.05
  end
  return full
end

-- The answer for a limit whose new state a full Redis cannot take.
local NOT_DECIDED = {-1, 0, 0, -1}
-- The answer for a calendar limit whose boundaries do not hold the Redis clock.
local SKEWED = {-3, 0, 0, -1}

-- The fixed window `now` falls in, from a period in microseconds or a calendar's
-- boundaries: its id, where it ends, the id of the window before, where the window
-- after ends, and that window's id. A calendar window's id is its start. Nothing
-- when the boundaries do not hold `now` with a known window on each side.
local function window_of(period)
  local length = tonumber(period)
  if length then
    local window = math.floor(now / length)
    return window, (window + 1) * length, window - 1, (window + 2) * length, window + 1
  end
  local b = {}
  for boundary in string.gmatch(period, '%-?%d+') do
    b[#b + 1] = tonumber(boundary)
  end
  if #b ~= 6 then
    return nil
  end
  for k = 2, 4 do
    if b[k] <= now and now < b[k + 1] then
      return b[k], b[k + 1], b[k - 1], b[k + 2], b[k + 1]
    end
  end
  return nil
end

-- A token bucket's state: its TAT and, after a space, the end of the latest moment
-- a waiting caller holds, kept while that moment is ahead. No refund lowers the TAT
-- below it: a later caller would be given a moment a waiter still holds.
local function bucket(stored)
  if not stored or stored == '' then
    return nil, nil
  end
  local tat, held = string.match(stored, '^(%S+) (%S+)$')
  if tat then
    return tonumber(tat), tonumber(held)
  end
  return tonumber(stored), nil
end

local function bucket_value(tat, held, period)
  if held and held - period > now then
    return string.format('%.17g %.17g', tat, held)
  end
  return string.format('%.17g', tat)
end

-- A fixed window's counts from its state {w, n, x}: this window's, and what waiting
-- callers took of the next one (which becomes the count once that window begins).
local function window_counts(state, window, previous)
  local stored = tonumber(state[1])
  if stored == window then
    return tonumber(state[2]) or 0, tonumber(state[3]) or 0
  elseif previous and stored == previous then
    return tonumber(state[3]) or 0, 0
  end
  return 0, 0
end

local function keep(key, state, created)
  if created and redis.call('EXISTS', key) == 0 and too_full() then
    return false
  end
  pending[key] = state
  return true
end

local function write_pending()
  for key, state in pairs(pending) do
    if state.value then
      redis.call('SET', key, state.value, 'PX', state.px)
    else
      local fields = {}
      for name, value in pairs(state.fields) do
        fields[#fields + 1] = name
        fields[#fields + 1] = value
      end
      redis.call('HSET', key, unpack(fields))
      redis.call('PEXPIRE', key, state.px)
    end
  end
  pending = {}
end

-- Token bucket as GCRA. The state is the theoretical arrival time (tat) of the
-- next unit: the bucket is full when tat <= now and empty when tat >= now + period.
-- Each unit moves tat on by period / limit, so the bucket refills smoothly.
-- With `wait` (microseconds), a cost that fits within it is counted now, against the
-- moment it fits: the TAT moves past the bucket's end, so everyone after waits longer.
local function token_bucket(key, limit, period, cost, wait)
  period = tonumber(period)
  local interval = period / limit
  local stored = load_value(key)
  local tat, held = bucket(stored)
  tat = tat or now
  if tat < now then
    tat = now
  end
  local function remaining_at(t)
    return math.max(0, math.floor((period - (t - now) + SLACK) / interval))
  end
  local as_is = {remaining_at(tat), up(tat - now)}
  local wanted = math.max(cost, 1)
  if wanted > limit then
    return {0, as_is[1], as_is[2], -1}, as_is
  end
  local allow_at = tat + wanted * interval - period
  if allow_at - now > SLACK then
    if wait and cost > 0 and allow_at - now <= wait then
      local new_tat = tat + cost * interval
      return {1, remaining_at(new_tat), up(new_tat - now), 0}, as_is, function()
        return keep(key, {value = bucket_value(new_tat, new_tat, period), px = expire_ms(new_tat - now)}, not stored)
      end, {up(allow_at - now), math.floor(new_tat), 0}
    end
    return {0, as_is[1], as_is[2], up(allow_at - now)}, as_is
  end
  if cost == 0 then
    return {1, as_is[1], as_is[2], 0}, as_is
  end
  local new_tat = tat + cost * interval
  return {1, remaining_at(new_tat), up(new_tat - now), 0}, as_is, function()
    return keep(key, {value = bucket_value(new_tat, held, period), px = expire_ms(new_tat - now)}, not stored)
  end
end

-- Fixed window: a count per window of `period` (or of a calendar); the state is
-- {w = window, n = count, x = what waiting callers took of the next window, g = when
-- the state was made}. With `wait` (microseconds), a cost that does not fit now but
-- fits in the next window, which begins within the wait, is counted there. While
-- callers wait for the next window, no later caller takes what is left of this
-- one: they are served in the order they came.
local function fixed_window(key, limit, period, cost, wait)
  local window, ends, previous, next_ends, next_window = window_of(period)
  if not window then
    return SKEWED, SKEWED
  end
  local state = load_fields(key, 'w', 'n', 'x', 'g')
  local count, ahead = window_counts(state, window, previous)
  local made = tonumber(state[4]) or now
  -- Until the limit is whole: past the next window when waiting callers took of it.
  local function reset_for(c, x)
    if x > 0 then
      return up((next_ends or ends) - now)
    elseif c > 0 then
      return up(ends - now)
    end
    return 0
  end
  local function write(c, x)
    local last = ends
    if x > 0 and next_ends then
      last = next_ends
    end
    return keep(key, {fields = {w = window, n = c, x = x, g = made}, px = expire_ms(last - now)}, not state[1])
  end
  local as_is = {math.max(0, limit - count), reset_for(count, ahead)}
  local wanted = math.max(cost, 1)
  if wanted > limit then
    return {0, as_is[1], as_is[2], -1}, as_is
  end
  if count + wanted > limit or (ahead > 0 and cost > 0) then
    if ahead + wanted > limit then
      -- Not before the window after the next: the waiting callers took the next.
      return {0, as_is[1], as_is[2], up((next_ends or ends) - now)}, as_is
    end
    if wait and cost > 0 and ends - now <= wait then
      local new_ahead = ahead + cost
      return {1, as_is[1], reset_for(count, new_ahead), 0}, as_is, function()
        return write(count, new_ahead)
      end, {up(ends - now), next_window, made}
    end
    return {0, as_is[1], as_is[2], up(ends - now)}, as_is
  end
  if cost == 0 then
    return {1, as_is[1], as_is[2], 0}, as_is
  end
  local new_count = count + cost
  return {1, limit - new_count, reset_for(new_count, ahead), 0}, as_is, function()
    return write(new_count, ahead)
  end
end

-- Sliding window, the two-window approximation: the estimate is the previous
-- window's count weighted by the part of it the sliding period still covers, plus
-- the current window's count. The state is {w = window, c = current, p = previous}.
local function sliding_window(key, limit, period, cost)
  period = tonumber(period)
  local window = math.floor(now / period)
  local weight = 1 - (now - window * period) / period
  local state = load_fields(key, 'w', 'c', 'p')
  local stored_window = tonumber(state[1])
  local current, previous = 0, 0
  if stored_window == window then
    current = tonumber(state[2]) or 0
    previous = tonumber(state[3]) or 0
  elseif stored_window == window - 1 then
    previous = tonumber(state[2]) or 0
  end
  local function estimate(c)
    return previous * weight + c
  end
  local function remaining_for(c)
    return math.max(0, math.floor(limit - estimate(c) + 1e-9))
  end
  local function reset_for(c)
    if c > 0 then
      return up((window + 2) * period - now)
    elseif previous > 0 then
      return up((window + 1) * period - now)
    end
    return 0
  end
  local as_is = {remaining_for(current), reset_for(current)}
  local wanted = math.max(cost, 1)
  if wanted > limit then
    return {0, as_is[1], as_is[2], -1}, as_is
  end
  if estimate(current) + wanted > limit + 1e-9 then
    local at
    if current + wanted <= limit then
      -- Later in this window, once the previous window's weight has shrunk enough
      -- (previous > 0 here, or the estimate could not exceed the limit).
      at = (window + 1 - (limit - current - wanted) / previous) * period
    else
      -- In the next window, once this window's count, weighted, has shrunk enough
      -- (current > limit - wanted >= 0 here).
      at = (window + 2 - (limit - wanted) / current) * period
    end
    -- One microsecond more than the float result, so retrying then always passes.
    return {0, as_is[1], as_is[2], up(at - now) + 1}, as_is
  end
  if cost == 0 then
    return {1, as_is[1], as_is[2], 0}, as_is
  end
  local new_current = current + cost
  return {1, remaining_for(new_current), reset_for(new_current), 0}, as_is, function()
    local px = expire_ms((window + 2) * period - now)
    return keep(key, {fields = {w = window, c = new_current, p = previous}, px = px}, not state[1])
  end
end

local algorithms = {token_bucket, fixed_window, sliding_window}

-- One limit, the common case: decided without the bookkeeping of groups.
-- Budgets: Reserve, Commit, Cancel and Report, one limit each (see the header).
-- How many periods of debt a limit can carry (see adjust).
local DEBT_PERIODS = 100
-- Changes a limit's count by `delta` units without deciding: a charge (delta > 0,
-- counted even beyond the limit: a debt) or a refund (delta < 0; a limit never gets
-- fuller than full). `window` is the window refunded units were counted in (fixed
-- and sliding windows): a window that is over gives nothing back. Charges go to
-- the current window.
local function adjust(algorithm, key, limit, period, delta, window)
  if algorithm == 2 then
    local current, ends, previous, next_ends, next_window = window_of(period)
    if not current then
      return
    end
    local state = redis.call('HMGET', key, 'w', 'n', 'x')
    local count, ahead = window_counts(state, current, previous)
    local target = window or current
    if target == current then
      count = math.min(math.max(0, count + delta), DEBT_PERIODS * limit)
    elseif target == next_window then
      ahead = math.max(0, ahead + delta)
    else
      -- An ended window gives nothing back.
      return
    end
    local last = ends
    if ahead > 0 and next_ends then
      last = next_ends
    end
    redis.call('HSET', key, 'w', current, 'n', count, 'x', ahead)
    redis.call('PEXPIRE', key, expire_ms(last - now))
    return
  end
  period = tonumber(period)
  if algorithm == 1 then
    local interval = period / limit
    local tat, held = bucket(redis.call('GET', key))
    tat = tat or now
    if tat < now then
      tat = now
    end
    -- A debt is kept to DEBT_PERIODS periods: far enough to refuse for that long,
    -- near enough for exact microseconds and an expiry Redis takes.
    local new_tat = math.min(tat + delta * interval, now + DEBT_PERIODS * period)
    if held and held - period > now then
      -- A waiting caller's moment stands.
      new_tat = math.max(new_tat, math.min(tat, held))
    end
    if new_tat <= now then
      redis.call('DEL', key)
    else
      redis.call('SET', key, bucket_value(new_tat, held, period), 'PX', string.format('%d', expire_ms(new_tat - now)))
    end
    return
  end
  local current = math.floor(now / period)
  local target = window or current
  local state = redis.call('HMGET', key, 'w', 'c', 'p')
  local stored = tonumber(state[1])
  local counted, previous = 0, 0
  if stored == current then
    counted, previous = tonumber(state[2]) or 0, tonumber(state[3]) or 0
  elseif stored == current - 1 then
    previous = tonumber(state[2]) or 0
  end
  if target == current then
    counted = math.min(math.max(0, counted + delta), DEBT_PERIODS * limit)
  elseif target == current - 1 then
    previous = math.max(0, previous + delta)
  else
    return
  end
  redis.call('HSET', key, 'w', current, 'c', counted, 'p', previous)
  redis.call('PEXPIRE', key, expire_ms((current + 2) * period - now))
end

local operation = ARGV[1]
if operation == 'reserve' or operation == 'commit' or operation == 'cancel' or operation == 'report'
    or operation == 'wait' or operation == 'unwait' or operation == 'lease' then
  local algorithm, limit, period = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
  local cost = tonumber(ARGV[5])
  local decide = algorithms[algorithm]
  if algorithm == 2 and not window_of(period) then
    return {SKEWED[1]}
  end
  if operation == 'wait' then
    local decision, _, commit, slot = decide(KEYS[1], limit, period, cost, tonumber(ARGV[6]))
    if decision[1] == 1 and commit then
      if not commit() then
        return NOT_DECIDED
      end
      write_pending()
    end
    if decision[1] < 0 then
      return {decision[1], 0, 0, -1, 0, 0, 0}
    end
    slot = slot or {0, 0, 0}
    return {decision[1], decision[2], decision[3], decision[4], slot[1], slot[2], slot[3]}
  end
  if operation == 'unwait' then
    local mark, made = tonumber(ARGV[6]), tonumber(ARGV[7])
    if algorithm == 1 then
      -- Given back only when nobody was counted after it (its units end the
      -- bucket): otherwise the moments after it stand and its units stay counted.
      -- Nor after a Reset (the bucket no longer holds them).
      local length = tonumber(period)
      local tat = bucket(redis.call('GET', KEYS[1]))
      if tat and tat >= mark and tat < mark + 1 then
        local new_tat = tat - cost * length / limit
        if new_tat <= now then
          redis.call('DEL', KEYS[1])
        else
          redis.call('SET', KEYS[1], bucket_value(new_tat, new_tat, length), 'PX',
            string.format('%d', expire_ms(new_tat - now)))
        end
      end
      return {1}
    end
    -- Into the state it was counted in only: not one a Reset or an expiry made anew.
    if tonumber(redis.call('HGET', KEYS[1], 'g')) == made then
      adjust(algorithm, KEYS[1], limit, period, -cost, mark)
    end
    return {1}
  end
  if operation == 'lease' then
    local more, life, back = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
    local back_mark, back_stamp = tonumber(ARGV[9]), tonumber(ARGV[10])
    if algorithm == 1 then
      local length = tonumber(period)
      local interval = length / limit
      if back > 0 then
        -- Only what has not come back by itself since (the slice's units ended
        -- the bucket at back_mark), and only into the bucket that counted them.
        local stored = bucket(redis.call('GET', KEYS[1]))
        if stored and stored >= back_mark then
          local time_back = math.min(back * interval, math.max(0, back_mark - now))
          if time_back > 0 then
            adjust(1, KEYS[1], limit, period, -time_back / interval, nil)
          end
        end
      end
      local tat, held = bucket(redis.call('GET', KEYS[1]))
      tat = tat or now
      if tat < now then
        tat = now
      end
      -- The bucket as the slice sees it: smaller by what refills while it lives.
      -- A cost that leaves less headroom than that is leased for no longer than
      -- the headroom (down to being used at once).
      life = math.max(0, math.min(life, (limit - math.min(cost, limit)) * interval))
      local room = now + length - life
      local allow_at = tat + cost * interval - (length - life)
      if cost > limit or allow_at - now > SLACK then
        local state = decide(KEYS[1], limit, period, 0)
        local retry = -1
        if cost <= limit then
          retry = up(allow_at - now)
        end
        return {0, 0, state[2], state[3], retry, 0, 0, 0}
      end
      -- At most a quarter of what is free beyond the cost, so instances share it.
      local free = math.floor((now + length - tat + SLACK) / interval) - cost
      local fits = math.floor((room - tat - cost * interval + SLACK) / interval)
      local extra = math.max(0, math.min(more, fits, math.floor(math.max(0, free) / 4)))
      local granted = cost + extra
      local new_tat = tat + granted * interval
      if redis.call('EXISTS', KEYS[1]) == 0 and too_full() then
        return {-1}
      end
      redis.call('SET', KEYS[1], bucket_value(new_tat, held, length), 'PX', string.format('%d', expire_ms(new_tat - now)))
      local state = decide(KEYS[1], limit, period, 0)
      return {1, granted, state[2], state[3], 0, math.floor(life), math.floor(new_tat), 0}
    end
    local window, ends, previous, next_ends = window_of(period)
    local state = redis.call('HMGET', KEYS[1], 'w', 'n', 'x', 'g')
    if back > 0 and back_mark == window and tonumber(state[4]) == back_stamp then
      -- Into the window and the state (not one a Reset made anew) that counted them.
      adjust(algorithm, KEYS[1], limit, period, -back, window)
      state = redis.call('HMGET', KEYS[1], 'w', 'n', 'x', 'g')
    end
    local count, ahead = window_counts(state, window, previous)
    local made = tonumber(state[4]) or now
    if cost > limit or count + cost > limit or ahead > 0 then
      local now_state = decide(KEYS[1], limit, period, 0)
      local retry = -1
      if cost <= limit then
        retry = up(((count + cost > limit or ahead + cost > limit) and next_ends or ends) - now)
      end
      return {0, 0, now_state[2], now_state[3], retry, 0, window, made}
    end
    local granted = cost + math.max(0, math.min(more, math.floor((limit - count - cost) / 4)))
    if redis.call('EXISTS', KEYS[1]) == 0 and too_full() then
      return {-1}
    end
    redis.call('HSET', KEYS[1], 'w', window, 'n', count + granted, 'x', ahead, 'g', made)
    local last = ends
    if ahead > 0 and next_ends then
      last = next_ends
    end
    redis.call('PEXPIRE', KEYS[1], expire_ms(last - now))
    local now_state = decide(KEYS[1], limit, period, 0)
    return {1, granted, now_state[2], now_state[3], 0, math.floor(math.min(life, ends - now)), window, made}
  end
  -- Where the limit stands: remaining, reset_after, and when one unit fits (a cost
  -- of 0 decides as for 1 and consumes nothing).
  local function as_is()
    return decide(KEYS[1], limit, period, 0)
  end
  if operation == 'report' then
    if redis.call('EXISTS', KEYS[1]) == 0 and too_full() then
      return NOT_DECIDED
    end
    adjust(algorithm, KEYS[1], limit, period, cost, nil)
    local now_state = as_is()
    return {now_state[2], now_state[3], math.max(now_state[4], 0)}
  end
  if operation == 'reserve' then
    if redis.call('EXISTS', KEYS[2]) == 1 then
      -- This Reserve sent again: its reservation stands, counted once.
      local now_state = as_is()
      return {1, now_state[2], now_state[3], 0}
    end
    local decision, _, commit = decide(KEYS[1], limit, period, cost)
    if decision[1] == 1 and commit then
      -- The record is always new state: a full Redis takes none.
      if too_full() or not commit() then
        return NOT_DECIDED
      end
      write_pending()
      -- For a token bucket, where its units end (the TAT it left): a refund gives
      -- back only the units that have not come back by themselves since.
      local ends = ''
      if algorithm == 1 then
        ends = redis.call('GET', KEYS[1])
      end
      local window = 0
      if algorithm == 2 then
        window = window_of(period)
      elseif algorithm == 3 then
        window = math.floor(now / tonumber(period))
      end
      redis.call('HSET', KEYS[2], 'k', KEYS[1], 'e', cost, 'w', window, 't', ends, 's', 'open')
      redis.call('PEXPIRE', KEYS[2], ARGV[6])
    end
    return decision
  end
  -- Commit and Cancel settle the reservation once; sent again they answer the same.
  local record = redis.call('HMGET', KEYS[2], 'k', 'e', 'w', 's', 'charged', 'refunded', 't')
  if not record[1] then
    return {0}
  end
  if record[1] ~= KEYS[1] then
    return {-2}
  end
  local charged, refunded
  local before = 0
  if record[4] == 'open' then
    local estimate = tonumber(record[2])
    local actual = 0
    if operation == 'commit' then
      actual = cost
    end
    charged, refunded = estimate, 0
    if actual < estimate then
      local back = estimate - actual
      if algorithm == 1 then
        -- The time of the reservation's units that the bucket refilled since is
        -- back already: only what is left of it is given back.
        local interval = tonumber(period) / limit
        local ends = bucket(record[7]) or now
        local time_back = math.min(back * interval, math.max(0, ends - now))
        back = time_back / interval
        refunded = math.floor(back + 0.5)
      else
        refunded = back
      end
      charged = estimate - refunded
      adjust(algorithm, KEYS[1], limit, period, -back, tonumber(record[3]))
    elseif actual > estimate then
      local excess = actual - estimate
      if ARGV[6] ~= '1' then
        excess = math.min(excess, as_is()[2])
      end
      if excess > 0 then
        adjust(algorithm, KEYS[1], limit, period, excess, nil)
      end
      charged = estimate + excess
    end
    redis.call('HSET', KEYS[2], 's', operation, 'charged', charged, 'refunded', refunded)
    -- Kept a while after settling, so that this call sent again finds its answer.
    if redis.call('PTTL', KEYS[2]) < 60000 then
      redis.call('PEXPIRE', KEYS[2], 60000)
    end
  else
    charged, refunded, before = tonumber(record[5]), tonumber(record[6]), 1
  end
  local now_state = as_is()
  return {1, charged, refunded, now_state[2], now_state[3], before}
end

if #KEYS == 1 then
  local decision, _, commit = algorithms[tonumber(ARGV[1])](KEYS[1], tonumber(ARGV[2]), ARGV[3],
    tonumber(ARGV[4]))
  if decision[1] == 1 and commit then
    if not commit() then
      return {NOT_DECIDED}
    end
    write_pending()
  end
  return {decision}
end

-- The groups, in the order of their first limit; a limit alone is a group of its own.
local order, members, role = {}, {}, {}
for i = 1, #KEYS do
  local group = ARGV[5 * i]
  role[i] = 'plain'
  if group == '0' then
    group = 'alone ' .. i
  elseif string.sub(group, 1, 1) == 'f' then
    role[i], group = 'follows', string.sub(group, 2)
  elseif string.sub(group, 1, 1) == 'q' then
    role[i], group = 'quota', string.sub(group, 2)
  end
  if not members[group] then
    members[group] = {}
    order[#order + 1] = group
  end
  table.insert(members[group], i)
end

local function decide(i, cost)
  local base = 5 * (i - 1)
  return algorithms[tonumber(ARGV[base + 1])](KEYS[i], tonumber(ARGV[base + 2]), ARGV[base + 3], cost)
end

local decisions = {}
for _, group in ipairs(order) do
  local refused, not_decided = false, false
  local quotas, quotas_over = 0, 0
  for _, i in ipairs(members[group]) do
    local commit
    decisions[i], _, commit = decide(i, tonumber(ARGV[5 * (i - 1) + 4]))
    if decisions[i][1] == 1 and commit and not commit() then
      decisions[i] = {NOT_DECIDED[1], NOT_DECIDED[2], NOT_DECIDED[3], NOT_DECIDED[4]}
    end
    if decisions[i][1] < 0 then
      -- Not decided (a full Redis, or clocks apart): nothing of the group is written.
      not_decided = true
    end
    if role[i] == 'quota' then
      quotas = quotas + 1
      if decisions[i][1] == 0 then
        quotas_over = quotas_over + 1
      end
    elseif decisions[i][1] == 0 and role[i] == 'plain' then
      refused = true
    end
  end
  if refused or not_decided or (quotas > 0 and quotas == quotas_over) then
    -- Nothing of the group is written, so each limit reports its state as it stands.
    pending = {}
    for _, i in ipairs(members[group]) do
      if decisions[i][1] >= 0 then
        local as_is = decide(i, 0)
        decisions[i][2] = as_is[2]
        decisions[i][3] = as_is[3]
      end
    end
  else
    write_pending()
  end
end
return decisions
