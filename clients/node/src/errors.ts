// The library's errors, and the one place (`toError`) that maps a gRPC status to them.
//
// cachelock answers every error with google.rpc.Status details in the
// `grpc-status-details-bin` trailer: an ErrorInfo (domain "cachelock.dev") whose reason
// names the error, a BadRequest naming the field, and a RetryInfo where waiting helps
// (docs/errors.md). The three message types are declared here rather than loaded from
// googleapis' .proto files: they are small and stable, and it saves a dependency.
import { Metadata, status as Status } from '@grpc/grpc-js';
import protobuf from 'protobufjs';

// (A variable, not a literal argument: protobufjs's IField type lacks the map fields' keyType.)
const descriptor = {
  nested: {
    google: {
      nested: {
        protobuf: {
          nested: {
            Any: { fields: { typeUrl: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } },
            Duration: { fields: { seconds: { type: 'int64', id: 1 }, nanos: { type: 'int32', id: 2 } } },
          },
        },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
              },
            },
            ErrorInfo: {
              fields: {
                reason: { type: 'string', id: 1 },
                domain: { type: 'string', id: 2 },
                metadata: { keyType: 'string', type: 'string', id: 3 },
              },
            },
            RetryInfo: { fields: { retryDelay: { type: 'google.protobuf.Duration', id: 1 } } },
            BadRequest: {
              fields: { fieldViolations: { rule: 'repeated', type: 'FieldViolation', id: 1 } },
              nested: {
                FieldViolation: {
                  fields: { field: { type: 'string', id: 1 }, description: { type: 'string', id: 2 } },
                },
              },
            },
          },
        },
      },
    },
  },
};
const rpc = protobuf.Root.fromJSON(descriptor);

const StatusMessage = rpc.lookupType('google.rpc.Status');
const DETAIL_TYPES = new Map(
  ['ErrorInfo', 'RetryInfo', 'BadRequest'].map((name) => [`type.googleapis.com/google.rpc.${name}`, rpc.lookupType(`google.rpc.${name}`)]),
);
const DOMAIN = 'cachelock.dev';

/** What a CachelockError is made of. */
export interface ErrorFields {
  /** The gRPC status code (`@grpc/grpc-js`'s `status`). */
  code: number;
  /** The message, for people. */
  message: string;
  /** The ErrorInfo reason, such as "LEASE_LOST"; null when the error did not come from cachelock. */
  reason?: string | null;
  /** The delay the server advised (RetryInfo), in milliseconds; null when it advised none. */
  retryAfterMs?: number | null;
  /** The request field that was wrong (BadRequest), such as "ttl" or "entries[2].ttl". */
  field?: string | null;
  /** The ErrorInfo metadata, such as `{ cause: "readonly" }`. */
  metadata?: Readonly<Record<string, string>>;
  /** The underlying error, when there is one. */
  cause?: unknown;
}

/**
 * Every error a cachelock call raises. Its class is named after the ErrorInfo reason
 * (LeaseLost for LEASE_LOST…); a reason this version does not know yet is a
 * CachelockError with that `reason`, so switch on `reason` or `code` for those.
 */
export class CachelockError extends Error {
  /** The gRPC status code (`@grpc/grpc-js`'s `status`). */
  readonly code: number;
  /** The code's name, such as "FAILED_PRECONDITION". */
  readonly codeName: string;
  /** The ErrorInfo reason, such as "LEASE_LOST"; null when the error did not come from cachelock. */
  readonly reason: string | null;
  /** The delay the server advised before a retry, in milliseconds; null when none. */
  readonly retryAfterMs: number | null;
  /** The request field BadRequest named; null when none. */
  readonly field: string | null;
  /** The ErrorInfo metadata. */
  readonly metadata: Readonly<Record<string, string>>;

  constructor(fields: ErrorFields) {
    super(fields.message, fields.cause === undefined ? undefined : { cause: fields.cause });
    // The subclass's own name ("LeaseLost"), so that stack traces and logs say what happened.
    this.name = new.target.name;
    this.code = fields.code;
    this.codeName = Status[fields.code] ?? `CODE_${fields.code}`;
    this.reason = fields.reason ?? null;
    this.retryAfterMs = fields.retryAfterMs ?? null;
    this.field = fields.field ?? null;
    this.metadata = fields.metadata ?? {};
  }
}

