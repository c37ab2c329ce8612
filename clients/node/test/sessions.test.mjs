import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { inspect } from 'node:util';
import { FencedOut, Session, SessionNotFound, VersionConflict } from 'cachelock';
import { connect, unique } from './support.mjs';

const client = connect();
after(() => client.close());

test('a session from login to logout', async () => {
  const user = unique('user');
  const session = await client.sessions.create(user, {
    attributes: { role: 'reader' },
    idleTimeoutMs: 30 * 60_000,
    absoluteTimeoutMs: 12 * 3_600_000,
    deviceLabel: 'Firefox on Linux',
  });
  assert.ok(session instanceof Session);
  assert.ok(session.id.length > 0 && session.handle.length > 0);
  assert.equal(session.version, 1n);
  assert.equal(session.idleTimeoutMs, 30 * 60_000);
  assert.equal(session.client.deviceLabel, 'Firefox on Linux');
  assert.ok(session.expiresAt instanceof Date);

  const read = await client.sessions.get(session.id, { touch: true });
  assert.deepEqual(read.attributes, { role: 'reader' });
  const updated = await client.sessions.update(session.id, { set: { theme: 'dark' }, remove: ['role'], expectedVersion: 1n });
  assert.equal(updated.version, 2n);
  assert.deepEqual(updated.attributes, { theme: 'dark' });
  await assert.rejects(client.sessions.update(session.id, { set: { a: 'b' }, expectedVersion: 1 }), VersionConflict);
  assert.ok((await client.sessions.touch(session.id)) instanceof Date);

  const rotated = await client.sessions.rotate(session.id);
  assert.notEqual(rotated.id, session.id);
  assert.equal(rotated.handle, session.handle);
  await assert.rejects(client.sessions.get(session.id), SessionNotFound);

  const other = await client.sessions.create(user);
  const third = await client.sessions.create(user);
  const listed = await client.sessions.list(user);
  assert.equal(listed.length, 3);
  assert.ok(listed.every((entry) => entry.id === '' && entry.handle !== ''));
  await client.sessions.deleteByHandle(user, other.handle);
  await assert.rejects(client.sessions.get(other.id), SessionNotFound);
  assert.equal(await client.sessions.deleteAll(user, { exceptId: rotated.id }), 1);
  await assert.rejects(client.sessions.get(third.id), SessionNotFound);
  await client.sessions.delete(rotated.id);
  await assert.rejects(client.sessions.get(rotated.id), SessionNotFound);
  assert.equal(await client.sessions.deleteAll(user), 0);
});

test('a session id shows in no string form of a Session', async () => {
  const session = await client.sessions.create(unique('user'));
  for (const text of [inspect(session, { depth: 10, showHidden: true }), JSON.stringify(session), String(session), `${session}`]) {
    assert.ok(!text.includes(session.id), text);
    assert.ok(text.includes(session.handle), text);
  }
  await client.sessions.delete(session.id);
});

test('a fenced update: refused for an old grant of the user\'s lock, applied for the new one', async () => {
  const user = unique('u');
  const session = await client.sessions.create(user, { attributes: { cart: '1' } });
  // The lock named by the user id: it lives in the session's slot.
  const old = await client.locks.acquire(user, { ttlMs: 100 });
  // Granted once the old lease ran out (the server's wait, no sleep).
  const lease = await client.locks.hold(user, { ttlMs: 10_000, waitMs: 30_000 });
  try {
    assert.ok(lease.fencingToken > old.fencingToken);
    assert.deepEqual(lease.fence, { lock: user, fencingToken: lease.fencingToken });
    await assert.rejects(client.sessions.fenced(old.fence).update(session.id, { set: { cart: 'stale' } }), FencedOut);
    const unchanged = await client.sessions.get(session.id);
    assert.deepEqual(unchanged.attributes, { cart: '1' });
    assert.equal(unchanged.version, session.version);
    const updated = await client.sessions.fenced(lease).update(session.id, { set: { cart: '2' } });
    assert.deepEqual(updated.attributes, { cart: '2' });
    assert.equal(updated.version, session.version + 1n);
    assert.deepEqual((await client.sessions.get(session.id)).attributes, { cart: '2' });
  } finally {
    await lease.release();
  }
});
