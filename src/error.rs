//! The one mapping from what can go wrong inside the service to a gRPC status,
//! and the errors that stop the service from starting.
//!
//! Handlers return [`Error`]; `?` turns it into a [`tonic::Status`] through the
//! single `From` impl below, so every RPC answers a given failure the same way.

use std::{io, time::Duration};

use redis::RedisError;
use tonic::Status;
use tracing::warn;

use crate::redis::{Cause, Effect};

/// Why an RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong; `field` names the offending field.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The request field, as the caller spells it (`key`, `entries[2].ttl`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The thing asked for does not exist (or no longer does).
    #[error("{0}")]
    NotFound(String),
    /// A conditional change lost a race (an expected version that moved on).
    #[error("{0}")]
    Aborted(String),
    /// The stored state does not allow the operation (a counter that is not an integer).
    #[error("{0}")]
    FailedPrecondition(String),
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
    #[error("{0}")]
    Exhausted(String),
    /// A failure inside the service itself (no randomness, a malformed script reply).
    #[error("internal error: {0}")]
    Internal(String),
    /// Anything else from Redis: a bug here or in a script, never the caller's fault.
    #[error("unexpected Redis error")]
    Redis(#[source] RedisError),
}

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

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        match error {
            Error::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
            Error::FailedPrecondition(message) => Status::failed_precondition(message),
            Error::NotFound(message) => Status::not_found(message),
            Error::Aborted(message) => Status::aborted(message),
            // Connection state changes are logged once by the health prober, not per request.
            Error::Unavailable(cause) => Status::unavailable(format!(
                "Redis is unavailable ({cause}); nothing was applied, retry with backoff"
            )),
            Error::Timeout { waited, effect } if effect.caller_may_retry() => Status::unavailable(format!(
                "Redis did not answer within {}; retry with backoff",
                whole_millis(waited)
            )),
            // gRPC's own meaning of DEADLINE_EXCEEDED: the change may have happened.
            Error::Timeout { waited, .. } => Status::deadline_exceeded(format!(
                "Redis did not answer within {}; the change may or may not have been applied",
                whole_millis(waited)
            )),
            Error::MayHaveApplied(cause) => Status::deadline_exceeded(format!(
                "the connection to Redis was lost ({cause}) while the change was in flight; \
                 it may or may not have been applied"
            )),
            Error::LocksPaused(left) => Status::unavailable(format!(
                "lock grants are paused for {} more: Redis lost its data (a restart without \
                 persistence or a failover to an empty replica), and a lease granted before may still \
                 be in use until the longest lease has run out; retry after that",
                humantime::format_duration(Duration::from_secs(left.as_secs() + 1))
            )),
            Error::DeadlineExceeded => Status::deadline_exceeded(error.to_string()),
            Error::OutOfMemory => Status::resource_exhausted("Redis is out of memory and refused the write"),
            Error::Exhausted(message) => Status::resource_exhausted(message),
            Error::Internal(detail) => {
                warn!(%detail, "internal error");
                Status::internal("internal error")
            }
            Error::Redis(source) => {
                warn!(error = %source, "unexpected Redis error");
                Status::internal("internal error")
            }
        }
    }
}

/// A duration rounded to whole milliseconds, for messages.
fn whole_millis(duration: Duration) -> humantime::FormattedDuration {
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
    /// The Envoy rate-limit rules (--rls-config) cannot be used.
    #[error("--rls-config: {0}")]
    RlsConfig(#[from] crate::rls::RulesError),
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
