// cachelock.cache.v1.CacheService: byte values under string keys, and `cached`, a
// function wrapper that fills a missing key once for the whole fleet.
import { duration, enumValue, int64, millis, toBytes, type Duration, type Value } from './convert.js';
import { LeaseLost } from './errors.js';
import { fenceMessage, fenceOf, type Fence, type Fenceable, type FenceMessage } from './fence.js';
import type { CallOptions, Transport } from './transport.js';

/** When a Set may store its value. */
export type SetCondition = 'always' | 'ifAbsent' | 'ifPresent';

const CONDITIONS: Readonly<Record<SetCondition, string>> = {
  always: 'SET_CONDITION_ALWAYS',
  ifAbsent: 'SET_CONDITION_IF_ABSENT',
  ifPresent: 'SET_CONDITION_IF_PRESENT',
};

/** What a GetOrLease answered: see `LeaseResult`. */
export type LeaseOutcome = 'hit' | 'stale' | 'lease' | 'miss';

const OUTCOMES: Readonly<Record<string, LeaseOutcome>> = {
  LEASE_OUTCOME_HIT: 'hit',
  LEASE_OUTCOME_STALE: 'stale',
  LEASE_OUTCOME_LEASE: 'lease',
  LEASE_OUTCOME_MISS: 'miss',
};

export interface SetOptions extends CallOptions {
  /** How long to keep the value; the service's default ttl when not given. */
  ttlMs?: number;
  /** When to store: always (the default), only if the key is absent, or only if present. */
  condition?: SetCondition;
  /** Keeps a copy readable by GetOrLease as stale this long after ttlMs runs out. */
  staleTtlMs?: number;
  /** Fills a GetOrLease lease: stored only while the lease is this token's, else LeaseLost. */
  leaseToken?: string;
}

export interface GetOrLeaseOptions extends CallOptions {
  /** The fill lease this caller gets if it is the one to fill; the server's 10 s when not given. */
  leaseTtlMs?: number;
  /**
   * How long to wait for another caller's fill (0: answer MISS at once). Default: the
   * fill lease's ttl, so that a filler that dies is replaced before its waiters give up.
   * Given explicitly, so that the call's deadline is known: timeoutMs plus this wait.
   */
  waitMs?: number;
  /** Early refresh: below this fraction of its ttl left, one caller gets a lease with the value. */
  refreshAhead?: number;
}

/** What `cached` needs to store a function's results. */
export interface Serializer<T> {
  serialize(value: T): Value;
  deserialize(data: Buffer): T;
}

export interface CachedOptions<T> extends GetOrLeaseOptions {
  /** How long a filled value is kept. */
  ttlMs: number;
  /** Keeps a stale copy this long after ttlMs, served while one caller refreshes it. */
  staleTtlMs?: number;
  /** How values are stored; JSON (as UTF-8 text) unless given. */
  serializer?: Serializer<T>;
}

/** The fill lease when none is given, as the server's default. */
const DEFAULT_LEASE_TTL_MS = 10_000;

/** JSON as UTF-8 text: the default serializer of `cached`. */
export const json: Serializer<unknown> = {
  serialize(value) {
    const text = JSON.stringify(value);
    if (text === undefined) throw new TypeError(`${typeof value} cannot be cached as JSON`);
    return text;
  },
  deserialize: (data) => JSON.parse(data.toString('utf8')) as unknown,
};

/**
 * What a GetOrLease answered. `outcome` is 'hit' (the value, fresh), 'stale' (an
 * expired copy while another caller fills it), 'lease' (this caller must fill the key:
 * Set with `leaseToken`) or 'miss' (the wait ended with no fill). The lease token is a
 * secret and shows in no string form of this object.
 */
export class LeaseResult {
  /** What was found. */
  readonly outcome: LeaseOutcome;
  /** The value (hit, stale, and lease when a stale copy is kept); null when none. */
  readonly value: Buffer | null;
  /** Hit: the value's ttl left; stale or lease with a value: how long the stale copy is kept. */
  readonly ttlMs: number | null;
  /** The lease left: this caller's (with a token), or the filling caller's (stale, miss). */
  readonly leaseTtlMs: number | null;
  readonly #leaseToken: string | null;

  constructor(response: GetOrLeaseResponse) {
    this.outcome = OUTCOMES[response.outcome] ?? 'miss';
    this.value = response.found ? response.value : null;
    this.ttlMs = millis(response.ttl);
    this.leaseTtlMs = millis(response.leaseTtl);
    this.#leaseToken = response.leaseToken === '' ? null : response.leaseToken;
  }

