import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { inspect } from 'node:util';
import {
  CachelockError,
  Client,
  LockNotHeld,
  PermissionDenied,
  SessionNotFound,
  Unauthenticated,
  Unavailable,
} from 'cachelock';
import { ADDR, READER_TOKEN, TOKEN, connect, deleteLockKeys, unique } from './support.mjs';

const client = connect();
after(() => client.close());

/** The error `promise` rejects with; fails if it resolves. */
const failure = (promise) => promise.then(() => assert.fail('the call succeeded'), (error) => error);

test('no token: Unauthenticated', async () => {
  const anonymous = new Client(ADDR);
  try {
    const error = await failure(anonymous.cache.get('k'));
    assert.ok(error instanceof Unauthenticated, inspect(error));
    assert.ok(error instanceof CachelockError);
    assert.equal(error.reason, 'UNAUTHENTICATED');
    assert.equal(error.codeName, 'UNAUTHENTICATED');
  } finally {
    anonymous.close();
  }
});

test('a reader setting a value: PermissionDenied', async () => {
  const reader = new Client(ADDR, { token: READER_TOKEN });
  try {
    assert.equal(await reader.cache.get(unique('k')), null);
    const error = await failure(reader.cache.set(unique('k'), 'v'));
    assert.ok(error instanceof PermissionDenied, inspect(error));
    assert.equal(error.code, 7);
  } finally {
    reader.close();
  }
});

test('an ended session: SessionNotFound', async () => {
  const session = await client.sessions.create(unique('user'));
  await client.sessions.delete(session.id);
  const error = await failure(client.sessions.get(session.id));
  assert.ok(error instanceof SessionNotFound, inspect(error));
  assert.equal(error.codeName, 'NOT_FOUND');
});

test('releasing a lease that ran out: LockNotHeld', async () => {
  const name = unique('ran-out');
  const grant = await client.locks.acquire(name, { ttlMs: 5000 });
  deleteLockKeys(name); // as if the lease had run out
  const error = await failure(client.locks.release(grant));
  assert.ok(error instanceof LockNotHeld, inspect(error));
  assert.equal(error.reason, 'LOCK_NOT_HELD');
  assert.equal(error.codeName, 'FAILED_PRECONDITION');
});

test('no service at the address: Unavailable, without a reason', async () => {
  const offline = new Client('127.0.0.1:1', { timeoutMs: 1000 });
  try {
    const error = await failure(offline.cache.get('k'));
    assert.ok(error instanceof Unavailable || error.codeName === 'DEADLINE_EXCEEDED', inspect(error));
    assert.equal(error.reason, null);
  } finally {
    offline.close();
  }
});

test('secrets show in no string form: the token, lock tokens, lease tokens', async () => {
  const forms = (value) => [inspect(value, { depth: 10, showHidden: true }), JSON.stringify(value), String(value)];
  for (const text of forms(client)) assert.ok(!text.includes(TOKEN), text);

  const grant = await client.locks.acquire(unique('secret'), { ttlMs: 5000 });
  assert.ok(grant.token.length > 0);
  for (const text of forms(grant)) assert.ok(!text.includes(grant.token), text);
  await client.locks.release(grant);

  const lease = await client.lock(unique('secret-lease'));
  for (const text of forms(lease)) assert.ok(text.includes(String(lease.fencingToken)) || text === '[object Object]', text);
  await lease.release();

  const fill = await client.cache.getOrLease(unique('secret-fill'), { waitMs: 0 });
  assert.ok(fill.leaseToken.length > 0);
  for (const text of forms(fill)) assert.ok(!text.includes(fill.leaseToken), text);
});
