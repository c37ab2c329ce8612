//! What the grant script is asked, and what it and the other lock scripts
//! answer.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::{redis::LockKeys, request::Ttl};

/// A lease granted to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The proof of ownership.
    pub token: String,
    /// The grant's fencing token.
    pub fencing_token: u64,
    /// The lease left when Redis granted it.
    pub ttl: Duration,
}

/// Why grants on a lock's node are paused, as its epoch marker says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseCause {
    /// The node lost the data a marker recorded (a restart without persistence,
    /// a failover to an empty replica, a flush).
    Lost,
    /// The node has no marker and started less than the longest lease ago: it
    /// may have restarted empty.
    Young,
    /// The node evicted keys: perhaps leases.
    Evicted,
}

impl PauseCause {
    pub(super) fn of(why: &str) -> PauseCause {
        match why {
            "young" => PauseCause::Young,
            "evicted" => PauseCause::Evicted,
            _ => PauseCause::Lost,
        }
    }
}

/// The result of one attempt to take a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The caller holds the lock (now, or still, for a repeated request).
    Granted(Grant),
    /// Every permit is held, or earlier waiters go first.
    Held {
        /// The lease left of the holder whose lease ends first; zero when
        /// nobody holds it and earlier waiters are about to take it.
        ttl: Duration,
    },
    /// Grants on the lock's node are paused this much longer.
    Paused {
        /// The pause left, by the Redis clock.
        left: Duration,
        /// Why.
        cause: PauseCause,
    },
}

/// The result of one attempt to extend a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Extended; the grant's fencing token.
    Extended(u64),
    /// The token does not hold the lock.
    Lapsed(Lapse),
    /// Grants and extensions on the lock's node are paused.
    Paused {
        /// The pause left, by the Redis clock.
        left: Duration,
        /// Why.
        cause: PauseCause,
    },
}

/// Why a token that was given to Release or Extend does not hold its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lapse {
    /// Nobody holds the lock: the lease expired (or was released by another call).
    Free,
    /// Another token holds the lock: the lease ran out and the lock was granted again.
    Taken,
}

/// What Describe shows of a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// How many grants hold it (at most its permits).
    pub holders: u32,
    /// The latest grant's owner text.
    pub owner: String,
    /// The latest grant's fencing token, or the last one granted.
    pub fencing_token: u64,
    /// The latest grant's lease left.
    pub ttl: Option<Duration>,
    /// How many callers wait in its queue.
    pub waiting: u32,
    /// The permits of its last grant.
    pub permits: u32,
}

/// What a new grant is made of.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The lock's keys.
    pub keys: &'a LockKeys,
    /// The token to grant with, fresh for each Acquire call: sending the same
    /// attempt again after a lost connection finds its own grant.
    pub token: &'a str,
    /// The lease.
    pub ttl: Ttl,
    /// Who asks.
    pub owner: &'a str,
    /// The request's retry key ("" for none; see [`request_key`]).
    pub request_key: &'a str,
    /// How many grants may hold the name at once (1 for a lock).
    pub permits: u32,
    /// The caller's place in the queue when it waits ("" when it does not).
    pub ticket: &'a str,
}

/// The key under which a grant is found again by a retry: a digest of the
/// request id with the authenticated client and the owner text, so that a
/// request id another caller also uses is another key, never the same grant.
pub fn request_key(client: Option<&str>, owner: &str, request_id: &str) -> String {
    if request_id.is_empty() {
        return String::new();
    }
    let mut digest = Sha256::new();
    for part in [client.unwrap_or(""), owner, request_id] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    }
    digest.finalize()[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// How grants are made, from the configuration.
#[derive(Debug, Clone)]
pub struct GrantRules {
    /// How long a fencing counter outlives the lease it was last used for.
    pub fence_retention: Duration,
    /// Replicas that must acknowledge a grant or an extension (`--lock-min-replicas`).
    pub min_replicas: u32,
    /// The longest lease (`--lock-max-ttl`): how long grants pause after a possible loss.
    pub max_ttl: Duration,
    /// Grant at once on a young Redis without a marker (`--lock-trust-young-redis`).
    pub trust_young_redis: bool,
    /// Grant although Redis may evict keys (`--allow-evicting-redis`).
    pub allow_evicting: bool,
    /// Grant at once after a node restarted with its data (`--lock-trust-persistence`).
    pub trust_persistence: bool,
}

#[cfg(test)]
mod tests {
    use super::request_key;

    #[test]
    fn a_request_key_is_the_request_ids_only_with_the_same_client_and_owner() {
        let key = request_key(Some("billing"), "job-1", "r-1");
        assert_eq!(key, request_key(Some("billing"), "job-1", "r-1"));
        assert_eq!(key.len(), 32);
        assert_ne!(key, request_key(Some("billing"), "job-2", "r-1"));
        assert_ne!(key, request_key(Some("reports"), "job-1", "r-1"));
        assert_ne!(key, request_key(None, "job-1", "r-1"));
        // Lengths are part of the digest: parts cannot slide into each other.
        assert_ne!(request_key(None, "ab", "c"), request_key(None, "a", "bc"));
        assert_eq!(request_key(Some("billing"), "job-1", ""), "");
    }
}
