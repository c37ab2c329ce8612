// cachelock.ratelimit.v1.RateLimitService: shared rate limits. A denial is an answer
// (`allowed: false`), not an error.
import { duration, enumValue, int64, millis, type Duration } from './convert.js';
import type { CallOptions, Transport } from './transport.js';

/** How a limit is counted. */
export type Algorithm = 'tokenBucket' | 'fixedWindow' | 'slidingWindow';
/** What to answer when Redis cannot decide in time. */
export type OutagePolicy = 'failOpen' | 'failClosed';
/** The unit of a calendar window. */
export type CalendarUnit = 'second' | 'minute' | 'hour' | 'day' | 'week' | 'month' | 'year';

/**
 * A fixed window aligned to the calendar of an IANA time zone, given instead of a period:
 * `{ unit: 'month', timeZone: 'Europe/Berlin' }` resets on the 1st at midnight, Berlin time.
 * It counts as a fixed window: leave `algorithm` unset (or `'fixedWindow'`).
 */
export interface CalendarWindow {
  /** The unit; checked before any call. */
  unit: CalendarUnit;
  /** How many units one window holds (15 minutes; 3 months, quarters); 1 by default. */
  multiplier?: number;
  /** The IANA time zone whose calendar the windows follow, such as 'Europe/Berlin'; UTC by default. */
  timeZone?: string;
}

const ALGORITHMS: Readonly<Record<Algorithm, string>> = {
  tokenBucket: 'ALGORITHM_TOKEN_BUCKET',
  fixedWindow: 'ALGORITHM_FIXED_WINDOW',
  slidingWindow: 'ALGORITHM_SLIDING_WINDOW',
};

const OUTAGE_POLICIES: Readonly<Record<OutagePolicy, string>> = {
  failOpen: 'OUTAGE_POLICY_FAIL_OPEN',
  failClosed: 'OUTAGE_POLICY_FAIL_CLOSED',
};

const CALENDAR_UNITS: Readonly<Record<CalendarUnit, string>> = {
  second: 'CALENDAR_UNIT_SECOND',
  minute: 'CALENDAR_UNIT_MINUTE',
  hour: 'CALENDAR_UNIT_HOUR',
  day: 'CALENDAR_UNIT_DAY',
  week: 'CALENDAR_UNIT_WEEK',
  month: 'CALENDAR_UNIT_MONTH',
  year: 'CALENDAR_UNIT_YEAR',
};

/**
 * One limit: `limit` units per `periodMs`, or per window of `calendar` given instead (exactly
 * one of them). Key, limit, period (or calendar) and algorithm identify a limiter.
 */
export interface Limit {
  /** What is limited, such as "login:user:42". */
  key: string;
  /** How many units the period allows. */
  limit: bigint | number;
  /** The period, in milliseconds; or give `calendar`. */
  periodMs?: number;
  /** Fixed windows aligned to a time zone's calendar, instead of `periodMs`. */
  calendar?: CalendarWindow;
  /** Units this request consumes; 1 by default, 0 reports without consuming. */
  cost?: bigint | number;
  /** How to count; the token bucket by default (a calendar window is a fixed window). */
  algorithm?: Algorithm;
  /**
   * Decide from a slice of the limit that the server instance leases from Redis (one round trip
   * per slice instead of per check, for hot keys). Token buckets and fixed (and calendar) windows
   * only; not with `waitMs`; in a `checkMany` every limit is leased or none is. Checks only.
   */
  leased?: boolean;
}

/** A decision: whether the request may go ahead, and what HTTP rate-limit headers need. */
export interface Decision {
  /** Whether the request may go ahead (its cost was consumed if so). */
  allowed: boolean;
  /** The limit that was applied (RateLimit-Limit). */
  limit: bigint;
  /** Units left in the period (RateLimit-Remaining). */
  remaining: bigint;
  /** Time until the full limit is available again (RateLimit-Reset). */
  resetAfterMs: number;
  /** When denied: time until a request of this cost could pass; 0 when allowed; null when it never can. */
  retryAfterMs: number | null;
  /** True when Redis could not decide in time and the outage policy answered. */
  decidedByOutagePolicy: boolean;
  /** How long the answer waited for the cost to fit (`check`'s `waitMs`); 0 when it did not. */
  waitedMs: number;
}

