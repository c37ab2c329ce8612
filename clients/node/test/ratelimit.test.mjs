import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Client, InvalidField } from 'cachelock';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, unique } from './support.mjs';

const client = connect();
after(() => client.close());

test('check allows up to the limit, then denies with a retry-after', async () => {
  const key = unique('login');
  const limit = { limit: 2, periodMs: 60_000, algorithm: 'fixedWindow', onUnavailable: 'failClosed' };
  const first = await client.rateLimit.check(key, limit);
  assert.deepEqual(
    { allowed: first.allowed, limit: first.limit, remaining: first.remaining, retryAfterMs: first.retryAfterMs },
    { allowed: true, limit: 2n, remaining: 1n, retryAfterMs: 0 },
  );
  assert.equal(first.decidedByOutagePolicy, false);
  assert.equal((await client.rateLimit.check(key, limit)).allowed, true);
  const denied = await client.rateLimit.check(key, limit);
  assert.equal(denied.allowed, false);
  assert.equal(denied.remaining, 0n);
  assert.ok(denied.retryAfterMs > 0 && denied.resetAfterMs > 0);
  assert.equal(await client.rateLimit.reset(key, { limit: 2, periodMs: 60_000, algorithm: 'fixedWindow' }), true);
  assert.equal((await client.rateLimit.check(key, limit)).allowed, true);
});

test('checkMany consumes from all limits or none', async () => {
  const key = unique('api');
  const limits = [
    { key, limit: 10n, periodMs: 1000 },
    { key, limit: 1, periodMs: 60_000, algorithm: 'slidingWindow' },
  ];
  const first = await client.rateLimit.checkMany(limits);
  assert.equal(first.allowed, true);
  assert.deepEqual(first.decisions.map((decision) => decision.remaining), [9n, 0n]);
  const second = await client.rateLimit.checkMany(limits, { onUnavailable: 'failOpen' });
  assert.equal(second.allowed, false);
  assert.equal(second.decisions[0].allowed, true);
  assert.equal(second.decisions[1].allowed, false);
  assert.ok(second.retryAfterMs > 0);
});

test('a limit of 0 is an InvalidField naming "limit"', async () => {
  const error = await client.rateLimit.check(unique('zero'), { limit: 0, periodMs: 1000 }).catch((error) => error);
  assert.ok(error instanceof InvalidField, String(error));
  assert.equal(error.field, 'limit');
  assert.equal(error.reason, 'INVALID_FIELD');
  assert.equal(error.codeName, 'INVALID_ARGUMENT');
  assert.equal(error.retryAfterMs, null);
});

test('an enum name the protocol does not define is a TypeError before any call', async () => {
  // Nothing listens at this address: a call made would fail as Unavailable, not TypeError.
  const offline = new Client('127.0.0.1:1', { timeoutMs: 500 });
  try {
    await assert.rejects(offline.rateLimit.check('k', { limit: 1, periodMs: 1000, algorithm: 'leakyBucket' }), TypeError);
    await assert.rejects(offline.rateLimit.check('k', { limit: 1, periodMs: 1000, onUnavailable: 'FAIL_OPEN' }), TypeError);
    await assert.rejects(offline.cache.set('k', 'v', { condition: 'SET_CONDITION_ALWAYS' }), TypeError);
    await assert.rejects(offline.rateLimit.reset('k', { limit: 1, periodMs: 1000, algorithm: '' }), TypeError);
    await assert.rejects(offline.rateLimit.check('k', { limit: 1, calendar: { unit: 'fortnight' } }), /fortnight/);
    await assert.rejects(offline.rateLimit.check('k', { limit: 1, calendar: { unit: 'CALENDAR_UNIT_MONTH' } }), TypeError);
    await assert.rejects(offline.rateLimit.checkMany([{ key: 'k', limit: 1, calendar: { unit: 'Month' } }]), TypeError);
    await assert.rejects(offline.rateLimit.reset('k', { limit: 1, calendar: { unit: 'eon' } }), TypeError);
    await assert.rejects(offline.rateLimit.reserve('k', { limit: 1, cost: 1, calendar: {} }), TypeError);
  } finally {
    offline.close();
  }
});

