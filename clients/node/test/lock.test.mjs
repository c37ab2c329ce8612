import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { inspect } from 'node:util';
import { LeaseLost, LockGrant, LockNotHeld, NotAcquired } from 'cachelock';
import { aborted, connect, deleteLockKeys, eventually, unique } from './support.mjs';

const client = connect();
after(() => client.close());

test('a lease lost while held aborts its signal, and the next grant has a larger fencing token', async () => {
  const name = unique('lost');
  const lease = await client.lock(name, { ttlMs: 1500 });
  assert.equal(typeof lease.fencingToken, 'bigint');
  assert.equal(lease.lost, false);
  assert.ok(lease.certainForMs() > 0);
  lease.check();

  deleteLockKeys(name);
  const reason = await aborted(lease.signal);
  assert.ok(reason instanceof LeaseLost);
  assert.equal(lease.lost, true);
  assert.ok(['LOCK_NOT_HELD', 'LEASE_LOST'].includes(lease.lostReason), lease.lostReason);
  assert.throws(() => lease.check(), LeaseLost);
  assert.equal(lease.certainForMs(), 0);

  const next = await client.lock(name, { ttlMs: 1500 });
  assert.ok(next.fencingToken > lease.fencingToken, `${next.fencingToken} > ${lease.fencingToken}`);
  await next.release();
});

test('withLock rejects with LeaseLost when the lease was lost, even if the body resolved', async () => {
  const name = unique('withlock-lost');
  let ran = false;
  await assert.rejects(
    client.withLock(name, { ttlMs: 1500 }, async (lease) => {
      deleteLockKeys(name);
      await aborted(lease.signal);
      ran = true;
      return 'done';
    }),
    LeaseLost,
  );
  assert.ok(ran);
});

test('withLock runs the body under the lock and releases it after', async () => {
  const name = unique('withlock');
  const result = await client.withLock(name, async (lease) => {
    const described = await client.locks.describe(name);
    assert.equal(described.held, true);
    assert.equal(described.fencingToken, lease.fencingToken);
    return 42;
  });
  assert.equal(result, 42);
  await eventually(async () => !(await client.locks.describe(name)).held);
});

test('`await using` releases the lease at the end of the block', async () => {
  const name = unique('using');
  let body;
  try {
    // The syntax itself where this Node has it (22.x+ with the flag, 24+)…
    body = new (async () => {}).constructor(
      'client',
      'name',
      'await using lease = await client.lock(name); return (await client.locks.describe(name)).held;',
    );
  } catch (error) {
    if (!(error instanceof SyntaxError)) throw error;
    // …else what it does: call [Symbol.asyncDispose] when the block ends.
    body = async (client, name) => {
      const lease = await client.lock(name);
      try {
        return (await client.locks.describe(name)).held;
      } finally {
        await lease[Symbol.asyncDispose]();
      }
    };
  }
  assert.equal(await body(client, name), true);
  await eventually(async () => !(await client.locks.describe(name)).held);
});

test('a lock whose wait ends without it rejects with NotAcquired', async () => {
  const name = unique('busy');
  const lease = await client.lock(name, { ttlMs: 5000 });
  try {
    const error = await client.lock(name, { waitMs: 200 }).then(
      () => assert.fail('acquired a held lock'),
      (error) => error,
    );
    assert.ok(error instanceof NotAcquired, inspect(error));
    assert.ok(error.holderTtlMs > 0);
  } finally {
    await lease.release();
  }
});

test('raw acquire, extend, describe and release', async () => {
  const name = unique('raw');
  const grant = await client.locks.acquire(name, { ttlMs: 5000, owner: 'tests' });
  assert.ok(grant instanceof LockGrant);
  assert.equal(typeof grant.fencingToken, 'bigint');
  assert.ok(grant.expiresAt instanceof Date);
  const described = await client.locks.describe(name);
  assert.equal(described.owner, 'tests');
  assert.equal(described.fencingToken, grant.fencingToken);
  assert.ok((await client.locks.extend(grant, 8000)) instanceof Date);
  await assert.rejects(client.locks.acquire(name, { ttlMs: 5000 }), NotAcquired);
  await client.locks.release(grant);
  await client.locks.release(grant); // a repeated release is safe: its answer may have been lost
  assert.equal((await client.locks.describe(name)).held, false);
});

test('releasing a grant taken over by another: LeaseLost; one nobody holds: LockNotHeld', async () => {
  const name = unique('taken');
  const first = await client.locks.acquire(name, { ttlMs: 5000 });
  deleteLockKeys(name);
  await assert.rejects(client.locks.extend(first, 5000), LockNotHeld);
  const second = await client.locks.acquire(name, { ttlMs: 5000 });
  assert.ok(second.fencingToken > first.fencingToken);
  await assert.rejects(client.locks.release(first), LeaseLost);
  await client.locks.release(second);
});
