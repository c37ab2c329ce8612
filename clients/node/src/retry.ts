// When a failed call is repeated, and after how long: the one place that decides it,
// following clients/README.md.
//
// A call is repeated only when the server sent RetryInfo (it does so only when nothing
// was applied, or the call is safe to repeat) AND the method is idempotent (below). The
// delay is the server's, doubled on each further attempt, up to 5 s, jittered upwards by
// up to half and never sooner than the server asked; at most 5 attempts, and never past
// the call's deadline: then the last error is raised.
import { CachelockError } from './errors.js';

/**
 * The methods repeated on RetryInfo, as "Service/Method". Every other one is raised at
 * once, the caller deciding: GetOrLease, Take and Increment (a repeat would take or add
 * twice), Check, CheckMany, Reserve and Report (would count twice), Create, Update and
 * Rotate, Publish, and the streams (Hold, Subscribe, Campaign, Observe).
 */
export const IDEMPOTENT: ReadonlySet<string> = new Set([
  'CacheService/Get',
  'CacheService/GetMany',
  'CacheService/Set',
  'CacheService/SetMany',
  'CacheService/Delete',
  'CacheService/Expire',
  'RateLimitService/Reset',
  // Settling is once: a repeated Commit or Cancel answers the same (settledBefore).
  'RateLimitService/Commit',
  'RateLimitService/Cancel',
  'SessionService/Get',
  'SessionService/Touch',
  'SessionService/Delete',
  'SessionService/ListUserSessions',
  'SessionService/DeleteUserSession',
  'SessionService/DeleteUserSessions',
  // Always sent with a fresh request_id (lock.ts), so a repeat returns the same grant.
  'LockService/Acquire',
  'LockService/Release',
  'LockService/Extend',
  'LockService/Describe',
  // A repeated Resign is accepted again and touches no later term; Leader is a read.
  'ElectionService/Resign',
  'ElectionService/Leader',
]);

export const MAX_ATTEMPTS = 5;
const MAX_DELAY_MS = 5000;

/** What `onRetry` is told before each retry. */
export interface RetryEvent {
  /** The method, as "Service/Method", such as "CacheService/Get". */
  method: string;
  /** The error of the attempt that failed. */
  error: CachelockError;
  /** How long the library waits before the next attempt, in milliseconds. */
  delayMs: number;
}

/**
 * The delay before attempt `attempt + 1` after attempt `attempt` (from 1) failed with
 * the server's advice `serverDelayMs`.
 */
export function retryDelayMs(attempt: number, serverDelayMs: number, random: () => number = Math.random): number {
  const doubled = Math.min(serverDelayMs * 2 ** (attempt - 1), MAX_DELAY_MS);
  // The cap bounds the backoff, never the server's own advice.
  const base = Math.max(doubled, serverDelayMs);
  return Math.ceil(base * (1 + random() / 2));
}

/**
 * Runs `attempt` until it succeeds or fails in a way not worth repeating, following the
 * policy above. `attempt` must raise the library's errors (`toError`).
 */
export async function withRetries<T>(
  method: string,
  deadline: number,
  attempt: () => Promise<T>,
  onRetry: ((event: RetryEvent) => void) | undefined,
): Promise<T> {
  const idempotent = IDEMPOTENT.has(method);
  for (let attempts = 1; ; attempts += 1) {
    try {
      return await attempt();
    } catch (error) {
      if (
        !idempotent ||
        attempts >= MAX_ATTEMPTS ||
        !(error instanceof CachelockError) ||
        error.retryAfterMs === null
      ) {
        throw error;
      }
      const delayMs = retryDelayMs(attempts, error.retryAfterMs);
      if (Date.now() + delayMs >= deadline) throw error;
      onRetry?.({ method, error, delayMs });
      await new Promise((resolve) => setTimeout(resolve, delayMs));
    }
  }
}