/** One limit's part of a decision. */
type Part = Omit<Decision, 'decidedByOutagePolicy' | 'waitedMs'>;

/** The combined decision of `checkMany`, and each limit's part. */
export interface ManyDecision {
  /** True only if every limit allows; nothing was consumed otherwise. */
  allowed: boolean;
  /** One decision per limit, in the order given. */
  decisions: (Part & { key: string })[];
  /** When denied: the longest wait of the denying limits; null when one of them never can. */
  retryAfterMs: number | null;
  /** True when Redis could not decide in time and the outage policy answered. */
  decidedByOutagePolicy: boolean;
}

/** A reservation: the estimate counted (`allowed`) or refused, and what settling needs. */
export interface Reservation {
  /** Whether the estimate fits and was counted. */
  allowed: boolean;
  /** The reservation, for `commit` and `cancel`; empty when refused. */
  reservationId: string;
  /** The limit. */
  limit: bigint;
  /** Units left, after the estimate when allowed. */
  remaining: bigint;
  /** Time until the full limit is available again. */
  resetAfterMs: number;
  /** When refused: time until the estimate would fit; 0 when allowed; null when it never can. */
  retryAfterMs: number | null;
  /** The limiter as reserved (key, period or calendar, algorithm), so that settling names it exactly. */
  key: string;
  periodMs: number | undefined;
  calendar: CalendarWindow | undefined;
  algorithm: Algorithm | undefined;
}

/** How a reservation was settled, by `commit` or `cancel`. */
export interface Settlement {
  /** False when the reservation is unknown: it expired (settled at its estimate) or never was. */
  found: boolean;
  /** What the reservation cost in the end. */
  charged: bigint;
  /** What was given back of the estimate. */
  refunded: bigint;
  /** Units left now. */
  remaining: bigint;
  /** Time until the full limit is available again. */
  resetAfterMs: number;
  /** True when it had been settled before: charged and refunded are that settlement's, nothing changed now. */
  settledBefore: boolean;
}

/** Where a limit stands after `report`. */
export interface Report {
  /** Units left now: 0 when in debt. */
  remaining: bigint;
  /** Time until the full limit is available again. */
  resetAfterMs: number;
  /** Time until a cost of 1 fits again; 0 when it fits now. */
  retryAfterMs: number;
}

interface SettleResponse {
  found: boolean;
  charged: string;
  refunded: string;
  remaining: string;
  resetAfter: Duration | null;
  settledBefore: boolean;
}

function settlement(response: SettleResponse): Settlement {
  return {
    found: response.found,
    charged: BigInt(response.charged),
    refunded: BigInt(response.refunded),
    remaining: BigInt(response.remaining),
    resetAfterMs: millis(response.resetAfter) ?? 0,
    settledBefore: response.settledBefore,
  };
}

function reserved(reservation: Reservation, cost: bigint | number | undefined): object {
  if (!reservation.reservationId) {
    throw new TypeError('a refused reservation (allowed: false) has nothing to settle');
  }
  return {
    limit: limitRequest({ ...reservation, cost }),
    reservationId: reservation.reservationId,
  };
}

interface LimitDecision {
  key: string;
  allowed: boolean;
  limit: string;
  remaining: string;
  resetAfter: Duration | null;
  retryAfter: Duration | null;
}

