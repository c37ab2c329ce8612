//! The library's one error, and the one place a gRPC status becomes it.

use std::{collections::HashMap, fmt, time::Duration};

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The `domain` of the `ErrorInfo` cachelock sends.
const DOMAIN: &str = "cachelock.dev";

/// Why a call failed: the stable `ErrorInfo` reasons of docs/errors.md, and the
/// library's own for failures that did not come from cachelock.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// A request field is wrong; [`Error::field`] names it.
    InvalidField,
    /// The request is not a protobuf message of the method's type.
    MalformedRequest,
    /// No credential, or one the auth file does not know.
    Unauthenticated,
    /// The client may not call this method (or only read).
    PermissionDenied,
    /// No such session: unknown, expired or ended.
    SessionNotFound,
    /// The session moved on from the expected version.
    VersionConflict,
    /// Increment on a value that is not a 64-bit integer.
    NotAnInteger,
    /// The increment would overflow a 64-bit integer.
    IntegerOverflow,
    /// Another token holds the lock now (or the cache fill lease): stop the protected work.
    LeaseLost,
    /// Nobody holds the lock: the lease ran out.
    LockNotHeld,
    /// A fenced write was refused: the fence's lock was granted again since.
    FencedOut,
    /// Redis could not be reached or refused the command; nothing was applied.
    RedisUnavailable,
    /// Redis did not answer in time, and the call is safe to repeat.
    RedisTimeout,
    /// Lock grants pause after Redis lost its data, or may have.
    LocksPaused,
    /// Redis may evict keys, so no lease is granted or extended.
    EvictionPolicy,
    /// The lock is held with other permits than asked for.
    PermitsMismatch,
    /// A change was in flight when Redis stopped answering: it may have happened.
    MayHaveApplied,
    /// The deadline had passed before any work began.
    DeadlinePassed,
    /// Redis reached `maxmemory` and refused the write.
    RedisOutOfMemory,
    /// The instance is at `--max-in-flight`.
    Overloaded,
    /// The client is over its `max_requests_per_second`.
    ClientRateLimited,
    /// The client is over its `max_write_bytes_per_second`.
    WriteBudgetExceeded,
    /// Too many callers wait for the lock or the cache fill.
    TooManyWaiters,
    /// Too many health Watch streams are open.
    TooManyWatchers,
    /// Too many Subscribe streams are open.
    TooManySubscribers,
    /// The answer would exceed `--max-response-bytes`.
    ResponseTooLarge,
    /// A failure inside the service; its log says more.
    Internal,
    /// The library's own: a lock's wait ended without the lock.
    NotAcquired,
    /// A reason this version of the library does not know: branch on [`Error::code`].
    Other(String),
    /// The failure did not come from cachelock (the connection, the gRPC layer, a
    /// proxy): branch on [`Error::code`].
    None,
}