  /** The fill lease's token, for `set(key, value, { leaseToken })`: for a lease, and a hit chosen to refresh. */
  get leaseToken(): string | null {
    return this.#leaseToken;
  }
}

interface GetOrLeaseResponse {
  outcome: string;
  found: boolean;
  value: Buffer;
  ttl: Duration | null;
  leaseToken: string;
  leaseTtl: Duration | null;
}

/**
 * The cache, as `client.cache`. `fenced(fence)` gives the same cache with every write
 * fenced (see `fenced`).
 */
export class Cache {
  readonly #transport: Transport;
  /** The fence every write of this view carries; undefined: unconditional writes. */
  readonly fence: Fence | undefined;
  readonly #fence: FenceMessage | undefined;

  /** @internal */
  constructor(transport: Transport, fence?: Fence) {
    this.#transport = transport;
    this.fence = fence;
    this.#fence = fenceMessage(fence);
  }

  /**
   * The same cache with every write (set, setMany, delete, take, increment, expire)
   * fenced by `fence` (a Fence, a Lease or a LockGrant): applied only while no grant of
   * its lock is newer, else FencedOut and nothing changed. Reads, and the fill of
   * `cached`, are unchanged.
   */
  fenced(fence: Fenceable): Cache {
    return new Cache(this.#transport, fenceOf(fence));
  }

  /** The value of `key`, or null when it does not exist. */
  async get(key: string, options: CallOptions = {}): Promise<Buffer | null> {
    const response = await this.#transport.unary<{ found: boolean; value: Buffer }>('cache', 'Get', { key }, options);
    return response.found ? response.value : null;
  }

  /** The values of `keys` in one round trip: each key asked for, null when missing. */
  async getMany(keys: Iterable<string>, options: CallOptions = {}): Promise<Map<string, Buffer | null>> {
    const response = await this.#transport.unary<{ entries: { key: string; found: boolean; value: Buffer }[] }>(
      'cache',
      'GetMany',
      { keys: [...keys] },
      options,
    );
    return new Map(response.entries.map((entry) => [entry.key, entry.found ? entry.value : null]));
  }

  /**
   * Stores `value` (a string is stored as its UTF-8 bytes). Answers false only when the
   * condition did not hold.
   */
  async set(key: string, value: Value, options: SetOptions = {}): Promise<boolean> {
    return this.#set(key, value, options, this.#fence);
  }

