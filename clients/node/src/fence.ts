// Fences: the condition of a fenced write (docs/locks.md, "Fenced writes"). A cache or
// session write that carries a fence (a lock's name and a grant's fencing token) is
// applied only while no grant of that lock is newer than the token, checked in the
// write's own atomic step; otherwise it rejects with FencedOut and nothing changes.
import { int64 } from './convert.js';

/**
 * The fence of a grant: the lock's name and the grant's fencing token. Take it from a
 * held lease (`lease.fence`) or a raw grant (`grant.fence`), and give it to
 * `client.cache.fenced(...)` or `client.sessions.fenced(...)`.
 */
export interface Fence {
  /** The lock's name, as given to Acquire or Hold. */
  readonly lock: string;
  /** The fencing token of the caller's grant of it. */
  readonly fencingToken: bigint;
}

/** What `fenced()` takes: a Fence, or what has one (a Lease, a LockGrant). */
export type Fenceable = Fence | { readonly fence: Fence };

/** The fence field of a request, as proto-loader writes it (uint64 as a decimal string). */
export interface FenceMessage {
  lock: string;
  fencingToken: string;
}

/** The Fence of `value`, checked: a Fence as it is, or the `fence` of a lease or grant. */
export function fenceOf(value: Fenceable): Fence {
  const fence = value !== null && typeof value === 'object' && 'fence' in value ? value.fence : value;
  if (fence === null || typeof fence !== 'object' || typeof fence.lock !== 'string') {
    throw new TypeError('a fence must be a Fence ({ lock, fencingToken }), a Lease or a LockGrant');
  }
  int64(fence.fencingToken, 'fencingToken', true); // a bigint in range, or a TypeError/RangeError now
  return { lock: fence.lock, fencingToken: BigInt(fence.fencingToken) };
}

/** The request's fence field; undefined (unset: an unconditional write) without a fence. */
export function fenceMessage(fence: Fence | undefined): FenceMessage | undefined {
  if (fence === undefined) return undefined;
  return { lock: fence.lock, fencingToken: fence.fencingToken.toString() };
}
