//! The one mapping from what can go wrong inside the service to a gRPC status,
//! and the errors that stop the service from starting.
//!
//! Handlers return [`Error`]; `?` turns it into a [`tonic::Status`] through the
//! single `From` impl below, so every RPC answers a given failure the same way.
//! Every status carries `google.rpc.Status` details (the `grpc-status-details-bin`
//! trailer): an `ErrorInfo` whose [`Reason`] a client can switch on, a
//! `BadRequest` naming the field for INVALID_ARGUMENT, and a `RetryInfo` with a
//! suggested delay where waiting helps.

use std::{fmt, io, time::Duration};

use ::redis::RedisError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::warn;

/// What a command does, which decides the connection it uses, whether it may
/// be sent again after the connection dropped while it was in flight, and what
/// the caller is told when no answer came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Only reads. Sent on the read connection; repeated once after a drop.
    Read,
    /// Writes, and repeating it — by anyone — leaves the same state and gives
    /// the same answer (a plain SET, a PEXPIRE, a Release by its own token).
    /// Repeated once after a drop; the caller may retry after a timeout.
    IdempotentWrite,
    /// Writes, and carries an id fresh to this call (a lock token, a new session
    /// id): the identical request sent again finds its own result, so it is
    /// repeated once after a drop; but the caller's own retry would be a new
    /// request, so after a timeout the caller is told it may have applied.
    ReplayableWrite,
    /// Writes, and repeating it could change the state or the answer (an
    /// increment, a conditional SET, a take). Never sent twice: when it may have
    /// reached Redis and no answer came, the caller is told it may have applied.
    Write,
}

impl Effect {
    /// Whether sending the identical request again is harmless.
    pub fn may_resend(self) -> bool {
        !matches!(self, Effect::Write)
    }

    /// Whether the caller may simply retry when no answer came.
    pub fn caller_may_retry(self) -> bool {
        matches!(self, Effect::Read | Effect::IdempotentWrite)
    }
}

/// Why a connection could not be made, or was lost. Its text never holds a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The host name did not resolve.
    Dns(String),
    /// Nothing accepts connections at the address.
    Refused,
    /// No connection, TLS handshake or answer within the time allowed.
    Timeout(Duration),
    /// The TLS handshake failed; the text says why (an unknown issuer, a name
    /// mismatch, a server that does not speak TLS).
    Tls(String),
    /// Redis refused the credentials (a wrong password, a disabled ACL user, none given).
    Auth(String),
    /// Redis is loading its dataset into memory.
    Loading,
    /// Redis is running a script or function that has not yielded (BUSY).
    Busy,
    /// The connection was closed or reset.
    Closed,
    /// Another socket error.
    Io(String),
    /// The node is a read-only replica (READONLY): it was demoted, or a failover is under way.
    ReadOnly,
    /// Redis answered with another error that means it cannot serve now.
    Refusal(String),
    /// No Sentinel named a primary; the text says what each answered.
    Sentinel(String),
    /// The node a Sentinel named as primary is not one (yet): a failover is under way.
    NotPrimary(String),
    /// A Cluster seed is not a Cluster node, or no seed answered as one.
    NotCluster(String),
    /// The Cluster cannot serve a slot: `cluster_state:fail`, a primary without
    /// a replica to promote, or a slot on the move (CLUSTERDOWN, TRYAGAIN, MOVED).
    ClusterDown(String),
    /// Fewer replicas than `--lock-min-replicas` acknowledged a lock grant in time.
    NotReplicated {
        /// How many were required.
        wanted: u32,
        /// How many acknowledged.
        acknowledged: u32,
    },
}