  async #set(key: string, value: Value, options: SetOptions, fence: FenceMessage | undefined): Promise<boolean> {
    const request = {
      key,
      value: toBytes(value),
      ttl: duration(options.ttlMs, 'ttlMs'),
      condition: enumValue(CONDITIONS, options.condition, 'condition'),
      staleTtl: duration(options.staleTtlMs, 'staleTtlMs'),
      leaseToken: options.leaseToken,
      fence,
    };
    const response = await this.#transport.unary<{ stored: boolean }>('cache', 'Set', request, options);
    return response.stored;
  }

  /** Stores several values atomically, all with `ttlMs`; answers how many were stored. */
  async setMany(
    entries: Iterable<readonly [string, Value]> | Readonly<Record<string, Value>>,
    options: CallOptions & { ttlMs?: number } = {},
  ): Promise<number> {
    const pairs = Symbol.iterator in entries ? [...(entries as Iterable<readonly [string, Value]>)] : Object.entries(entries);
    const ttl = duration(options.ttlMs, 'ttlMs');
    const request = { entries: pairs.map(([key, value]) => ({ key, value: toBytes(value), ttl })), fence: this.#fence };
    const response = await this.#transport.unary<{ stored: number }>('cache', 'SetMany', request, options);
    return response.stored;
  }

  /** Removes keys; answers how many of them existed. */
  async delete(...keys: string[]): Promise<number> {
    const response = await this.#transport.unary<{ deleted: number }>('cache', 'Delete', { keys, fence: this.#fence });
    return response.deleted;
  }

  /** Reads and deletes `key` in one step: exactly one caller receives a stored value. */
  async take(key: string, options: CallOptions = {}): Promise<Buffer | null> {
    const response = await this.#transport.unary<{ found: boolean; value: Buffer }>('cache', 'Take', { key, fence: this.#fence }, options);
    return response.found ? response.value : null;
  }

  /**
   * Adds `delta` to the integer counter at `key` (created at 0, with `ttlMs`); answers
   * its new value. Never retried: a repeat would add twice.
   */
  async increment(key: string, delta: bigint | number = 1n, options: CallOptions & { ttlMs?: number } = {}): Promise<bigint> {
    const request = { key, delta: int64(delta, 'delta'), ttl: duration(options.ttlMs, 'ttlMs'), fence: this.#fence };
    const response = await this.#transport.unary<{ value: string }>('cache', 'Increment', request, options);
    return BigInt(response.value);
  }

  /** Gives an existing key a new time to live; false when the key does not exist. */
  async expire(key: string, ttlMs: number, options: CallOptions = {}): Promise<boolean> {
    const request = { key, ttl: duration(ttlMs, 'ttlMs'), fence: this.#fence };
    const response = await this.#transport.unary<{ found: boolean }>('cache', 'Expire', request, options);
    return response.found;
  }

  /**
   * Reads `key`, or gets the lease to fill it while every other caller waits in the
   * server for that fill. Never retried: a repeat could take a second lease.
   */
  async getOrLease(key: string, options: GetOrLeaseOptions = {}): Promise<LeaseResult> {
    // Waiting as long as the fill lease lasts: a filler that dies is replaced
    // before its waiters give up.
    const waitMs = options.waitMs ?? options.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS;
    const request = {
      key,
      leaseTtl: duration(options.leaseTtlMs, 'leaseTtlMs'),
      wait: duration(waitMs, 'waitMs'),
      refreshAhead: options.refreshAhead,
    };
    const response = await this.#transport.unary<GetOrLeaseResponse>('cache', 'GetOrLease', request, {
      ...options,
      waitMs,
    });
    return new LeaseResult(response);
  }

  /**
   * Wraps `fn` so that its results are cached under a key made from its arguments, and
   * a missing key is filled by one caller in the whole fleet while the others wait for
   * its value (GetOrLease). `key` is a template such as "price:{sku}", filled from the
   * first argument's properties, or a function of the arguments.
   *
   * On a hit (or a stale copy) the stored value is returned; with the lease, `fn` runs
   * and its result is stored; when the wait ends with no fill, `fn` runs and nothing is
   * stored. Every caller gets the value as the serializer gives it back, so that the
   * filling caller sees what the waiting ones see. If `fn` fails, the lease is simply
   * not filled: waiters wait until it runs out (`leaseTtlMs`) and the next caller fills.
   */
  cached<Args extends unknown[], T>(
    key: string | ((...args: Args) => string),
    options: CachedOptions<T>,
    fn: (...args: Args) => T | Promise<T>,
  ): (...args: Args) => Promise<T> {
    const serializer = options.serializer ?? (json as Serializer<T>);
    const keyOf = typeof key === 'function' ? key : (...args: Args) => fillTemplate(key, args[0]);
    // Validated now, not at the first call.
    duration(options.ttlMs, 'ttlMs');
    const store = async (cacheKey: string, value: T, leaseToken: string): Promise<T> => {
      const data = toBytes(serializer.serialize(value));
      try {
        // Never fenced: the fill lease guards it.
        const fill = { ttlMs: options.ttlMs, staleTtlMs: options.staleTtlMs, leaseToken, timeoutMs: options.timeoutMs };
        await this.#set(cacheKey, data, fill, undefined);
      } catch (error) {
        // The lease ran out (or was passed on) while fn ran: the value is right all the
        // same, only not stored; another caller fills the key.
        if (!(error instanceof LeaseLost)) throw error;
      }
      return serializer.deserialize(data);
    };
    return async (...args: Args): Promise<T> => {
      const cacheKey = keyOf(...args);
      const found = await this.getOrLease(cacheKey, options);
      const token = found.leaseToken;
      switch (found.outcome) {
        case 'hit':
        case 'stale':
          if (found.value === null) break; // never sent with these outcomes; treated as a miss
          if (token !== null) {
            // Refresh-ahead chose this caller: the value is still good, so it is returned
            // now and refreshed behind it. A failed refresh needs no handling: the lease
            // runs out and the next caller is chosen.
            void Promise.resolve()
              .then(() => fn(...args))
              .then((value) => store(cacheKey, value, token))
              .catch(() => undefined);
          }
          return serializer.deserialize(found.value);
        case 'lease':
          if (token !== null) return store(cacheKey, await fn(...args), token);
          break;
        case 'miss':
          break;
      }
      return fn(...args);
    };
  }
}

/** "price:{sku}" with `{sku}` replaced by `argument.sku`; a missing property is an error. */
function fillTemplate(template: string, argument: unknown): string {
  return template.replace(/\{([^{}]+)\}/g, (_, name: string) => {
    const value =
      argument !== null && typeof argument === 'object' ? (argument as Record<string, unknown>)[name] : undefined;
    if (value === undefined || value === null) {
      throw new TypeError(`cache key ${JSON.stringify(template)} needs the first argument's property ${JSON.stringify(name)}`);
    }
    return String(value);
  });
}
