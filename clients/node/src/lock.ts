// cachelock.lock.v1.LockService: a Lease held over a Hold stream, which tells its holder
// the moment it is lost, and the raw Acquire/Release/Extend/Describe.
import './dispose.js';
import { status as Status, type ClientReadableStream } from '@grpc/grpc-js';
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { date, duration, millis, type Duration, type Timestamp } from './convert.js';
import { CachelockError, DeadlineExceeded, LeaseLost, NotAcquired, toError } from './errors.js';
import type { Fence } from './fence.js';
import type { CallOptions, Transport } from './transport.js';

/**
 * Why a Lease was lost: the reason of the server's `lost` event (LEASE_LOST: another
 * token holds the lock; LOCK_NOT_HELD: the lease ran out; REDIS_UNAVAILABLE,
 * LOCKS_PAUSED, EVICTION_POLICY, SHUTTING_DOWN), STREAM_BROKEN (the stream broke or
 * ended without a word: the instance or the network is gone; cachelock's reason
 * instead when it gave one) or NOT_RENEWED (the lease's `certain_for` ran out with no
 * renewal: the instance may be frozen).
 */
export type LostReason = string;

export interface LockOptions {
  /** The lease the server keeps renewing while the lease is held. Default 10000. */
  ttlMs?: number;
  /** How long to wait for a held lock; 0 (the default): do not wait. */
  waitMs?: number;
  /** Who is asking, for Describe and people debugging: a host name, a job id. */
  owner?: string;
  /** How many holders the name allows at once (a semaphore); 1 by default. */
  permits?: number;
  /** How long before the lease could end the server says `lost`; a tenth of ttlMs by default. */
  safetyMarginMs?: number;
  /** The deadline for the grant, on top of waitMs; the client's timeoutMs by default. */
  timeoutMs?: number;
}

const DEFAULT_TTL_MS = 10_000;

interface HoldEvent {
  event: 'acquired' | 'notAcquired' | 'lost' | 'renewed';
  acquired?: { fencingToken: string; ttl: Duration | null; certainFor: Duration | null };
  notAcquired?: { ttl: Duration | null };
  lost?: { reason: string };
  renewed?: { certainFor: Duration | null };
}

/**
 * A held lock. The server renews it while the lease is held, and releases it when
 * `release()` is called (or `await using` ends, or the process dies). Pass
 * `fencingToken` with every write the lock protects. When the lease is lost, `signal`
 * aborts (its reason a LeaseLost), `lost` turns true and `check()` throws.
 */
export class Lease {
  /** The lock's name. */
  readonly name: string;
  /** This grant's fencing token: strictly larger than any earlier grant's of the name. */
  readonly fencingToken: bigint;
  readonly #stream: ClientReadableStream<HoldEvent>;
  readonly #controller = new AbortController();
  #certainUntil = 0;
  #watchdog: NodeJS.Timeout | undefined;
  #released = false;
  #lostReason: LostReason | null = null;

  /** What was lost, for the LeaseLost message: "lock" or "election". */
  readonly #kind: string;