/** INVALID_FIELD: a field is wrong; `field` names it. Fix the request. */
export class InvalidField extends CachelockError {}
/** MALFORMED_REQUEST: the body is not a protobuf message of the method's type. */
export class MalformedRequest extends CachelockError {}
/** UNAUTHENTICATED: no token, or one the service's auth file does not know. */
export class Unauthenticated extends CachelockError {}
/** PERMISSION_DENIED: this client may not call this method (or may only read). */
export class PermissionDenied extends CachelockError {}
/** SESSION_NOT_FOUND: no such session (unknown, expired or ended). Log the user out. */
export class SessionNotFound extends CachelockError {}
/** VERSION_CONFLICT: the session moved on from `expectedVersion`; read it again and retry. */
export class VersionConflict extends CachelockError {}
/** NOT_AN_INTEGER: Increment on a value that is not a 64-bit integer. */
export class NotAnInteger extends CachelockError {}
/** INTEGER_OVERFLOW: the increment would overflow a 64-bit integer. */
export class IntegerOverflow extends CachelockError {}
/**
 * LEASE_LOST: another token holds the lock now (or a cache fill lease is no longer
 * yours). Stop the protected work. A held Lease's loss is this error too, whatever the
 * cause; `Lease.lostReason` says which.
 */
export class LeaseLost extends CachelockError {}
/** LOCK_NOT_HELD: nobody holds the lock; the lease ran out. */
export class LockNotHeld extends CachelockError {}
/**
 * FENCED_OUT: a fenced write was refused: the fence's lock was granted again after your
 * grant, so your lease is over; nothing was changed. Stop the protected work.
 */
export class FencedOut extends CachelockError {}
/** REDIS_UNAVAILABLE: Redis could not be reached or refused the command; nothing was applied. */
export class RedisUnavailable extends CachelockError {}
/** REDIS_TIMEOUT: Redis did not answer in time; the call is safe to repeat. */
export class RedisTimeout extends CachelockError {}
/** LOCKS_PAUSED: lock grants pause after the Redis node holding the lock lost its data. */
export class LocksPaused extends CachelockError {}
/** EVICTION_POLICY: Redis may evict keys, so no lease is granted or extended. */
export class EvictionPolicy extends CachelockError {}
/** PERMITS_MISMATCH: the name is held with other `permits` than asked for. */
export class PermitsMismatch extends CachelockError {}
/** MAY_HAVE_APPLIED: a change was in flight when Redis stopped answering; read before repeating. */
export class MayHaveApplied extends CachelockError {}
/** DEADLINE_PASSED: the deadline had passed before any work began. */
export class DeadlinePassed extends CachelockError {}
/** REDIS_OUT_OF_MEMORY: Redis reached maxmemory and refused the write. */
export class RedisOutOfMemory extends CachelockError {}
/** OVERLOADED: the instance is at its in-flight limit. */
export class Overloaded extends CachelockError {}
/** CLIENT_RATE_LIMITED: this client is over its requests per second. */
export class ClientRateLimited extends CachelockError {}
/** WRITE_BUDGET_EXCEEDED: this client is over its write bytes per second. */
export class WriteBudgetExceeded extends CachelockError {}
/** TOO_MANY_WAITERS: too many Acquire, Hold or GetOrLease calls are waiting. */
export class TooManyWaiters extends CachelockError {}
/** TOO_MANY_WATCHERS: too many health Watch streams are open. */
export class TooManyWatchers extends CachelockError {}
/** TOO_MANY_SUBSCRIBERS: too many Subscribe streams are open. */
export class TooManySubscribers extends CachelockError {}
/** RESPONSE_TOO_LARGE: GetMany's answer would be too large; ask for fewer keys. */
export class ResponseTooLarge extends CachelockError {}
/** INTERNAL: a failure inside the service; its log says more. */
export class Internal extends CachelockError {}

/** UNAVAILABLE without cachelock details: the connection, not the service, failed. */
export class Unavailable extends CachelockError {}
/** DEADLINE_EXCEEDED without cachelock details: the call's deadline ran out. */
export class DeadlineExceeded extends CachelockError {}
/** CANCELLED: the call was cancelled. */
export class Cancelled extends CachelockError {}

/**
 * A lock wait that ended without the lock (Hold's `not_acquired`). Not a gRPC status:
 * its code is FAILED_PRECONDITION (the lock was not free) and its reason "NOT_ACQUIRED".
 */
export class NotAcquired extends CachelockError {
  /** The holder's lease left when the wait ended, in milliseconds; null when unknown. */
  readonly holderTtlMs: number | null;

  constructor(name: string, holderTtlMs: number | null) {
    super({ code: Status.FAILED_PRECONDITION, message: `lock ${JSON.stringify(name)} is held by another`, reason: 'NOT_ACQUIRED' });
    this.holderTtlMs = holderTtlMs;
  }
}

type ErrorClass = new (fields: ErrorFields) => CachelockError;