/** The `period` or `calendar` of a limit: exactly one of them, checked before any call. */
function window(limit: Pick<Limit, 'periodMs' | 'calendar'>): { period?: object; calendar?: object } {
  const { periodMs, calendar } = limit;
  if (periodMs !== undefined && calendar !== undefined) {
    throw new TypeError('give periodMs or calendar, not both');
  }
  if (calendar === undefined) {
    if (periodMs === undefined) throw new TypeError('a limit needs periodMs or calendar');
    return { period: duration(periodMs, 'periodMs') };
  }
  if (typeof calendar !== 'object' || calendar === null) {
    throw new TypeError(`calendar must be an object such as { unit: 'month' }, not ${String(calendar)}`);
  }
  if (calendar.unit === undefined) throw new TypeError('calendar.unit is required');
  const { multiplier } = calendar;
  if (multiplier !== undefined && !(Number.isInteger(multiplier) && multiplier >= 1 && multiplier <= 0xffffffff)) {
    throw new RangeError(`calendar.multiplier must be a whole number from 1, got ${String(multiplier)}`);
  }
  if (calendar.timeZone !== undefined && typeof calendar.timeZone !== 'string') {
    throw new TypeError(`calendar.timeZone must be a string, not ${typeof calendar.timeZone}`);
  }
  return {
    calendar: {
      unit: enumValue(CALENDAR_UNITS, calendar.unit, 'calendar.unit'),
      multiplier: multiplier ?? 1,
      timeZone: calendar.timeZone ?? '',
    },
  };
}

function limitRequest(limit: Limit): object {
  return {
    key: limit.key,
    limit: int64(limit.limit, 'limit', true),
    ...window(limit),
    cost: limit.cost === undefined ? undefined : int64(limit.cost, 'cost', true),
    algorithm: enumValue(ALGORITHMS, limit.algorithm, 'algorithm'),
  };
}

function decision(response: Omit<LimitDecision, 'key'>): Part {
  return {
    allowed: response.allowed,
    limit: BigInt(response.limit),
    remaining: BigInt(response.remaining),
    resetAfterMs: millis(response.resetAfter) ?? 0,
    retryAfterMs: millis(response.retryAfter),
  };
}

/** Rate limits, as `client.rateLimit`. */
export class RateLimits {
  readonly #transport: Transport;

  /** @internal */
  constructor(transport: Transport) {
    this.#transport = transport;
  }

  /**
   * Counts a request against a limit. With `waitMs`, the answer waits in the server until the
   * cost fits (first come, first served across the fleet), or comes at once, refused, when it
   * cannot fit within the wait; `waitedMs` says how long it waited. The call's deadline is its
   * `timeoutMs` plus `waitMs`. Never retried: a repeat would count twice.
   *
   * @example const d = await client.rateLimit.check(`login:${user}`, { limit: 5, periodMs: 15 * 60_000 });
   * @example const d = await client.rateLimit.check(`llm:${team}`, { limit: 100_000, cost: 2712, calendar: { unit: 'month', timeZone: 'Europe/Berlin' } });
   * @example const d = await client.rateLimit.check('export', { limit: 10, periodMs: 1000, waitMs: 5000 });
   * @example const d = await client.rateLimit.check(`api:${tenant}`, { limit: 10_000, periodMs: 1000, leased: true });
   */
  async check(
    key: string,
    options: Omit<Limit, 'key'> & CallOptions & { onUnavailable?: OutagePolicy; waitMs?: number },
  ): Promise<Decision> {
    const request = {
      ...limitRequest({ ...options, key }),
      onUnavailable: enumValue(OUTAGE_POLICIES, options.onUnavailable, 'onUnavailable'),
      wait: duration(options.waitMs, 'waitMs'),
      leased: options.leased ?? false,
    };
    const response = await this.#transport.unary<
      Omit<LimitDecision, 'key'> & { decidedByOutagePolicy: boolean; waited: Duration | null }
    >('ratelimit', 'Check', request, { timeoutMs: options.timeoutMs, waitMs: options.waitMs });
    return {
      ...decision(response),
      decidedByOutagePolicy: response.decidedByOutagePolicy,
      waitedMs: millis(response.waited) ?? 0,
    };
  }

