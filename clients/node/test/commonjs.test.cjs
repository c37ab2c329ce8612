// The CommonJS entry: require('cachelock') works, with the same surface.
const assert = require('node:assert/strict');
const { after, test } = require('node:test');
const { Client, CachelockError, InvalidField } = require('cachelock');

const client = new Client(process.env.CACHELOCK_ADDR, { token: process.env.CACHELOCK_TOKEN });
after(() => client.close());

test('require("cachelock") round-trips a value and decodes errors', async () => {
  const key = `cjs-${require('node:crypto').randomUUID()}`;
  assert.equal(await client.cache.set(key, 'from CommonJS', { ttlMs: 60_000 }), true);
  assert.equal((await client.cache.get(key)).toString(), 'from CommonJS');
  const error = await client.cache.set(key, 'v', { ttlMs: 0 }).catch((error) => error);
  assert.ok(error instanceof InvalidField && error instanceof CachelockError, String(error));
  assert.equal(error.field, 'ttl');
  assert.equal(require('cachelock/package.json').version, '1.0.0');
});