impl Cause {
    /// A short name for the kind of cause, sent as `ErrorInfo.metadata["cause"]`.
    pub fn kind(&self) -> &'static str {
        match self {
            Cause::Dns(_) => "dns",
            Cause::Refused => "refused",
            Cause::Timeout(_) => "timeout",
            Cause::Tls(_) => "tls",
            Cause::Auth(_) => "auth",
            Cause::Loading => "loading",
            Cause::Busy => "busy",
            Cause::Closed => "closed",
            Cause::Io(_) => "io",
            Cause::ReadOnly => "readonly",
            Cause::Refusal(_) => "refusal",
            Cause::Sentinel(_) => "sentinel",
            Cause::NotPrimary(_) => "not_primary",
            Cause::NotCluster(_) => "not_cluster",
            Cause::ClusterDown(_) => "cluster_down",
            Cause::NotReplicated { .. } => "not_replicated",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Dns(detail) => write!(f, "DNS lookup failed: {detail}"),
            Cause::Refused => f.write_str("connection refused"),
            Cause::Timeout(waited) => write!(f, "no answer within {}", whole_millis(*waited)),
            Cause::Tls(detail) => write!(f, "TLS handshake failed: {detail}"),
            Cause::Auth(detail) => write!(f, "authentication failed: {detail}"),
            Cause::Loading => f.write_str("Redis is loading its dataset"),
            Cause::Busy => f.write_str("Redis is busy running a script (BUSY)"),
            Cause::Closed => f.write_str("connection closed"),
            Cause::Io(detail) => write!(f, "socket error: {detail}"),
            Cause::ReadOnly => f.write_str("the node is a read-only replica"),
            Cause::Refusal(detail) => write!(f, "Redis refused: {detail}"),
            Cause::Sentinel(detail) => write!(f, "no primary from the Sentinels: {detail}"),
            Cause::NotPrimary(node) => write!(
                f,
                "{node}, named as primary by the Sentinels, is a replica: a failover is under way"
            ),
            Cause::NotCluster(detail) => write!(f, "not a Redis Cluster: {detail}"),
            Cause::ClusterDown(detail) => write!(f, "the Cluster cannot serve the key's slot now: {detail}"),
            Cause::NotReplicated { wanted, acknowledged } => write!(
                f,
                "only {acknowledged} of the {wanted} replicas --lock-min-replicas requires acknowledged the \
                 lock grant in time, so it was released"
            ),
        }
    }
}

impl Cause {
    /// The cause behind a Redis client error.
    pub fn of(error: &RedisError) -> Cause {
        if let Some(code) = error.code() {
            return match code {
                "NOAUTH" | "WRONGPASS" | "NOPERM" => Cause::Auth(code.to_owned()),
                "LOADING" => Cause::Loading,
                "BUSY" => Cause::Busy,
                "READONLY" => Cause::ReadOnly,
                "CLUSTERDOWN" | "TRYAGAIN" | "MOVED" | "ASK" | "MASTERDOWN" => Cause::ClusterDown(
                    error
                        .detail()
                        .map_or_else(|| code.to_owned(), |detail| format!("{code} {detail}")),
                ),
                _ if error
                    .detail()
                    .is_some_and(|detail| detail.contains("cluster support disabled")) =>
                {
                    Cause::NotCluster(
                        "the node has cluster support disabled (a standalone Redis: use REDIS_URL)".to_owned(),
                    )
                }
                _ => Cause::Refusal(code.to_owned()),
            };
        }
        if error.kind() == redis::ErrorKind::ClusterConnectionNotFound {
            return Cause::ClusterDown("no connection to the node serving the slot".to_owned());
        }
        if error.kind() == redis::ErrorKind::AuthenticationFailed {
            return Cause::Auth("the user name or password was refused, or the user is disabled".to_owned());
        }
        if error.is_connection_refusal() {
            return Cause::Refused;
        }
        if error.is_connection_dropped() {
            return Cause::Closed;
        }
        if error.is_io_error() {
            return Cause::Io(error.to_string());
        }
        Cause::Refusal(error.category().to_owned())
    }
}