const BY_REASON: Readonly<Record<string, ErrorClass>> = {
  INVALID_FIELD: InvalidField,
  MALFORMED_REQUEST: MalformedRequest,
  UNAUTHENTICATED: Unauthenticated,
  PERMISSION_DENIED: PermissionDenied,
  SESSION_NOT_FOUND: SessionNotFound,
  VERSION_CONFLICT: VersionConflict,
  NOT_AN_INTEGER: NotAnInteger,
  INTEGER_OVERFLOW: IntegerOverflow,
  LEASE_LOST: LeaseLost,
  LOCK_NOT_HELD: LockNotHeld,
  FENCED_OUT: FencedOut,
  REDIS_UNAVAILABLE: RedisUnavailable,
  REDIS_TIMEOUT: RedisTimeout,
  LOCKS_PAUSED: LocksPaused,
  EVICTION_POLICY: EvictionPolicy,
  PERMITS_MISMATCH: PermitsMismatch,
  MAY_HAVE_APPLIED: MayHaveApplied,
  DEADLINE_PASSED: DeadlinePassed,
  REDIS_OUT_OF_MEMORY: RedisOutOfMemory,
  OVERLOADED: Overloaded,
  CLIENT_RATE_LIMITED: ClientRateLimited,
  WRITE_BUDGET_EXCEEDED: WriteBudgetExceeded,
  TOO_MANY_WAITERS: TooManyWaiters,
  TOO_MANY_WATCHERS: TooManyWatchers,
  TOO_MANY_SUBSCRIBERS: TooManySubscribers,
  RESPONSE_TOO_LARGE: ResponseTooLarge,
  INTERNAL: Internal,
};

/** For errors without cachelock's ErrorInfo: a failure of the connection or the gRPC layer. */
const BY_CODE: Readonly<Partial<Record<number, ErrorClass>>> = {
  [Status.UNAVAILABLE]: Unavailable,
  [Status.DEADLINE_EXCEEDED]: DeadlineExceeded,
  [Status.CANCELLED]: Cancelled,
};

/** The shape of a failed call from @grpc/grpc-js. */
interface GrpcFailure {
  code?: number;
  details?: string;
  message?: string;
  metadata?: Metadata;
}

interface Details {
  reason: string | null;
  metadata: Record<string, string>;
  retryAfterMs: number | null;
  field: string | null;
}

/** Decodes the google.rpc.Status details of a failed call's trailers. */
function decodeDetails(trailers: Metadata | undefined): Details {
  const found: Details = { reason: null, metadata: {}, retryAfterMs: null, field: null };
  const encoded = trailers?.get('grpc-status-details-bin')[0];
  if (!(encoded instanceof Buffer)) {
    return found; // not an answer from cachelock: a proxy, the transport, the gRPC layer
  }
  let status: { details?: { typeUrl: string; value: Uint8Array }[] };
  try {
    status = StatusMessage.toObject(StatusMessage.decode(encoded)) as typeof status;
  } catch {
    return found; // not decodable (a proxy's own bytes): the error goes by its code
  }
  for (const any of status.details ?? []) {
    const type = DETAIL_TYPES.get(any.typeUrl);
    if (type === undefined) continue; // other detail types carry nothing this library reads
    let detail: Record<string, unknown>;
    try {
      detail = type.toObject(type.decode(any.value), { longs: Number, defaults: true });
    } catch {
      continue;
    }
    if (type.name === 'ErrorInfo' && detail['domain'] === DOMAIN) {
      found.reason = detail['reason'] as string;
      found.metadata = detail['metadata'] as Record<string, string>;
    } else if (type.name === 'RetryInfo') {
      const delay = (detail['retryDelay'] ?? { seconds: 0, nanos: 0 }) as { seconds: number; nanos: number };
      found.retryAfterMs = delay.seconds * 1000 + Math.ceil(delay.nanos / 1e6);
    } else if (type.name === 'BadRequest') {
      const violations = detail['fieldViolations'] as { field: string }[];
      found.field = violations[0]?.field ?? null;
    }
  }
  found.field ??= found.metadata['field'] ?? null;
  return found;
}

/** The library's error for a reason the library itself read (a stream's `lost` event), by its class. */
export function errorForReason(fields: ErrorFields & { reason: string }): CachelockError {
  return new (BY_REASON[fields.reason] ?? CachelockError)(fields);
}

/**
 * The library's error for a failed gRPC call: the one place a status becomes an error.
 * Anything that is not a gRPC failure (a bug, a TypeError) is passed through as it is.
 */
export function toError(error: unknown): Error {
  if (error instanceof CachelockError) return error;
  const failure = error as GrpcFailure;
  if (!(error instanceof Error) || typeof failure.code !== 'number') {
    return error instanceof Error ? error : new Error(String(error));
  }
  const details = decodeDetails(failure.metadata);
  const type =
    (details.reason === null ? BY_CODE[failure.code] : BY_REASON[details.reason]) ?? CachelockError;
  return new type({
    code: failure.code,
    message: failure.details || failure.message || '',
    ...details,
    cause: error,
  });
}
