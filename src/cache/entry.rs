//! What the cache's store takes and answers: entries, write conditions, and
//! GetOrLease's leases.

use std::time::Duration;

use crate::request::Ttl;

/// What a `CacheStore::get_or_lease` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leased {
    /// A fresh value, and a lease to refresh it when this caller was chosen to.
    Fresh {
        /// The value and its ttl left.
        stored: Stored,
        /// The refresh lease, if this caller got it.
        lease: Option<Lease>,
    },
    /// The value is past its ttl, kept as stale; another caller fills it.
    Stale {
        /// The stale copy and how long it is kept.
        stored: Stored,
        /// The other caller's lease left.
        lease_left: Duration,
    },
    /// This caller holds the lease and should fill the key.
    Lease {
        /// The lease.
        lease: Lease,
        /// The stale copy, if one is kept.
        stale: Option<Stored>,
    },
    /// Another caller fills it, and no stale copy is kept.
    Filling {
        /// The other caller's lease left.
        lease_left: Duration,
    },
}

/// What one GetOrLease asks of Redis.
#[derive(Debug, Clone, Copy)]
pub struct LeaseAsk<'a> {
    /// The user's key.
    pub key: &'a str,
    /// The token of the lease this call may be given (fresh for each call).
    pub token: &'a str,
    /// That lease's ttl.
    pub lease_ttl: Ttl,
    /// Refresh ahead, in millionths of the entry's ttl (0: never).
    pub refresh_millionths: u32,
}

/// A fill lease given to this caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The token that fills the key (Set with `lease_token`).
    pub token: String,
    /// The lease left.
    pub ttl: Duration,
}

/// What a [`CacheStore::set`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The value is stored.
    Stored,
    /// The condition did not hold.
    NotStored,
    /// The fill lease is no longer the caller's.
    LeaseLost,
}

/// How a [`CacheStore::set`] writes besides the value and its ttl.
#[derive(Debug, Clone, Copy)]
pub struct SetOptions<'a> {
    /// When it may write.
    pub condition: Condition,
    /// How long a stale copy is kept past the ttl (zero: none).
    pub stale_ttl: Duration,
    /// The fill lease it fills ("" for none).
    pub lease_token: &'a str,
}

/// A stored value and its remaining time to live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The value.
    pub value: Vec<u8>,
    /// Remaining time to live in milliseconds as Redis reports it (-1: no expiry).
    pub ttl_millis: i64,
}

/// When a [`CacheStore::set`] may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Whether or not the key exists.
    Always,
    /// Only when the key does not exist (SET NX).
    IfAbsent,
    /// Only when the key exists (SET XX).
    IfPresent,
}

/// One entry of a [`CacheStore::set_many`].
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    /// The user's key.
    pub key: &'a str,
    /// The value.
    pub value: &'a [u8],
    /// Its time to live.
    pub ttl: Ttl,
}