test('a period and a calendar together, or neither, is a TypeError before any call', async () => {
  const offline = new Client('127.0.0.1:1', { timeoutMs: 500 });
  try {
    const both = { limit: 1, periodMs: 60_000, calendar: { unit: 'month' } };
    await assert.rejects(offline.rateLimit.check('k', both), /not both/);
    await assert.rejects(offline.rateLimit.checkMany([{ key: 'k', ...both }]), /not both/);
    await assert.rejects(offline.rateLimit.reset('k', both), /not both/);
    await assert.rejects(offline.rateLimit.report('k', { ...both, cost: 1 }), /not both/);
    await assert.rejects(offline.rateLimit.check('k', { limit: 1 }), TypeError);
    await assert.rejects(offline.rateLimit.check('k', { limit: 1, calendar: { unit: 'day', multiplier: 0.5 } }), RangeError);
    await assert.rejects(offline.rateLimit.check('k', { limit: 1, periodMs: 1000, waitMs: -1 }), RangeError);
  } finally {
    offline.close();
  }
});

test('token budgets: reserve, commit, cancel and report', async () => {
  const key = unique('budget');
  const budget = { limit: 100, periodMs: 3_600_000, cost: 40 };
  const first = await client.rateLimit.reserve(key, budget);
  const second = await client.rateLimit.reserve(key, budget);
  const third = await client.rateLimit.reserve(key, budget);
  assert.equal(first.allowed, true);
  assert.equal(second.allowed, true);
  assert.ok(first.reservationId && second.reservationId);
  assert.deepEqual([first.limit, first.remaining, second.remaining], [100n, 60n, 20n]);
  assert.equal(third.allowed, false);
  assert.equal(third.reservationId, '');
  assert.equal(third.remaining, 20n);
  assert.ok(third.retryAfterMs > 0);

  const committed = await client.rateLimit.commit(first, 10);
  assert.deepEqual(
    [committed.found, committed.charged, committed.refunded, committed.settledBefore],
    [true, 10n, 30n, false],
  );
  assert.equal(committed.remaining, third.remaining + 30n);
  const again = await client.rateLimit.commit(first, 10n);
  assert.deepEqual([again.settledBefore, again.charged, again.refunded], [true, 10n, 30n]);
  assert.equal(again.remaining, committed.remaining);

  const cancelled = await client.rateLimit.cancel(second);
  assert.deepEqual([cancelled.found, cancelled.charged, cancelled.refunded], [true, 0n, 40n]);
  assert.equal(cancelled.remaining, committed.remaining + 40n);
  await assert.rejects(client.rateLimit.cancel(third), TypeError);
  const look = await client.rateLimit.check(key, { limit: 100, periodMs: 3_600_000, cost: 0 });
  assert.equal(look.remaining, cancelled.remaining);

  const fresh = unique('budget');
  const reported = await client.rateLimit.report(fresh, { limit: 100, periodMs: 3_600_000, cost: 150 });
  assert.equal(reported.remaining, 0n);
  assert.ok(reported.retryAfterMs > 0);
  assert.equal((await client.rateLimit.check(fresh, { limit: 100, periodMs: 3_600_000 })).allowed, false);
});

/** Resolves once the current window of `calendar` has at least 500 ms left, so that the checks
 * that follow fall in one window: a unit spent on a key of its own tells when the window ends
 * (every key's windows share the calendar's boundaries). */
async function freshWindow(calendar) {
  const probe = await client.rateLimit.check(unique('probe'), { limit: 1, calendar });
  assert.ok(probe.resetAfterMs > 0);
  if (probe.resetAfterMs < 500) await sleep(probe.resetAfterMs + 50);
}

test('a calendar window: spent, refused, and whole again when the window turns', async () => {
  const key = unique('cal');
  const every2s = { limit: 2, calendar: { unit: 'second', multiplier: 2 } };
  await freshWindow(every2s.calendar);
  assert.equal((await client.rateLimit.check(key, every2s)).allowed, true);
  const second = await client.rateLimit.check(key, every2s);
  assert.deepEqual([second.allowed, second.remaining, second.waitedMs], [true, 0n, 0]);
  const denied = await client.rateLimit.check(key, every2s);
  assert.equal(denied.allowed, false);
  assert.ok(denied.resetAfterMs > 0 && denied.resetAfterMs <= 2000, String(denied.resetAfterMs));
  assert.ok(denied.retryAfterMs > 0 && denied.retryAfterMs <= 2000, String(denied.retryAfterMs));
  await sleep(denied.resetAfterMs + 50);
  const fresh = await client.rateLimit.check(key, every2s);
  assert.deepEqual([fresh.allowed, fresh.remaining], [true, 1n]);
});

