//! The one mapping from what can go wrong inside the service to a gRPC status,
//! and the errors that stop the service from starting.
//!
//! Handlers return [`Error`]; `?` turns it into a [`tonic::Status`] through the
//! single `From` impl below, so every RPC answers a given failure the same way.

use std::{io, time::Duration};

use redis::{ErrorKind, RedisError, ServerErrorKind};
use tonic::Status;
use tracing::warn;

/// Whether repeating an operation is harmless, which decides what a caller is
/// told when Redis does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// A read, or a write that lands on the same state when repeated.
    Idempotent,
    /// A write whose repetition changes the outcome (an increment, a take).
    NotIdempotent,
}

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
    /// Redis cannot be reached, or is failing over, loading or refusing the login.
    #[error("Redis is unavailable")]
    Unavailable(#[source] RedisError),
    /// Redis did not answer within the RPC's budget.
    #[error("Redis did not answer within {}", humantime::format_duration(*.waited))]
    Timeout {
        /// The budget that ran out.
        waited: Duration,
        /// Whether the command may have been applied although no answer came.
        effect: Effect,
    },
    /// The caller's deadline had passed before any work began.
    #[error("the deadline passed before the request was handled")]
    DeadlineExceeded,
    /// Redis refused a write because it reached `maxmemory` and may not evict.
    #[error("Redis is out of memory")]
    OutOfMemory,
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
}

/// Classifies a Redis failure as transient (the caller may retry), a full
/// memory, or unexpected.
impl From<RedisError> for Error {
    fn from(error: RedisError) -> Error {
        if error.code() == Some("OOM") {
            return Error::OutOfMemory;
        }
        let transient = error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
            || matches!(
                error.kind(),
                ErrorKind::AuthenticationFailed
                    | ErrorKind::Server(
                        ServerErrorKind::BusyLoading
                            | ServerErrorKind::TryAgain
                            | ServerErrorKind::ClusterDown
                            | ServerErrorKind::MasterDown
                            | ServerErrorKind::ReadOnly
                    )
            );
        if transient {
            Error::Unavailable(error)
        } else {
            Error::Redis(error)
        }
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
            Error::Unavailable(_) => Status::unavailable("Redis is unavailable; retry with backoff"),
            Error::Timeout {
                waited,
                effect: Effect::Idempotent,
            } => Status::unavailable(format!(
                "Redis did not answer within {}; retry with backoff",
                humantime::format_duration(waited)
            )),
            // gRPC's own meaning of DEADLINE_EXCEEDED: the change may have happened.
            Error::Timeout {
                waited,
                effect: Effect::NotIdempotent,
            } => Status::deadline_exceeded(format!(
                "Redis did not answer within {}; the change may or may not have been applied",
                humantime::format_duration(waited)
            )),
            Error::DeadlineExceeded => Status::deadline_exceeded(error.to_string()),
            Error::OutOfMemory => Status::resource_exhausted("Redis is out of memory and refused the write"),
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
            StartError::RedisServerMissing | StartError::RedisConfig(_) => 2,
            _ => 1,
        }
    }
}
