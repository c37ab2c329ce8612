import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Client, InvalidField } from 'cachelock';
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
