//! The stable reasons every error status names.

/// The `reason` of the `google.rpc.ErrorInfo` (domain [`DOMAIN`]) on every error
/// status: stable names a client can branch on, listed in docs/errors.md. New ones
/// may be added; a client should treat one it does not know by its status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// INVALID_ARGUMENT: a request field is wrong; `BadRequest` names it.
    InvalidField,
    /// INVALID_ARGUMENT: the request is not a protobuf message of the method's type.
    MalformedRequest,
    /// UNAUTHENTICATED: no credential, or one the auth file does not know.
    Unauthenticated,
    /// PERMISSION_DENIED: the client may not call this method.
    PermissionDenied,
    /// NOT_FOUND: no such session (unknown, expired or ended).
    SessionNotFound,
    /// ABORTED: the session moved on from the expected version.
    VersionConflict,
    /// FAILED_PRECONDITION: the key holds a value that is not a 64-bit integer.
    NotAnInteger,
    /// FAILED_PRECONDITION: the increment would overflow a 64-bit integer.
    IntegerOverflow,
    /// FAILED_PRECONDITION: the lock is held under another token now; stop the work
    /// the lease protected.
    LeaseLost,
    /// FAILED_PRECONDITION: nobody holds the lock (the lease expired or was released).
    LockNotHeld,
    /// FAILED_PRECONDITION: a fenced write's lock was granted again since the
    /// caller's grant; nothing was changed.
    FencedOut,
    /// UNAVAILABLE: Redis cannot be reached or refused to run the command; nothing
    /// was applied. `metadata["cause"]` says why.
    RedisUnavailable,
    /// UNAVAILABLE: Redis did not answer in time, and the command is safe to repeat.
    RedisTimeout,
    /// UNAVAILABLE: lock grants are paused after Redis lost its data (or may have).
    LocksPaused,
    /// FAILED_PRECONDITION: Redis may evict keys, so lock grants and extensions are
    /// refused (see `--allow-evicting-redis`).
    EvictionPolicy,
    /// FAILED_PRECONDITION: the lock's holders were granted with other permits.
    PermitsMismatch,
    /// DEADLINE_EXCEEDED: a change was in flight when Redis stopped answering; it
    /// may or may not have been applied.
    MayHaveApplied,
    /// DEADLINE_EXCEEDED: the caller's deadline had passed before any work began.
    DeadlinePassed,
    /// RESOURCE_EXHAUSTED: Redis reached `maxmemory` and refused the write.
    RedisOutOfMemory,
    /// RESOURCE_EXHAUSTED: the server is at `--max-in-flight`.
    Overloaded,
    /// RESOURCE_EXHAUSTED: the client is over its `max_requests_per_second`.
    ClientRateLimited,
    /// RESOURCE_EXHAUSTED: the client is over its `max_write_bytes_per_second`.
    WriteBudgetExceeded,
    /// RESOURCE_EXHAUSTED: too many Acquires are waiting (`--lock-max-waiters*`).
    TooManyWaiters,
    /// RESOURCE_EXHAUSTED: too many health Watch streams are open.
    TooManyWatchers,
    /// RESOURCE_EXHAUSTED: too many Subscribe streams are open (`--pubsub-max-streams`).
    TooManySubscribers,
    /// RESOURCE_EXHAUSTED: the answer would exceed `--max-response-bytes`.
    ResponseTooLarge,
    /// INTERNAL: a failure inside the service; the log says more.
    Internal,
}

/// The `domain` of every `ErrorInfo` the service sends.
pub const DOMAIN: &str = "cachelock.dev";

impl Reason {
    /// Every reason, for docs/errors.md and its test.
    pub const ALL: [Reason; 27] = [
        Reason::InvalidField,
        Reason::MalformedRequest,
        Reason::Unauthenticated,
        Reason::PermissionDenied,
        Reason::SessionNotFound,
        Reason::VersionConflict,
        Reason::NotAnInteger,
        Reason::IntegerOverflow,
        Reason::LeaseLost,
        Reason::LockNotHeld,
        Reason::FencedOut,
        Reason::RedisUnavailable,
        Reason::RedisTimeout,
        Reason::LocksPaused,
        Reason::EvictionPolicy,
        Reason::PermitsMismatch,
        Reason::MayHaveApplied,
        Reason::DeadlinePassed,
        Reason::RedisOutOfMemory,
        Reason::Overloaded,
        Reason::ClientRateLimited,
        Reason::WriteBudgetExceeded,
        Reason::TooManyWaiters,
        Reason::TooManyWatchers,
        Reason::TooManySubscribers,
        Reason::ResponseTooLarge,
        Reason::Internal,
    ];

    /// The name sent as `ErrorInfo.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidField => "INVALID_FIELD",
            Reason::MalformedRequest => "MALFORMED_REQUEST",
            Reason::Unauthenticated => "UNAUTHENTICATED",
            Reason::PermissionDenied => "PERMISSION_DENIED",
            Reason::SessionNotFound => "SESSION_NOT_FOUND",
            Reason::VersionConflict => "VERSION_CONFLICT",
            Reason::NotAnInteger => "NOT_AN_INTEGER",
            Reason::IntegerOverflow => "INTEGER_OVERFLOW",
            Reason::LeaseLost => "LEASE_LOST",
            Reason::LockNotHeld => "LOCK_NOT_HELD",
            Reason::FencedOut => "FENCED_OUT",
            Reason::RedisUnavailable => "REDIS_UNAVAILABLE",
            Reason::RedisTimeout => "REDIS_TIMEOUT",
            Reason::LocksPaused => "LOCKS_PAUSED",
            Reason::EvictionPolicy => "EVICTION_POLICY",
            Reason::PermitsMismatch => "PERMITS_MISMATCH",
            Reason::MayHaveApplied => "MAY_HAVE_APPLIED",
            Reason::DeadlinePassed => "DEADLINE_PASSED",
            Reason::RedisOutOfMemory => "REDIS_OUT_OF_MEMORY",
            Reason::Overloaded => "OVERLOADED",
            Reason::ClientRateLimited => "CLIENT_RATE_LIMITED",
            Reason::WriteBudgetExceeded => "WRITE_BUDGET_EXCEEDED",
            Reason::TooManyWaiters => "TOO_MANY_WAITERS",
            Reason::TooManyWatchers => "TOO_MANY_WATCHERS",
            Reason::TooManySubscribers => "TOO_MANY_SUBSCRIBERS",
            Reason::ResponseTooLarge => "RESPONSE_TOO_LARGE",
            Reason::Internal => "INTERNAL",
        }
    }
}
