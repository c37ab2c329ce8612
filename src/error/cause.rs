//! What a Redis command does ([`Effect`]) and why Redis could not be used
//! ([`Cause`]): the words the connection code and the error mapping share.

use std::{fmt, time::Duration};

use ::redis::RedisError;

use crate::time::whole_millis;

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
        // For a pipeline, the code of its first failed command.
        if let Some(code) = server_code(error) {
            let code = code.as_str();
            return match code {
                "NOAUTH" | "WRONGPASS" | "NOPERM" => Cause::Auth(code.to_owned()),
                "LOADING" => Cause::Loading,
                "BUSY" => Cause::Busy,
                // A blocked command released because its node became a replica.
                "READONLY" | "UNBLOCKED" => Cause::ReadOnly,
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
