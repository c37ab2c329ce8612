// What the tests share: the service clients/run started, and ways to wait without sleeping.
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { Client } from 'cachelock';

export const ADDR = process.env.CACHELOCK_ADDR ?? 'localhost:50051';
export const TOKEN = process.env.CACHELOCK_TOKEN;
export const METERED_TOKEN = process.env.CACHELOCK_METERED_TOKEN;
export const READER_TOKEN = process.env.CACHELOCK_READER_TOKEN;

/** A client of the app (every service allowed), or with other options. */
export function connect(options = {}) {
  return new Client(ADDR, { token: TOKEN, ...options });
}

/** A name no other test (or earlier run) uses. */
export function unique(prefix) {
  return `${prefix}-${randomUUID()}`;
}

/** Takes a lock away behind the service's back: deletes its keys in Redis. */
export function deleteLockKeys(name) {
  const redis = (...args) =>
    execFileSync('redis-cli', ['-p', process.env.CACHELOCK_REDIS_PORT, ...args], { encoding: 'utf8' });
  const keys = redis('--scan', '--pattern', `*:lock:*:${name}`).split('\n').filter(Boolean);
  if (keys.length === 0) throw new Error(`no lock keys for ${name} in Redis`);
  for (const key of keys) redis('DEL', key);
}

/** Resolves when `signal` aborts; rejects if it has not within `ms`. */
export function aborted(signal, ms = 10_000) {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return resolve(signal.reason);
    const timer = setTimeout(() => reject(new Error(`not aborted within ${ms} ms`)), ms);
    signal.addEventListener('abort', () => (clearTimeout(timer), resolve(signal.reason)), { once: true });
  });
}

/** Polls `condition` until it holds; rejects if it has not within `ms`. */
export async function eventually(condition, ms = 5000) {
  const until = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > until) throw new Error(`condition not met within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