test('a calendar month of Berlin, wherever a period goes', async () => {
  const key = unique('cal');
  const month = { unit: 'month', multiplier: 1, timeZone: 'Europe/Berlin' };
  const used = await client.rateLimit.check(key, { limit: 100, cost: 40, calendar: month });
  assert.deepEqual([used.allowed, used.remaining], [true, 60n]);
  assert.ok(used.resetAfterMs > 0 && used.resetAfterMs <= 31 * 86_400_000, String(used.resetAfterMs));
  assert.equal(await client.rateLimit.reset(key, { limit: 100, calendar: month }), true);
  assert.equal((await client.rateLimit.check(key, { limit: 100, cost: 0, calendar: month })).remaining, 100n);

  const both = await client.rateLimit.checkMany([
    { key, limit: 100, calendar: month },
    { key, limit: 5, periodMs: 60_000, algorithm: 'fixedWindow' },
  ]);
  assert.equal(both.allowed, true);
  assert.deepEqual(both.decisions.map((part) => part.remaining), [99n, 4n]);

  const day = { unit: 'day', timeZone: 'America/New_York' };
  const reservation = await client.rateLimit.reserve(key, { limit: 1000, cost: 300, calendar: day });
  assert.equal(reservation.allowed, true);
  assert.deepEqual([reservation.calendar, reservation.periodMs], [day, undefined]);
  const settled = await client.rateLimit.commit(reservation, 100);
  assert.deepEqual([settled.charged, settled.refunded, settled.remaining], [100n, 200n, 900n]);
  const reported = await client.rateLimit.report(key, { limit: 1000, cost: 50, calendar: day });
  assert.equal(reported.remaining, 850n);

  const error = await client.rateLimit
    .check(key, { limit: 1, calendar: { unit: 'day', timeZone: 'Mars/Olympus_Mons' } })
    .catch((error) => error);
  assert.ok(error instanceof InvalidField, String(error));
  assert.equal(error.field, 'calendar.time_zone');
});

test('a check with waitMs is answered when its cost fits', async () => {
  const key = unique('wait');
  const oneEvery300ms = { limit: 1, periodMs: 300 };
  assert.equal((await client.rateLimit.check(key, oneEvery300ms)).allowed, true);
  assert.equal((await client.rateLimit.check(key, oneEvery300ms)).allowed, false);
  const started = Date.now();
  const waited = await client.rateLimit.check(key, { ...oneEvery300ms, waitMs: 5000 });
  assert.equal(waited.allowed, true);
  assert.ok(waited.waitedMs > 0 && waited.waitedMs <= 1000, String(waited.waitedMs));
  assert.ok(Date.now() - started >= waited.waitedMs - 50);

  // A wait shorter than the turn is answered at once, refused.
  const slow = unique('wait');
  assert.equal((await client.rateLimit.check(slow, { limit: 1, periodMs: 60_000 })).allowed, true);
  const before = Date.now();
  const refused = await client.rateLimit.check(slow, { limit: 1, periodMs: 60_000, waitMs: 200 });
  assert.equal(refused.allowed, false);
  assert.ok(refused.retryAfterMs > 50_000);
  assert.ok(Date.now() - before < 1000);
});

test('leased checks never allow more than the limit; sliding windows are refused', async () => {
  const key = unique('leased');
  const limit = { limit: 5, periodMs: 3_600_000, algorithm: 'fixedWindow', leased: true };
  let allowed = 0;
  for (let i = 0; i < 8; i++) if ((await client.rateLimit.check(key, limit)).allowed) allowed++;
  assert.equal(allowed, 5);

  const error = await client.rateLimit
    .check(unique('leased'), { ...limit, algorithm: 'slidingWindow' })
    .catch((error) => error);
  assert.ok(error instanceof InvalidField, String(error));
  assert.equal(error.field, 'leased');
});

test("a check's deadline is its timeout plus its wait", async () => {
  const hasty = connect({ timeoutMs: 500 });
  try {
    const key = unique('wait');
    assert.equal((await hasty.rateLimit.check(key, { limit: 1, periodMs: 1200 })).allowed, true);
    const late = await hasty.rateLimit.check(key, { limit: 1, periodMs: 1200, waitMs: 3000 });
    assert.equal(late.allowed, true);
    assert.ok(late.waitedMs > 500, String(late.waitedMs));
  } finally {
    hasty.close();
  }
});