/// Why an RPC failed. Cloned when one Redis call answers several requests.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong; `field` names the offending field.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The request field, as the caller spells it (`key`, `entries[2].ttl`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request is not a protobuf message of the method's type.
    #[error("not a valid protobuf message: {0}")]
    Malformed(String),
    /// The request carries no credential the service accepts.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not call this method.
    #[error("{0}")]
    PermissionDenied(String),
    /// The thing asked for does not exist (or no longer does).
    #[error("{1}")]
    NotFound(Reason, String),
    /// A conditional change lost a race (an expected version that moved on).
    #[error("{1}")]
    Aborted(Reason, String),
    /// The stored state does not allow the operation: a counter that is not an
    /// integer, a lock this token does not hold.
    #[error("{1}")]
    FailedPrecondition(Reason, String),
    /// Redis could not run the command, so nothing was applied: it was not
    /// reachable in time, or refused the command without running it (BUSY,
    /// LOADING, READONLY, an ACL refusal).
    #[error("Redis is unavailable: {0}")]
    Unavailable(Cause),
    /// Redis did not answer within the RPC's budget.
    #[error("Redis did not answer within {}", whole_millis(*.waited))]
    Timeout {
        /// How long the RPC waited.
        waited: Duration,
        /// What the command does: unless the caller may retry it, it may still apply.
        effect: Effect,
    },
    /// The connection dropped while a write that must not be repeated was in
    /// flight: it may or may not have been applied.
    #[error("the connection to Redis was lost ({0}) while the change was in flight")]
    MayHaveApplied(Cause),
    /// Lock grants are paused because Redis lost its data and a lease granted
    /// before may still be in use; this much of the pause is left.
    #[error("lock grants are paused for {}", humantime::format_duration(*.0))]
    LocksPaused(Duration),
    /// The caller's deadline had passed before any work began.
    #[error("the deadline passed before the request was handled")]
    DeadlineExceeded,
    /// Redis refused a write because it reached `maxmemory` and may not evict.
    #[error("Redis is out of memory")]
    OutOfMemory,
    /// A limit of the service was reached; the text names it and its setting.
    #[error("{message}")]
    Exhausted {
        /// Which limit.
        reason: Reason,
        /// What was reached, naming the setting.
        message: String,
        /// How long to wait before trying again, when waiting helps.
        retry_after: Option<Duration>,
    },
    /// A failure inside the service itself (no randomness, a malformed script reply).
    #[error("internal error: {0}")]
    Internal(String),
    /// Anything else from Redis: a bug here or in a script, never the caller's fault.
    #[error("unexpected Redis error")]
    Redis(#[source] RedisError),
}

/// The `reason` of the `google.rpc.ErrorInfo` (domain [`DOMAIN`]) on every error
/// status: stable names a client can branch on, listed in the README. New ones
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
    /// Every reason, for the README's list and its test.
    pub const ALL: [Reason; 26] = [
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

/// The delay suggested (`RetryInfo`) after Redis could not be reached or was too
/// slow: about one reconnect attempt.
const RETRY_REDIS: Duration = Duration::from_millis(250);
/// The delay suggested after Redis refused a write for lack of memory: eviction
/// or expiry may free some, an operator may have to.
const RETRY_MEMORY: Duration = Duration::from_secs(1);

impl Error {
    /// An [`Error::InvalidArgument`] for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The kind of Redis failure this is, for the error metric: `timeout`,
    /// `connection`, `oom`, `busy` or `other`; `None` when Redis is not at fault.
    pub fn redis_failure_kind(&self) -> Option<&'static str> {
        match self {
            Error::Timeout { .. } => Some("timeout"),
            Error::Unavailable(Cause::Busy) => Some("busy"),
            Error::Unavailable(_) | Error::MayHaveApplied(_) => Some("connection"),
            Error::OutOfMemory => Some("oom"),
            Error::Redis(_) => Some("other"),
            _ => None,
        }
    }

    /// Whether Redis could not answer (unreachable, refusing, too slow, full):
    /// what the rate limiter's outage policy stands in for.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            Error::Unavailable(_)
                | Error::Timeout { .. }
                | Error::MayHaveApplied(_)
                | Error::OutOfMemory
                | Error::DeadlineExceeded
        )
    }
}

