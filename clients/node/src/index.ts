// cachelock's Node client: the cache, rate limits, sessions, locks, leader election and pub/sub of a
// cachelock service, over gRPC. See README.md.
export { Client, type ClientOptions } from './client.js';
export {
  Cache,
  LeaseResult,
  json,
  type CachedOptions,
  type GetOrLeaseOptions,
  type LeaseOutcome,
  type Serializer,
  type SetCondition,
  type SetOptions,
} from './cache.js';
export type { Value } from './convert.js';
export {
  Elections,
  Leadership,
  Observation,
  type CampaignOptions,
  type ElectionEvent,
  type LeaderEvent,
  type LeaderInfo,
  type NoLeaderEvent,
} from './election.js';
export * from './errors.js';
export type { Fence, Fenceable } from './fence.js';
export { Lease, LockGrant, Locks, type LockDescription, type LockOptions, type LostReason } from './lock.js';
export {
  PubSub,
  Subscription,
  type DiscontinuityEvent,
  type MessageEvent,
  type SubscriptionEvent,
} from './pubsub.js';
export {
  RateLimits,
  type Algorithm,
  type CalendarUnit,
  type CalendarWindow,
  type Decision,
  type Limit,
  type ManyDecision,
  type OutagePolicy,
  type Report,
  type Reservation,
  type Settlement,
} from './ratelimit.js';
export { IDEMPOTENT, type RetryEvent } from './retry.js';
export { Session, Sessions, type ClientInfo, type CreateOptions } from './sessions.js';
export type { CallOptions, TlsOptions } from './transport.js';
