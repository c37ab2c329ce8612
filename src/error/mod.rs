//! The one mapping from what can go wrong inside the service to a gRPC status,
//! and the errors that stop the service from starting.
//!
//! Handlers return [`Error`]; `?` turns it into a [`tonic::Status`] through the
//! single `From` impl below, so every RPC answers a given failure the same way.
//! Every status carries `google.rpc.Status` details (the `grpc-status-details-bin`
//! trailer): an `ErrorInfo` whose [`Reason`] a client can switch on, a
//! `BadRequest` naming the field for INVALID_ARGUMENT, and a `RetryInfo` with a
//! suggested delay where waiting helps.

mod cause;
mod reason;
mod start;

use std::time::Duration;

use ::redis::RedisError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::warn;

pub(crate) use cause::server_code;
pub use cause::{Cause, Effect};
pub use reason::{DOMAIN, Reason};
pub use start::StartError;

use crate::time::whole_millis;

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

/// Classifies an error reply or client error from Redis.
impl From<RedisError> for Error {
    fn from(error: RedisError) -> Error {
        match server_code(&error).as_deref() {
            Some("OOM") => return Error::OutOfMemory,
            // A WAIT unblocked by a failover, after what came before it in its
            // pipeline (a grant script) ran.
            Some("UNBLOCKED") => return Error::MayHaveApplied(Cause::of(&error)),
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
                    "Redis was cut off from the change while it was in flight ({cause}); \
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
        let timeout = |effect| Error::Timeout {
            waited: Duration::from_millis(5),
            effect,
        };
        let precondition = |reason| Error::FailedPrecondition(reason, "refused".to_owned());
        let ms = Duration::from_millis;
        // One row per error the service sends: the code, and whether RetryInfo comes with it.
        #[rustfmt::skip]
        let cases = [
            (Error::invalid("entries[2].ttl", "must be positive"), Code::InvalidArgument, false),
            (Error::Malformed("truncated".to_owned()), Code::InvalidArgument, false),
            (Error::Unauthenticated("who".to_owned()), Code::Unauthenticated, false),
            (Error::PermissionDenied("no".to_owned()), Code::PermissionDenied, false),
            (Error::NotFound(Reason::SessionNotFound, "gone".to_owned()), Code::NotFound, false),
            (Error::Aborted(Reason::VersionConflict, "moved".to_owned()), Code::Aborted, false),
            (precondition(Reason::NotAnInteger), Code::FailedPrecondition, false),
            (precondition(Reason::IntegerOverflow), Code::FailedPrecondition, false),
            (precondition(Reason::LeaseLost), Code::FailedPrecondition, false),
            (precondition(Reason::LockNotHeld), Code::FailedPrecondition, false),
            (precondition(Reason::FencedOut), Code::FailedPrecondition, false),
            (precondition(Reason::EvictionPolicy), Code::FailedPrecondition, false),
            (precondition(Reason::PermitsMismatch), Code::FailedPrecondition, false),
            (Error::Unavailable(Cause::Refused), Code::Unavailable, true),
            (timeout(Effect::Read), Code::Unavailable, true),
            (Error::LocksPaused(Duration::from_secs(3)), Code::Unavailable, true),
            (Error::MayHaveApplied(Cause::Closed), Code::DeadlineExceeded, false),
            (timeout(Effect::Write), Code::DeadlineExceeded, false),
            (Error::DeadlineExceeded, Code::DeadlineExceeded, false),
            (Error::OutOfMemory, Code::ResourceExhausted, true),
            (exhausted(Reason::Overloaded, Some(ms(100))), Code::ResourceExhausted, true),
            (exhausted(Reason::ClientRateLimited, Some(ms(7))), Code::ResourceExhausted, true),
            (exhausted(Reason::WriteBudgetExceeded, Some(ms(20))), Code::ResourceExhausted, true),
            (exhausted(Reason::TooManyWaiters, Some(ms(1000))), Code::ResourceExhausted, true),
            (exhausted(Reason::TooManyWatchers, Some(ms(5000))), Code::ResourceExhausted, true),
            (exhausted(Reason::TooManySubscribers, Some(ms(1000))), Code::ResourceExhausted, true),
            (exhausted(Reason::ResponseTooLarge, None), Code::ResourceExhausted, false),
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