  /** Counts a request against several limits at once: consumed from all, or from none. */
  async checkMany(
    limits: readonly Limit[],
    options: CallOptions & { onUnavailable?: OutagePolicy } = {},
  ): Promise<ManyDecision> {
    const request = {
      limits: limits.map((limit) => ({ ...limitRequest(limit), leased: limit.leased ?? false })),
      onUnavailable: enumValue(OUTAGE_POLICIES, options.onUnavailable, 'onUnavailable'),
    };
    const response = await this.#transport.unary<{
      allowed: boolean;
      decisions: LimitDecision[];
      retryAfter: Duration | null;
      decidedByOutagePolicy: boolean;
    }>('ratelimit', 'CheckMany', request, options);
    return {
      allowed: response.allowed,
      decisions: response.decisions.map((part) => ({ key: part.key, ...decision(part) })),
      retryAfterMs: millis(response.retryAfter),
      decidedByOutagePolicy: response.decidedByOutagePolicy,
    };
  }

  /**
   * Clears a limiter's state; answers whether there was any. Without `algorithm`, the
   * state of all three algorithms for this key, limit and period (or calendar).
   */
  async reset(key: string, options: Omit<Limit, 'key' | 'cost' | 'leased'> & CallOptions): Promise<boolean> {
    const request = {
      key,
      limit: int64(options.limit, 'limit', true),
      ...window(options),
      algorithm: enumValue(ALGORITHMS, options.algorithm, 'algorithm'),
    };
    const response = await this.#transport.unary<{ existed: boolean }>('ratelimit', 'Reset', request, options);
    return response.existed;
  }

  /**
   * Counts an estimated `cost` now, to settle with `commit` or `cancel` once the actual cost
   * is known; unsettled, it settles at its estimate after `reservationTtlMs` (1 minute by
   * default). A refusal is an answer (`allowed: false`). Never retried: a repeat would count twice.
   *
   * @example const r = await client.rateLimit.reserve(`llm:${team}`, { limit: 100_000, periodMs: 3_600_000, cost: 4000 });
   */
  async reserve(
    key: string,
    options: Omit<Limit, 'key' | 'cost' | 'leased'> & {
      cost: bigint | number;
      reservationTtlMs?: number;
    } & CallOptions,
  ): Promise<Reservation> {
    const request = {
      limit: limitRequest({ ...options, key }),
      reservationTtl: duration(options.reservationTtlMs, 'reservationTtlMs'),
    };
    const response = await this.#transport.unary<Omit<LimitDecision, 'key'> & { reservationId: string }>(
      'ratelimit',
      'Reserve',
      request,
      options,
    );
    return {
      ...decision(response),
      reservationId: response.reservationId,
      key,
      periodMs: options.periodMs,
      calendar: options.calendar === undefined ? undefined : { ...options.calendar },
      algorithm: options.algorithm,
    };
  }

  /**
   * Settles a reservation at its actual `cost`: the rest of the estimate comes back, an excess
   * is charged (past the limit only with `allowDebt`). Settling is once: a repeat answers the
   * same with `settledBefore`, so it is retried on RetryInfo.
   */
  async commit(
    reservation: Reservation,
    cost: bigint | number,
    options: { allowDebt?: boolean } & CallOptions = {},
  ): Promise<Settlement> {
    const request = { ...reserved(reservation, cost), allowDebt: options.allowDebt ?? false };
    return settlement(await this.#transport.unary<SettleResponse>('ratelimit', 'Commit', request, options));
  }

  /** Settles a reservation at no cost: its estimate comes back. Once, as `commit`. */
  async cancel(reservation: Reservation, options: CallOptions = {}): Promise<Settlement> {
    const request = reserved(reservation, undefined);
    return settlement(await this.#transport.unary<SettleResponse>('ratelimit', 'Cancel', request, options));
  }

  /**
   * Counts `cost` after the fact, without deciding: even past the limit (a debt the next
   * check waits off). Never retried: a repeat would count twice.
   */
  async report(
    key: string,
    options: Omit<Limit, 'key' | 'cost' | 'leased'> & { cost: bigint | number } & CallOptions,
  ): Promise<Report> {
    const request = { limit: limitRequest({ ...options, key }) };
    const response = await this.#transport.unary<{
      remaining: string;
      resetAfter: Duration | null;
      retryAfter: Duration | null;
    }>('ratelimit', 'Report', request, options);
    return {
      remaining: BigInt(response.remaining),
      resetAfterMs: millis(response.resetAfter) ?? 0,
      retryAfterMs: millis(response.retryAfter) ?? 0,
    };
  }
}
