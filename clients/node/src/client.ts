// The client: one channel to cachelock, and the services on it.
import { inspect } from 'node:util';
import { Cache } from './cache.js';
import { Elections, type CampaignOptions, type Leadership } from './election.js';
import { Locks, type Lease, type LockOptions } from './lock.js';
import { PubSub } from './pubsub.js';
import { RateLimits } from './ratelimit.js';
import type { RetryEvent } from './retry.js';
import { Sessions } from './sessions.js';
import { Transport, type TlsOptions } from './transport.js';

export interface ClientOptions {
  /** The bearer token of the service's auth file, sent with every call. */
  token?: string;
  /** TLS: true for the system's CAs, or a CA bundle and a client certificate (mTLS). Plaintext when not given. */
  tls?: TlsOptions | true;
  /** The deadline of every call, in milliseconds, unless the call gives its own. Default 5000. */
  timeoutMs?: number;
  /** Told before each retry (see clients/README.md for when a call is retried). */
  onRetry?: (event: RetryEvent) => void;
}

/**
 * A connection to cachelock.
 *
 * @example
 * const client = new Client('localhost:50051', { token: process.env.CACHELOCK_TOKEN });
 * await client.cache.set('greeting', 'hello', { ttlMs: 60_000 });
 * await client.withLock('nightly-report', async (lease) => report(lease.fencingToken));
 * client.close();
 */
export class Client {
  /** The service's address, host:port. */
  readonly address: string;
  /** The cache. */
  readonly cache: Cache;
  /** Rate limits. */
  readonly rateLimit: RateLimits;
  /** Server-side sessions. */
  readonly sessions: Sessions;
  /** The raw lock calls; `lock` and `withLock` are what most code wants. */
  readonly locks: Locks;
  /** Leader election's raw calls (resign, leader, observe); `campaign` and `withLeadership` are what most code wants. */
  readonly elections: Elections;
  /** Publish/subscribe. */
  readonly pubsub: PubSub;
  readonly #transport: Transport;

  constructor(address: string, options: ClientOptions = {}) {
    this.address = address;
    this.#transport = new Transport(address, {
      token: options.token,
      tls: options.tls,
      timeoutMs: options.timeoutMs ?? 5000,
      onRetry: options.onRetry,
    });
    this.cache = new Cache(this.#transport);
    this.rateLimit = new RateLimits(this.#transport);
    this.sessions = new Sessions(this.#transport);
    this.locks = new Locks(this.#transport);
    this.elections = new Elections(this.#transport);
    this.pubsub = new PubSub(this.#transport);
  }

  /**
   * Takes a lock and keeps it until `release()` (or the end of an `await using` block).
   * Rejects with NotAcquired when the wait ends without it.
   *
   * @example
   * await using lease = await client.lock('invoice:42', { ttlMs: 15_000 });
   * await db.write(row, { fencingToken: lease.fencingToken, signal: lease.signal });
   */
  lock(name: string, options: LockOptions = {}): Promise<Lease> {
    return this.locks.hold(name, options);
  }

  /**
   * Runs `fn` under a lock, and releases it after. `lease.signal` aborts the moment the
   * lease is lost; and then this rejects with LeaseLost, even if `fn` resolved, so that
   * work done after a loss is never taken for protected.
   */
  withLock<T>(name: string, fn: (lease: Lease) => Promise<T>): Promise<T>;
  withLock<T>(name: string, options: LockOptions, fn: (lease: Lease) => Promise<T>): Promise<T>;
  async withLock<T>(
    name: string,
    optionsOrFn: LockOptions | ((lease: Lease) => Promise<T>),
    maybeFn?: (lease: Lease) => Promise<T>,
  ): Promise<T> {
    const [options, fn] = typeof optionsOrFn === 'function' ? [{}, optionsOrFn] : [optionsOrFn, maybeFn];
    if (fn === undefined) throw new TypeError('withLock needs a function to run');
    const lease = await this.lock(name, options);
    try {
      const result = await fn(lease);
      lease.check();
      return result;
    } catch (error) {
      // A body that failed because the lease was lost (its signal aborted) failed for that reason.
      lease.check();
      throw error;
    } finally {
      await lease.release();
    }
  }

  /**
   * Waits in line to lead the election `name` (for as long as it takes; abort
   * `options.signal` to give up) and resolves once elected; the leadership is kept until
   * `resign()` (or the end of an `await using` block).
   *
   * @example
   * await using leader = await client.campaign('{scheduler}', { candidate: hostname(), ttlMs: 10_000 });
   * await client.cache.fenced(leader).set('{scheduler}:plan', plan); // FencedOut once the term is over
   */
  campaign(name: string, options: CampaignOptions = {}): Promise<Leadership> {
    return this.elections.campaign(name, options);
  }

  /**
   * Runs `fn` as the leader of `name`, once elected, and resigns after. `leader.signal`
   * aborts the moment the leadership is lost; and then this rejects with LeaseLost, even
   * if `fn` resolved, so that work done after a loss is never taken for the leader's.
   */
  withLeadership<T>(name: string, fn: (leader: Leadership) => Promise<T>): Promise<T>;
  withLeadership<T>(name: string, options: CampaignOptions, fn: (leader: Leadership) => Promise<T>): Promise<T>;
  async withLeadership<T>(
    name: string,
    optionsOrFn: CampaignOptions | ((leader: Leadership) => Promise<T>),
    maybeFn?: (leader: Leadership) => Promise<T>,
  ): Promise<T> {
    const [options, fn] = typeof optionsOrFn === 'function' ? [{}, optionsOrFn] : [optionsOrFn, maybeFn];
    if (fn === undefined) throw new TypeError('withLeadership needs a function to run');
    const leader = await this.campaign(name, options);
    try {
      const result = await fn(leader);
      leader.check();
      return result;
    } catch (error) {
      leader.check();
      throw error;
    } finally {
      await leader.resign();
    }
  }

  /** Closes the channel; calls and streams still open fail. */
  close(): void {
    this.#transport.close();
  }

  toJSON(): object {
    return { address: this.address };
  }

  toString(): string {
    return `Client(${this.address})`;
  }

  [inspect.custom](): string {
    return `Client { address: ${inspect(this.address)} }`;
  }
}
