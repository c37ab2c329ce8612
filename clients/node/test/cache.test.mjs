import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { FencedOut, LeaseResult, NotAnInteger } from 'cachelock';
import { connect, unique } from './support.mjs';

const client = connect();
after(() => client.close());

test('values round-trip: Buffer, Uint8Array and UTF-8 text', async () => {
  const key = unique('bytes');
  const bytes = Buffer.from([0, 1, 2, 255]);
  assert.equal(await client.cache.set(key, bytes, { ttlMs: 60_000 }), true);
  assert.deepEqual(await client.cache.get(key), bytes);
  assert.equal(await client.cache.set(key, new Uint8Array([7, 8])), true);
  assert.deepEqual(await client.cache.get(key), Buffer.from([7, 8]));
  // A string is text, never base64: "aGk=" stays those four characters.
  await client.cache.set(key, 'aGk= héllo');
  assert.equal((await client.cache.get(key)).toString('utf8'), 'aGk= héllo');
  assert.equal(await client.cache.get(unique('missing')), null);
});

test('conditions, getMany, setMany, delete, take, expire', async () => {
  const [a, b, c] = [unique('a'), unique('b'), unique('c')];
  assert.equal(await client.cache.set(a, 'x', { condition: 'ifPresent' }), false);
  assert.equal(await client.cache.set(a, 'x', { condition: 'ifAbsent', ttlMs: 60_000 }), true);
  assert.equal(await client.cache.set(a, 'y', { condition: 'ifAbsent' }), false);
  assert.equal(await client.cache.setMany({ [b]: 'B', [c]: Buffer.from('C') }, { ttlMs: 60_000 }), 2);
  const many = await client.cache.getMany([a, b, c, unique('none')]);
  assert.deepEqual([...many.values()].map((value) => value?.toString() ?? null), ['x', 'B', 'C', null]);
  assert.equal(await client.cache.expire(a, 30_000), true);
  assert.equal(await client.cache.expire(unique('none'), 30_000), false);
  assert.equal((await client.cache.take(b)).toString(), 'B');
  assert.equal(await client.cache.take(b), null);
  assert.equal(await client.cache.delete(a, b, c), 2);
});

test('increment counts exactly, as bigint', async () => {
  const key = unique('counter');
  assert.equal(await client.cache.increment(key), 1n);
  assert.equal(await client.cache.increment(key, 2n ** 53n), 2n ** 53n + 1n);
  assert.equal(await client.cache.increment(key, -1), 2n ** 53n);
  await client.cache.set(key, 'text');
  await assert.rejects(client.cache.increment(key), NotAnInteger);
  await assert.rejects(client.cache.increment(key, 1.5), RangeError);
});

test('getOrLease: a lease on a miss, filled with its token, then a hit', async () => {
  const key = unique('lease');
  const first = await client.cache.getOrLease(key, { waitMs: 0 });
  assert.ok(first instanceof LeaseResult);
  assert.equal(first.outcome, 'lease');
  assert.equal(typeof first.leaseToken, 'string');
  assert.equal(await client.cache.set(key, 'filled', { ttlMs: 60_000, leaseToken: first.leaseToken }), true);
  const second = await client.cache.getOrLease(key);
  assert.equal(second.outcome, 'hit');
  assert.equal(second.value.toString(), 'filled');
});

test('cached: 20 concurrent callers of a missing key run the function once', async () => {
  const sku = unique('sku');
  let calls = 0;
  const price = client.cache.cached('price:{sku}', { ttlMs: 60_000, leaseTtlMs: 5000 }, async ({ sku }) => {
    calls += 1;
    await sleep(300);
    return { sku, cents: 1999, at: calls };
  });
  const results = await Promise.all(Array.from({ length: 20 }, () => price({ sku })));
  assert.equal(calls, 1);
  for (const result of results) assert.deepEqual(result, { sku, cents: 1999, at: 1 });
  assert.deepEqual(await price({ sku }), { sku, cents: 1999, at: 1 });
  assert.equal(calls, 1, 'a later call is a hit');
  assert.equal((await client.cache.get(`price:${sku}`)).toString(), JSON.stringify(results[0]));
});

test('cached: a key function and a serializer', async () => {
  const id = unique('user');
  let calls = 0;
  const name = client.cache.cached(
    (user, suffix) => `name:${user}:${suffix}`,
    { ttlMs: 60_000, serializer: { serialize: (text) => text, deserialize: (data) => data.toString('utf8') } },
    async (user, suffix) => {
      calls += 1;
      return `${user}-${suffix}`;
    },
  );
  assert.equal(await name(id, 'x'), `${id}-x`);
  assert.equal(await name(id, 'x'), `${id}-x`);
  assert.equal(calls, 1);
  assert.throws(() => client.cache.cached('k:{a}', { ttlMs: -1 }, () => 1), RangeError);
  await assert.rejects(client.cache.cached('k:{a}', { ttlMs: 1000 }, () => 1)({}), TypeError);
});

test('fenced writes: an old grant is refused and changes nothing, the new grant writes', async () => {
  const lock = `{${unique('order')}}`;
  const [total, other] = [`${lock}:total`, `${lock}:other`];
  // The OLD grant's 100 ms lease runs out; the server grants the NEW one then (no sleep).
  const old = await client.locks.acquire(lock, { ttlMs: 100 });
  const grant = await client.locks.acquire(lock, { ttlMs: 10_000, waitMs: 30_000 });
  assert.ok(grant.fencingToken > old.fencingToken);
  assert.deepEqual(old.fence, { lock, fencingToken: old.fencingToken });
  await client.cache.set(total, '100', { ttlMs: 60_000 });

  const stale = client.cache.fenced(old);
  for (const write of [
    () => stale.set(total, '1', { ttlMs: 60_000 }),
    () => stale.increment(total, 5n),
    () => stale.delete(total),
    () => stale.setMany({ [total]: '2', [other]: '3' }, { ttlMs: 60_000 }),
    () => stale.take(total),
    () => stale.expire(total, 1000),
  ]) {
    await assert.rejects(write(), (error) => {
      assert.ok(error instanceof FencedOut, String(error));
      assert.equal(error.reason, 'FENCED_OUT');
      assert.equal(error.codeName, 'FAILED_PRECONDITION');
      return true;
    });
  }
  assert.equal((await stale.get(total)).toString(), '100', 'reads are not fenced');
  const both = await client.cache.getMany([total, other]);
  assert.deepEqual([...both.values()].map((value) => value?.toString() ?? null), ['100', null], 'nothing changed');
  assert.ok((await client.cache.getOrLease(total)).ttlMs > 30_000, 'the fenced-out expire changed nothing');

  const current = client.cache.fenced(grant.fence);
  assert.equal(await current.set(total, '200', { ttlMs: 60_000 }), true);
  assert.equal(await current.increment(total, 5n), 205n);
  assert.equal((await client.cache.get(total)).toString(), '205');
  assert.equal(await current.delete(total), 1);
  assert.equal(await client.cache.get(total), null);

  // The fill of `cached` is never fenced: a stale view still fills.
  const price = stale.cached((sku) => `${lock}:price:${sku}`, { ttlMs: 60_000 }, async () => 42);
  assert.equal(await price('a'), 42);
  assert.equal((await client.cache.get(`${lock}:price:a`)).toString(), '42');
  await client.locks.release(grant);
});