/// The error code Redis answered with; for a pipeline or an aborted
/// transaction, the code of its first failed command (EXECABORT hides the OOM
/// that caused it).
pub(crate) fn server_code(error: &RedisError) -> Option<String> {
    match error.code() {
        Some(code) if code != "EXECABORT" => Some(code.to_owned()),
        _ => error
            .clone()
            .into_server_errors()
            .and_then(|errors| errors.first().map(|(_, error)| error.code().to_owned())),
    }
}

/// Classifies an error reply or client error from Redis.
impl From<RedisError> for Error {
    fn from(error: RedisError) -> Error {
        match server_code(&error).as_deref() {
            Some("OOM") => return Error::OutOfMemory,
            Some(
                "BUSY" | "LOADING" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "NOAUTH" | "WRONGPASS"
                | "NOPERM",
            ) => return Error::Unavailable(Cause::of(&error)),
            _ => {}
        }
        if error.is_io_error()
            || error.is_connection_dropped()
            || error.kind() == redis::ErrorKind::AuthenticationFailed
        {
            return Error::Unavailable(Cause::of(&error));
        }
        Error::Redis(error)
    }
}

impl Error {
    /// The gRPC code, message, reason and suggested retry delay this error is
    /// answered with.
    fn answer(&self) -> (Code, String, Reason, Option<Duration>) {
        match self {
            Error::InvalidArgument { .. } => (Code::InvalidArgument, self.to_string(), Reason::InvalidField, None),
            Error::Malformed(_) => (Code::InvalidArgument, self.to_string(), Reason::MalformedRequest, None),
            Error::Unauthenticated(message) => (Code::Unauthenticated, message.clone(), Reason::Unauthenticated, None),
            Error::PermissionDenied(message) => {
                (Code::PermissionDenied, message.clone(), Reason::PermissionDenied, None)
            }
            Error::FailedPrecondition(reason, message) => (Code::FailedPrecondition, message.clone(), *reason, None),
            Error::NotFound(reason, message) => (Code::NotFound, message.clone(), *reason, None),
            Error::Aborted(reason, message) => (Code::Aborted, message.clone(), *reason, None),
            // Connection state changes are logged once by the health prober, not per request.
            Error::Unavailable(cause) => (
                Code::Unavailable,
                format!("Redis is unavailable ({cause}); nothing was applied, retry with backoff"),
                Reason::RedisUnavailable,
                Some(RETRY_REDIS),
            ),
            Error::Timeout { waited, effect } if effect.caller_may_retry() => (
                Code::Unavailable,
                format!(
                    "Redis did not answer within {}; retry with backoff",
                    whole_millis(*waited)
                ),
                Reason::RedisTimeout,
                Some(RETRY_REDIS),
            ),
            // gRPC's own meaning of DEADLINE_EXCEEDED: the change may have happened.
            Error::Timeout { waited, .. } => (
                Code::DeadlineExceeded,
                format!(
                    "Redis did not answer within {}; the change may or may not have been applied",
                    whole_millis(*waited)
                ),
                Reason::MayHaveApplied,
                None,
            ),
            Error::MayHaveApplied(cause) => (
                Code::DeadlineExceeded,
                format!(
                    "the connection to Redis was lost ({cause}) while the change was in flight; \
                     it may or may not have been applied"
                ),
                Reason::MayHaveApplied,
                None,
            ),
            Error::LocksPaused(left) => {
                let left = Duration::from_secs(left.as_secs() + 1);
                (
                    Code::Unavailable,
                    format!(
                        "lock grants are paused for {} more: the Redis node holding the lock lost its \
                         data, or may have (a restart without persistence, a failover to an empty replica, \
                         an eviction), and a lease granted before may still be in use until the longest \
                         lease has run out; retry after that",
                        humantime::format_duration(left)
                    ),
                    Reason::LocksPaused,
                    Some(left),
                )
            }
            Error::DeadlineExceeded => (Code::DeadlineExceeded, self.to_string(), Reason::DeadlinePassed, None),
            Error::OutOfMemory => (
                Code::ResourceExhausted,
                "Redis is out of memory and refused the write".to_owned(),
                Reason::RedisOutOfMemory,
                Some(RETRY_MEMORY),
            ),
            Error::Exhausted {
                reason,
                message,
                retry_after,
            } => (Code::ResourceExhausted, message.clone(), *reason, *retry_after),
            Error::Internal(_) | Error::Redis(_) => {
                (Code::Internal, "internal error".to_owned(), Reason::Internal, None)
            }
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        match &error {
            Error::Internal(detail) => warn!(%detail, "internal error"),
            Error::Redis(source) => warn!(error = %source, "unexpected Redis error"),
            _ => {}
        }
        let (code, message, reason, retry_after) = error.answer();
        let mut metadata = std::collections::HashMap::new();
        match &error {
            Error::InvalidArgument { field, .. } => {
                metadata.insert("field".to_owned(), field.clone());
            }
            Error::Unavailable(cause) | Error::MayHaveApplied(cause) => {
                metadata.insert("cause".to_owned(), cause.kind().to_owned());
            }
            Error::Timeout { .. } => {
                metadata.insert("cause".to_owned(), "timeout".to_owned());
            }
            _ => {}
        }
        let mut details = ErrorDetails::with_error_info(reason.as_str(), DOMAIN, metadata);
        if let Error::InvalidArgument { field, reason } = &error {
            details.add_bad_request_violation(field.clone(), reason.clone());
        }
        if let Some(delay) = retry_after {
            details.set_retry_info(Some(delay));
        }
        Status::with_error_details(code, message, details)
    }
}

/// A duration rounded to whole milliseconds, for messages.
pub(crate) fn whole_millis(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(
        u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
    ))
}