  /** @internal Made by `Locks.hold` once the stream said `acquired` (or by a Leadership). */
  constructor(
    name: string,
    acquired: NonNullable<HoldEvent['acquired']>,
    stream: ClientReadableStream<HoldEvent>,
    kind = 'lock',
  ) {
    this.name = name;
    this.#kind = kind;
    this.fencingToken = BigInt(acquired.fencingToken);
    this.#stream = stream;
    this.#renewed(acquired.certainFor);
    stream.on('data', (event: HoldEvent) => {
      if (event.event === 'renewed') this.#renewed(event.renewed?.certainFor ?? null);
      else if (event.event === 'lost') this.#lose(event.lost?.reason || 'LEASE_LOST');
    });
    stream.on('error', (error) => {
      const failure = toError(error);
      const reason = failure instanceof CachelockError && failure.reason ? failure.reason : 'STREAM_BROKEN';
      this.#lose(reason, failure);
    });
    stream.on('end', () => this.#lose('STREAM_BROKEN'));
  }

  /**
   * The fence for the writes this lease protects (`client.cache.fenced(lease.fence)`,
   * `client.sessions.fenced(lease.fence)`): refused once the lock was granted again.
   */
  get fence(): Fence {
    return { lock: this.name, fencingToken: this.fencingToken };
  }

  /** Aborts when the lease is lost; its `reason` is the LeaseLost error. */
  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  /** Whether the lease was lost. */
  get lost(): boolean {
    return this.#lostReason !== null;
  }

  /** Why the lease was lost (see LostReason); null while it is held. */
  get lostReason(): LostReason | null {
    return this.#lostReason;
  }

  /** Throws the LeaseLost error if the lease was lost: call it before each protected step. */
  check(): void {
    if (this.#lostReason !== null) throw this.#controller.signal.reason;
  }

  /**
   * How much longer, in milliseconds, the lease is certain to hold without further news
   * from the server (0 once lost or released).
   */
  certainForMs(): number {
    if (this.#lostReason !== null || this.#released) return 0;
    return Math.max(0, this.#certainUntil - performance.now());
  }

  /**
   * Gives the lock up: closes the stream, and the server releases the lease (shortly
   * after: the server learns of it from the stream's cancellation). Safe to call twice.
   */
  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    clearTimeout(this.#watchdog);
    this.#stream.cancel();
  }

  /** `await using lease = await client.lock(name)` releases the lease at the block's end. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }

  /** A renewal (or the grant): the lease is certain for `certainFor` from now. */
  #renewed(certainFor: Duration | null): void {
    const certainMs = millis(certainFor);
    if (certainMs === null) return; // the server always sends it; nothing to count without it
    // The monotonic clock: a wall clock stepped back would report time the lease does not have.
    this.#certainUntil = performance.now() + certainMs;
    clearTimeout(this.#watchdog);
    // A frozen instance sends nothing, not even the end of the stream: this timer is
    // what tells the holder then. unref: the open stream, not this timer, is what keeps
    // the process up while the lease is held.
    this.#watchdog = setTimeout(() => this.#lose('NOT_RENEWED'), certainMs);
    this.#watchdog.unref();
  }

  #lose(reason: LostReason, cause?: unknown): void {
    if (this.#released || this.#lostReason !== null) return;
    this.#lostReason = reason;
    clearTimeout(this.#watchdog);
    this.#stream.cancel();
    const error = new LeaseLost({
      code: Status.FAILED_PRECONDITION, // as the server's own LEASE_LOST
      message: `${this.#kind} ${JSON.stringify(this.name)} was lost (${reason}): stop the work it protects`,
      reason: 'LEASE_LOST',
      metadata: { lostReason: reason },
      cause: cause === undefined ? undefined : toError(cause),
    });
    this.#controller.abort(error);
  }

  toJSON(): object {
    return { name: this.name, fencingToken: this.fencingToken.toString(), lost: this.lost, lostReason: this.lostReason };
  }
}

/** A grant of the raw Acquire. Its token is a secret: it shows in no string form of this object. */
export class LockGrant {
  /** The lock's name. */
  readonly name: string;
  /** The grant's fencing token. */
  readonly fencingToken: bigint;
  /** When the lease ends unless extended, by the service's clock. */
  readonly expiresAt: Date | null;
  /** The lease's time to live when granted. */
  readonly ttlMs: number | null;
  readonly #token: string;

  /** @internal */
  constructor(name: string, token: string, fencingToken: bigint, expiresAt: Date | null, ttlMs: number | null) {
    this.name = name;
    this.#token = token;
    this.fencingToken = fencingToken;
    this.expiresAt = expiresAt;
    this.ttlMs = ttlMs;
  }

  /** The fence for the writes this grant protects (`client.cache.fenced(grant.fence)`). */
  get fence(): Fence {
    return { lock: this.name, fencingToken: this.fencingToken };
  }

  /** The proof of ownership Release and Extend take. */
  get token(): string {
    return this.#token;
  }

  toJSON(): object {
    return { name: this.name, fencingToken: this.fencingToken.toString(), expiresAt: this.expiresAt, ttlMs: this.ttlMs };
  }

  toString(): string {
    return `LockGrant(${this.name}, fencing token ${this.fencingToken})`;
  }
}

/** Who holds a lock (never the token). */
export interface LockDescription {
  held: boolean;
  owner: string;
  ttlMs: number | null;
  expiresAt: Date | null;
  /** The holder's fencing token, or when free the last one granted (0n if none is remembered). */
  fencingToken: bigint;
  holders: number;
  waiting: number;
  permits: number;
}

/** The lock service, as `client.locks`. Most code wants `client.lock` or `client.withLock`. */
export class Locks {
  readonly #transport: Transport;

  /** @internal */
  constructor(transport: Transport) {
    this.#transport = transport;
  }

  /**
   * Takes the lock and keeps it over a Hold stream until `release()`. Rejects with
   * NotAcquired when the wait ends without the lock.
   */
  async hold(name: string, options: LockOptions = {}): Promise<Lease> {
    const ttlMs = options.ttlMs ?? DEFAULT_TTL_MS;
    const request = {
      name,
      ttl: duration(ttlMs, 'ttlMs'),
      waitTimeout: duration(options.waitMs, 'waitMs'),
      owner: options.owner,
      permits: options.permits,
      safetyMargin: duration(options.safetyMarginMs, 'safetyMarginMs'),
    };
    // The stream has no deadline (it lives as long as the lease), but the grant does:
    // the wait plus the usual time for an answer.
    const grantWithinMs = (options.timeoutMs ?? this.#transport.timeoutMs) + (options.waitMs ?? 0);
    const stream = this.#transport.stream<HoldEvent>('lock', 'Hold', request);
    return new Promise<Lease>((resolve, reject) => {
      const settle = (outcome: Lease | Error): void => {
        clearTimeout(timer);
        stream.off('data', onData).off('error', onError).off('end', onEnd);
        if (outcome instanceof Lease) {
          resolve(outcome);
        } else {
          // The cancellation's own CANCELLED error needs a listener, or it would crash the process.
          stream.on('error', () => undefined).cancel();
          reject(outcome);
        }
      };
      const onData = (event: HoldEvent): void => {
        if (event.event === 'acquired' && event.acquired) {
          // The Lease's own listeners take over in this same tick: no event falls in between.
          settle(new Lease(name, event.acquired, stream));
        } else if (event.event === 'notAcquired') {
          settle(new NotAcquired(name, millis(event.notAcquired?.ttl)));
        } else {
          settle(new Error(`unexpected ${event.event} before the lock was acquired`));
        }
      };
      const onError = (error: Error): void => settle(toError(error));
      const onEnd = (): void => settle(new Error(`the Hold stream of ${JSON.stringify(name)} ended before an answer`));
      const timer = setTimeout(
        () =>
          settle(
            new DeadlineExceeded({ code: Status.DEADLINE_EXCEEDED, message: `no answer to Hold(${JSON.stringify(name)}) within ${grantWithinMs} ms` }),
          ),
        grantWithinMs,
      );
      stream.on('data', onData).on('error', onError).on('end', onEnd);
    });
  }

  /**
   * Takes the lock if it is free (waiting up to `waitMs`); answers the grant, or rejects
   * with NotAcquired. Sent with a fresh request_id, so that a retry returns the same grant.
   * The lease is not renewed: extend or release it yourself.
   */
  async acquire(
    name: string,
    options: CallOptions & { ttlMs: number; waitMs?: number; owner?: string; permits?: number },
  ): Promise<LockGrant> {
    const request = {
      name,
      ttl: duration(options.ttlMs, 'ttlMs'),
      waitTimeout: duration(options.waitMs, 'waitMs'),
      owner: options.owner,
      requestId: randomUUID(),
      permits: options.permits,
    };
    const response = await this.#transport.unary<{
      acquired: boolean;
      token: string;
      fencingToken: string;
      expiresAt: Timestamp | null;
      ttl: Duration | null;
    }>('lock', 'Acquire', request, { timeoutMs: options.timeoutMs, waitMs: options.waitMs });
    if (!response.acquired) throw new NotAcquired(name, millis(response.ttl));
    return new LockGrant(name, response.token, BigInt(response.fencingToken), date(response.expiresAt), millis(response.ttl));
  }

  /** Releases a grant. LeaseLost if another token holds the lock now, LockNotHeld if nobody does. */
  async release(grant: { name: string; token: string }, options: CallOptions = {}): Promise<void> {
    await this.#transport.unary('lock', 'Release', { name: grant.name, token: grant.token }, options);
  }

  /** Gives a grant a new time to live; answers when it now ends (by the service's clock). */
  async extend(grant: { name: string; token: string }, ttlMs: number, options: CallOptions = {}): Promise<Date | null> {
    const request = { name: grant.name, token: grant.token, ttl: duration(ttlMs, 'ttlMs') };
    const response = await this.#transport.unary<{ expiresAt: Timestamp | null }>('lock', 'Extend', request, options);
    return date(response.expiresAt);
  }

  /** Who holds the lock, if anyone. */
  async describe(name: string, options: CallOptions = {}): Promise<LockDescription> {
    const response = await this.#transport.unary<{
      held: boolean;
      owner: string;
      ttl: Duration | null;
      expiresAt: Timestamp | null;
      fencingToken: string;
      holders: number;
      waiting: number;
      permits: number;
    }>('lock', 'Describe', { name }, options);
    return {
      held: response.held,
      owner: response.owner,
      ttlMs: millis(response.ttl),
      expiresAt: date(response.expiresAt),
      fencingToken: BigInt(response.fencingToken),
      holders: response.holders,
      waiting: response.waiting,
      permits: response.permits,
    };
  }
}
