// A client limited to 3 requests a second: what is retried, and what is not.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Client, ClientRateLimited } from 'cachelock';
import { ADDR, METERED_TOKEN, connect, unique } from './support.mjs';

const app = connect();
const retries = [];
const metered = new Client(ADDR, { token: METERED_TOKEN, onRetry: (event) => retries.push(event) });
after(() => {
  app.close();
  metered.close();
});

test('over its budget, an increment is refused at once, and a get is retried', async () => {
  const key = unique('metered');
  let applied = 0n;
  let refused;
  let refusedInMs;
  for (let i = 0; i < 20 && refused === undefined; i += 1) {
    const started = Date.now();
    try {
      applied = await metered.cache.increment(key);
    } catch (error) {
      if (!(error instanceof ClientRateLimited)) throw error;
      refused = error;
      refusedInMs = Date.now() - started;
    }
  }
  assert.ok(refused, 'the budget never ran out');
  assert.equal(refused.reason, 'CLIENT_RATE_LIMITED');
  assert.equal(refused.codeName, 'RESOURCE_EXHAUSTED');
  assert.ok(refused.retryAfterMs > 0, `retryAfterMs ${refused.retryAfterMs}`);
  assert.ok(refusedInMs < refused.retryAfterMs, `refused after ${refusedInMs} ms: it waited for a retry`);
  assert.deepEqual(retries, [], 'an increment is never retried');
  // The refused increment was not applied, nor repeated behind the caller's back.
  assert.equal((await app.cache.get(key)).toString(), String(applied));

  // Still over budget: a get waits as the server advises, and then succeeds.
  assert.equal((await metered.cache.get(key)).toString(), String(applied));
  assert.ok(retries.length >= 1, 'the get was retried');
  for (const retry of retries) {
    assert.equal(retry.method, 'CacheService/Get');
    assert.equal(retry.error.reason, 'CLIENT_RATE_LIMITED');
    assert.ok(retry.delayMs >= retry.error.retryAfterMs);
  }
});