/// Why the service could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No REDIS_URL was given and no `redis-server` is on PATH to start a development one.
    #[error(
        "no REDIS_URL is set and redis-server is not on PATH: install it (Debian/Ubuntu: \
         `apt-get install redis-server`, macOS: `brew install redis`) or set REDIS_URL"
    )]
    RedisServerMissing,
    /// The development redis-server did not come up.
    #[error("the development redis-server did not start: {0}")]
    EmbeddedRedis(String),
    /// The Redis client could not be set up from the configuration.
    #[error("cannot use the Redis configuration: {0}")]
    RedisConfig(String),
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// The TLS files or the auth file cannot be used.
    #[error("{0}")]
    Security(String),
    /// The Envoy rate-limit rules (--rls-config) cannot be used; the text says where and why.
    #[error("--rls-config: {0}")]
    RlsConfig(String),
    /// The reflection service could not read the embedded descriptors.
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    /// The gRPC server failed.
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

impl StartError {
    /// The process exit status: 2 for what the operator must fix in the setup, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::RedisServerMissing | StartError::RedisConfig(_) | StartError::Security(_) => 2,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn sent(error: Error) -> (Code, String, bool, Option<String>) {
        let status = Status::from(error);
        let details = status.get_error_details();
        let info = details.error_info().expect("every status carries an ErrorInfo");
        assert_eq!(info.domain, DOMAIN);
        let field = details
            .bad_request()
            .and_then(|bad| bad.field_violations.first())
            .map(|violation| violation.field.clone());
        (
            status.code(),
            info.reason.clone(),
            details.retry_info().is_some(),
            field,
        )
    }

    #[test]
    fn every_error_is_sent_with_its_reason_and_retry_advice_where_waiting_helps() {
        let exhausted = |reason, retry_after| Error::Exhausted {
            reason,
            message: "limit".to_owned(),
            retry_after,
        };
        let cases = [
            (
                Error::invalid("entries[2].ttl", "must be positive"),
                Code::InvalidArgument,
                false,
            ),
            (Error::Malformed("truncated".to_owned()), Code::InvalidArgument, false),
            (Error::Unauthenticated("who".to_owned()), Code::Unauthenticated, false),
            (Error::PermissionDenied("no".to_owned()), Code::PermissionDenied, false),
            (
                Error::NotFound(Reason::SessionNotFound, "gone".to_owned()),
                Code::NotFound,
                false,
            ),
            (
                Error::Aborted(Reason::VersionConflict, "moved".to_owned()),
                Code::Aborted,
                false,
            ),
            (
                Error::FailedPrecondition(Reason::NotAnInteger, "text".to_owned()),
                Code::FailedPrecondition,
                false,
            ),
            (
                Error::FailedPrecondition(Reason::IntegerOverflow, "big".to_owned()),
                Code::FailedPrecondition,
                false,
            ),
            (
                Error::FailedPrecondition(Reason::LeaseLost, "lost".to_owned()),
                Code::FailedPrecondition,
                false,
            ),
            (
                Error::FailedPrecondition(Reason::LockNotHeld, "free".to_owned()),
                Code::FailedPrecondition,
                false,
            ),
            (Error::Unavailable(Cause::Refused), Code::Unavailable, true),
            (
                Error::Timeout {
                    waited: Duration::from_millis(5),
                    effect: Effect::Read,
                },
                Code::Unavailable,
                true,
            ),
            (Error::LocksPaused(Duration::from_secs(3)), Code::Unavailable, true),
            (
                Error::FailedPrecondition(Reason::EvictionPolicy, "evicts".to_owned()),
                Code::FailedPrecondition,
                false,
            ),
            (
                Error::FailedPrecondition(Reason::PermitsMismatch, "3".to_owned()),
                Code::FailedPrecondition,
                false,
            ),
            (Error::MayHaveApplied(Cause::Closed), Code::DeadlineExceeded, false),
            (
                Error::Timeout {
                    waited: Duration::from_millis(5),
                    effect: Effect::Write,
                },
                Code::DeadlineExceeded,
                false,
            ),
            (Error::DeadlineExceeded, Code::DeadlineExceeded, false),
            (Error::OutOfMemory, Code::ResourceExhausted, true),
            (
                exhausted(Reason::Overloaded, Some(Duration::from_millis(100))),
                Code::ResourceExhausted,
                true,
            ),
            (
                exhausted(Reason::ClientRateLimited, Some(Duration::from_millis(7))),
                Code::ResourceExhausted,
                true,
            ),
            (
                exhausted(Reason::WriteBudgetExceeded, Some(Duration::from_millis(20))),
                Code::ResourceExhausted,
                true,
            ),
            (
                exhausted(Reason::TooManyWaiters, Some(Duration::from_secs(1))),
                Code::ResourceExhausted,
                true,
            ),
            (
                exhausted(Reason::TooManyWatchers, Some(Duration::from_secs(5))),
                Code::ResourceExhausted,
                true,
            ),
            (
                exhausted(Reason::TooManySubscribers, Some(Duration::from_secs(1))),
                Code::ResourceExhausted,
                true,
            ),
            (
                exhausted(Reason::ResponseTooLarge, None),
                Code::ResourceExhausted,
                false,
            ),
            (Error::Internal("bug".to_owned()), Code::Internal, false),
        ];
        let mut seen = HashSet::new();
        for (error, code, retry) in cases {
            let described = format!("{error:?}");
            let (sent_code, reason, has_retry, field) = sent(error);
            assert_eq!(sent_code, code, "{described}");
            assert_eq!(has_retry, retry, "{described}");
            assert_eq!(field.is_some(), reason == "INVALID_FIELD", "{described}");
            seen.insert(reason);
        }
        let all: HashSet<String> = Reason::ALL.iter().map(|reason| reason.as_str().to_owned()).collect();
        assert_eq!(seen, all, "every reason is sent by some error, and no other");
    }

    #[test]
    fn a_field_violation_names_the_field_as_the_caller_spells_it() {
        let (_, _, _, field) = sent(Error::invalid("entries[2].ttl", "must be positive"));
        assert_eq!(field.as_deref(), Some("entries[2].ttl"));
    }
}
