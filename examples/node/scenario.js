// A backend's day with cachelock, from Node: a login guarded by a rate limit that
// starts a session, a cached lookup, and a job under a lock with its fencing token;
// and what each kind of failure looks like to the caller.
//
//   npm install && CACHELOCK_ADDR=localhost:50051 node scenario.js
'use strict';

const assert = require('assert/strict');
const { randomUUID } = require('crypto');
const { clients, enumValue, seconds, call, expectError } = require('./cachelock');

async function login({ limits, sessions }, user, device) {
  // 5 attempts per user per 15 minutes; fail closed: no login while limits cannot be checked.
  const decision = await call(limits, 'Check', {
    key: `login:${user}`,
    limit: '5', // uint64: a decimal string (or a Number below 2^53)
    period: seconds(15 * 60),
    onUnavailable: enumValue('cachelock.ratelimit.v1.OutagePolicy', 'OUTAGE_POLICY_FAIL_CLOSED'),
  });
  if (!decision.allowed) {
    throw new Error(`too many attempts; retry in ${decision.retryAfter.seconds}s`);
  }
  // (check the password here)
  const { session } = await call(sessions, 'Create', {
    userId: user,
    attributes: { role: 'reader' },
    idleTimeout: seconds(30 * 60),
    absoluteTimeout: seconds(12 * 3600),
    client: { deviceLabel: device },
  });
  // A new id after login: an id planted before it (session fixation) is worthless.
  const rotated = await call(sessions, 'Rotate', { id: session.id });
  return { session: rotated.session, decision };
}

async function cachedProfile({ cache }, user, loads) {
  const key = `profile:${user}`;
  const hit = await call(cache, 'Get', { key });
  if (hit.found) return hit.value; // a Buffer
  loads.push(user);
  const value = Buffer.from(JSON.stringify({ user, plan: 'pro' })); // bytes: always a Buffer
  await call(cache, 'Set', { key, value, ttl: seconds(60) });
  return value;
}

async function main() {
  const services = clients(process.env.CACHELOCK_ADDR || 'localhost:50051');
  const { cache, locks, sessions } = services;
  const run = randomUUID().slice(0, 8); // keeps runs against one Redis apart

  console.log('login');
  const user = `bob-${run}`;
  const { session, decision } = await login(services, user, 'Safari on macOS');
  assert.equal(decision.remaining, '4');
  const read = (await call(sessions, 'Get', { id: session.id, touch: true })).session;
  assert.equal(read.userId, user);
  assert.equal(read.attributes.role, 'reader');
  console.log(`  session for ${read.userId}, version ${read.version}`);

  console.log('cached lookup');
  const loads = [];
  const first = await cachedProfile(services, user, loads);
  const second = await cachedProfile(services, user, loads);
  assert.ok(Buffer.isBuffer(second) && first.equals(second));
  assert.deepEqual(loads, [user]);
  console.log(`  loaded once, then served from the cache: ${second.toString()}`);

  console.log('a job under a lock');
  const name = `nightly-report-${run}`;
  const grant = await call(locks, 'Acquire', { name, ttl: seconds(10), waitTimeout: seconds(2), owner: 'worker-1' }, 5000);
  assert.ok(grant.acquired);
  // Fencing tokens are uint64 and arrive as decimal strings: compare them as BigInt.
  // As strings "9" > "10"; as Numbers, tokens above 2^53 lose their last digits.
  const token = BigInt(grant.fencingToken);
  assert.ok(token > 0n);
  const renewed = await call(locks, 'Extend', { name, token: grant.token, ttl: seconds(10) });
  assert.equal(BigInt(renewed.fencingToken), token);
  await call(locks, 'Release', { name, token: grant.token });
  console.log(`  done under fencing token ${token}`);

  console.log('errors a client branches on');
  const bad = await expectError(
    call(cache, 'Set', { key: 'k', value: Buffer.from('v'), ttl: seconds(0) }),
    'INVALID_ARGUMENT',
    'INVALID_FIELD',
  );
  assert.deepEqual(Object.keys(bad.violations), ['ttl']);
  assert.throws(
    () => enumValue('cachelock.ratelimit.v1.OutagePolicy', 'OUTAGE_POLICY_FAIL_CLOSD'),
    /is not a cachelock.ratelimit.v1.OutagePolicy/,
  );

  // A lease that ran out: LOCK_NOT_HELD while the lock is free, LEASE_LOST once
  // someone else holds it, whose fencing token is higher.
  const short = await call(locks, 'Acquire', { name: `${name}-short`, ttl: seconds(0.1) });
  await new Promise((resolve) => setTimeout(resolve, 300));
  await expectError(
    call(locks, 'Extend', { name: `${name}-short`, token: short.token, ttl: seconds(10) }),
    'FAILED_PRECONDITION',
    'LOCK_NOT_HELD',
  );
  const successor = await call(locks, 'Acquire', { name: `${name}-short`, ttl: seconds(10) });
  assert.ok(BigInt(successor.fencingToken) > BigInt(short.fencingToken));
  await expectError(
    call(locks, 'Release', { name: `${name}-short`, token: short.token }),
    'FAILED_PRECONDITION',
    'LEASE_LOST',
  );

  // Two writers of one session: the second one's expected version is stale.
  await call(sessions, 'Update', { id: session.id, set: { cart: '1' }, expectedVersion: read.version });
  await expectError(
    call(sessions, 'Update', { id: session.id, set: { cart: '2' }, expectedVersion: read.version }),
    'ABORTED',
    'VERSION_CONFLICT',
  );

  await call(cache, 'Set', { key: `name-${run}`, value: Buffer.from('bob'), ttl: seconds(60) });
  await expectError(
    call(cache, 'Increment', { key: `name-${run}`, delta: '1' }),
    'FAILED_PRECONDITION',
    'NOT_AN_INTEGER',
  );

  await call(sessions, 'Delete', { id: session.id });
  await expectError(call(sessions, 'Get', { id: session.id }), 'NOT_FOUND', 'SESSION_NOT_FOUND');
  console.log('node scenario: ok');
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
