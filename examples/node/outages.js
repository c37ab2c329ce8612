// What a caller sees when Redis is in trouble, and the advice that comes with it.
//
// This one breaks the Redis behind the service on purpose, so it needs a Redis of
// its own: examples/run starts one and passes its port in CACHELOCK_EXAMPLE_REDIS_PORT.
'use strict';

const assert = require('assert/strict');
const { execFileSync } = require('child_process');
const { clients, seconds, call, expectError } = require('./cachelock');

function redis(...args) {
  execFileSync('redis-cli', ['-p', process.env.CACHELOCK_EXAMPLE_REDIS_PORT, ...args]);
}

async function main() {
  const { cache } = clients(process.env.CACHELOCK_ADDR || 'localhost:50051');
  const ttl = seconds(60);
  await call(cache, 'Set', { key: 'hits', value: Buffer.from('1'), ttl });

  console.log('Redis full (maxmemory reached, no eviction)');
  redis('CONFIG', 'SET', 'maxmemory', '1');
  try {
    const full = await expectError(
      call(cache, 'Set', { key: 'more', value: Buffer.from('x'), ttl }),
      'RESOURCE_EXHAUSTED',
      'REDIS_OUT_OF_MEMORY',
    );
    assert.ok(full.retryAfterMs > 0);
  } finally {
    redis('CONFIG', 'SET', 'maxmemory', '0');
  }

  console.log('Redis refuses writes (a replica now)');
  redis('REPLICAOF', '127.0.0.1', '1');
  try {
    const refused = await expectError(
      call(cache, 'Set', { key: 'more', value: Buffer.from('x'), ttl }),
      'UNAVAILABLE',
      'REDIS_UNAVAILABLE',
    );
    assert.equal(refused.metadata.cause, 'readonly');
    assert.ok(refused.retryAfterMs > 0);
  } finally {
    redis('REPLICAOF', 'NO', 'ONE');
  }

  console.log('Redis stops answering writes while one is in flight');
  redis('CLIENT', 'PAUSE', '5000', 'WRITE');
  try {
    await expectError(call(cache, 'Increment', { key: 'hits', delta: '1' }, 3000), 'DEADLINE_EXCEEDED', 'MAY_HAVE_APPLIED');
  } finally {
    redis('CLIENT', 'UNPAUSE');
  }
  // Not retried blindly: read the counter to learn whether it applied.
  const value = await call(cache, 'Get', { key: 'hits' });
  assert.ok(value.found && ['1', '2'].includes(value.value.toString()));
  console.log('node outages: ok');
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