impl Reason {
    /// The reasons cachelock sends, by their `ErrorInfo` name.
    const SENT: [(&'static str, Reason); 27] = [
        ("INVALID_FIELD", Reason::InvalidField),
        ("MALFORMED_REQUEST", Reason::MalformedRequest),
        ("UNAUTHENTICATED", Reason::Unauthenticated),
        ("PERMISSION_DENIED", Reason::PermissionDenied),
        ("SESSION_NOT_FOUND", Reason::SessionNotFound),
        ("VERSION_CONFLICT", Reason::VersionConflict),
        ("NOT_AN_INTEGER", Reason::NotAnInteger),
        ("INTEGER_OVERFLOW", Reason::IntegerOverflow),
        ("LEASE_LOST", Reason::LeaseLost),
        ("LOCK_NOT_HELD", Reason::LockNotHeld),
        ("FENCED_OUT", Reason::FencedOut),
        ("REDIS_UNAVAILABLE", Reason::RedisUnavailable),
        ("REDIS_TIMEOUT", Reason::RedisTimeout),
        ("LOCKS_PAUSED", Reason::LocksPaused),
        ("EVICTION_POLICY", Reason::EvictionPolicy),
        ("PERMITS_MISMATCH", Reason::PermitsMismatch),
        ("MAY_HAVE_APPLIED", Reason::MayHaveApplied),
        ("DEADLINE_PASSED", Reason::DeadlinePassed),
        ("REDIS_OUT_OF_MEMORY", Reason::RedisOutOfMemory),
        ("OVERLOADED", Reason::Overloaded),
        ("CLIENT_RATE_LIMITED", Reason::ClientRateLimited),
        ("WRITE_BUDGET_EXCEEDED", Reason::WriteBudgetExceeded),
        ("TOO_MANY_WAITERS", Reason::TooManyWaiters),
        ("TOO_MANY_WATCHERS", Reason::TooManyWatchers),
        ("TOO_MANY_SUBSCRIBERS", Reason::TooManySubscribers),
        ("RESPONSE_TOO_LARGE", Reason::ResponseTooLarge),
        ("INTERNAL", Reason::Internal),
    ];

    /// The reason named `name` in an `ErrorInfo`.
    pub fn from_name(name: &str) -> Reason {
        Reason::SENT
            .iter()
            .find(|(sent, _)| *sent == name)
            .map_or_else(|| Reason::Other(name.to_owned()), |(_, reason)| reason.clone())
    }

    /// The `ErrorInfo` name: `LEASE_LOST`, …; `NOT_ACQUIRED` for the library's own,
    /// empty when the failure did not come from cachelock.
    pub fn name(&self) -> &str {
        match self {
            Reason::NotAcquired => "NOT_ACQUIRED",
            Reason::Other(name) => name,
            Reason::None => "",
            known => Reason::SENT
                .iter()
                .find(|(_, reason)| reason == known)
                .map_or("", |(name, _)| name),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed call: the gRPC code, the stable reason to branch on, and the
/// server's advice.
#[derive(Clone, Debug)]
pub struct Error(Box<Failure>);

/// What an [`Error`] carries, boxed so that a `Result` stays small.
#[derive(Clone, Debug)]
struct Failure {
    code: Code,
    reason: Reason,
    message: String,
    retry_after: Option<Duration>,
    field: Option<String>,
    metadata: HashMap<String, String>,
}

impl Error {
    /// The gRPC status code.
    pub fn code(&self) -> Code {
        self.0.code
    }

    /// The stable reason: branch on this.
    pub fn reason(&self) -> &Reason {
        &self.0.reason
    }

    /// The server's message, for people.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// How long the server advised to wait before trying again (`RetryInfo`);
    /// `None` when waiting would not help.
    pub fn retry_after(&self) -> Option<Duration> {
        self.0.retry_after
    }

    /// The request field a `BadRequest` named, for [`Reason::InvalidField`].
    pub fn field(&self) -> Option<&str> {
        self.0.field.as_deref()
    }

    /// The `ErrorInfo` metadata, such as `cause` for [`Reason::RedisUnavailable`].
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.0.metadata
    }

    /// An error the library raises itself, not from a status.
    pub(crate) fn local(code: Code, reason: Reason, message: impl Into<String>) -> Error {
        Error(Box::new(Failure {
            code,
            reason,
            message: message.into(),
            retry_after: None,
            field: None,
            metadata: HashMap::new(),
        }))
    }

    /// A request the library refuses before sending it.
    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Error {
        let mut error = Error::local(Code::InvalidArgument, Reason::InvalidField, message);
        error.0.field = Some(field.to_owned());
        error
    }

    /// A call that did not finish before its deadline, by the library's clock.
    pub(crate) fn deadline(method: &str) -> Error {
        Error::local(
            Code::DeadlineExceeded,
            Reason::None,
            format!("{method} did not finish before its deadline"),
        )
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Error {
        let details = status.get_error_details();
        let (reason, metadata) = match details.error_info() {
            Some(info) if info.domain == DOMAIN => (Reason::from_name(&info.reason), info.metadata.clone()),
            _ => (Reason::None, HashMap::new()),
        };
        let field = details
            .bad_request()
            .and_then(|bad| bad.field_violations.first())
            .map(|violation| violation.field.clone())
            .or_else(|| metadata.get("field").cloned());
        Error(Box::new(Failure {
            code: status.code(),
            reason,
            message: status.message().to_owned(),
            retry_after: details.retry_info().and_then(|retry| retry.retry_delay),
            field,
            metadata,
        }))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failure = &self.0;
        match failure.reason {
            Reason::None => write!(f, "{:?}: {}", failure.code, failure.message),
            _ => write!(f, "{:?} {}: {}", failure.code, failure.reason, failure.message),
        }
    }
}

impl std::error::Error for Error {}
