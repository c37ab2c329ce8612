//! The Rust client of cachelock: a cache, rate limits,
//! sessions, locks and pub/sub, shared by every backend through one gRPC service.
//!
//! ```no_run
//! use std::time::Duration;
//! use cachelock_client::{Client, LockOptions, Options};
//!
//! # async fn run() -> Result<(), cachelock_client::Error> {
//! let client = Client::connect_with("localhost:50051", Options {
//!     token: Some("my-token".into()),
//!     ..Options::default()
//! })?;
//! client.cache().set("greeting", "hello", Some(Duration::from_secs(30))).await?;
//!
//! // Held until `lease` is dropped: the server renews it meanwhile.
//! let lease = client.locks().hold("invoice:42", &LockOptions::new(Duration::from_secs(30))).await?;
//! let fencing_token = lease.fencing_token(); // pass it with every protected write
//! lease.run(async { /* the protected work, stopped if the lease is lost */ }).await?;
//! # let _ = fencing_token;
//! # Ok(())
//! # }
//! ```
//!
//! Every call has a deadline (5 s unless [`Options::timeout`] says otherwise, plus
//! any wait the call asks the server for). A call is repeated only when the
//! server sent `RetryInfo` and repeating it is safe (see `clients/README.md`);
//! every other failure is returned at once as an [`Error`] whose [`Reason`] is
//! the one docs/errors.md names.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cache;
mod client;
mod election;
mod error;
mod lock;
mod pubsub;
mod ratelimit;
mod session;
mod time;

pub use cache::{Cache, Condition, FillError, FillOptions, SetOptions};
pub use client::{Client, DEFAULT_TIMEOUT, Options, Retry, RetryHook, Tls};
pub use election::{CampaignOptions, Change, Elections, Leader, Leadership, Observation};
pub use error::{Error, Reason};
pub use lock::{Grant, Holder, Lease, LockOptions, Locks};
pub use pubsub::{Event, PubSub, Subscription};
pub use ratelimit::{
    Algorithm, Calendar, CalendarUnit, Decision, Limit, OutagePolicy, RateLimits, Reported, Reservation, Settlement,
};
pub use session::{NewSession, Session, Sessions, Update};

/// A write's condition on a lock: applied only while no grant of `lock` is
/// newer than `fencing_token` (see [`Lease::fence`]).
pub use pb::lock::Fence;

/// The generated protocol types, for what this library does not wrap.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    /// The packages as protoc names them (`cachelock.cache.v1` is
    /// `cachelock::cache::v1`), so that a message of one may refer to another's
    /// (the cache and session writes take the lock package's `Fence`).
    pub mod cachelock {
        /// `cachelock.cache.v1`
        pub mod cache {
            /// `cachelock.cache.v1`
            pub mod v1 {
                tonic::include_proto!("cachelock.cache.v1");
            }
        }
        /// `cachelock.lock.v1`
        pub mod lock {
            /// `cachelock.lock.v1`
            pub mod v1 {
                tonic::include_proto!("cachelock.lock.v1");
            }
        }
        /// `cachelock.ratelimit.v1`
        pub mod ratelimit {
            /// `cachelock.ratelimit.v1`
            pub mod v1 {
                tonic::include_proto!("cachelock.ratelimit.v1");
            }
        }
        /// `cachelock.session.v1`
        pub mod session {
            /// `cachelock.session.v1`
            pub mod v1 {
                tonic::include_proto!("cachelock.session.v1");
            }
        }
        /// `cachelock.pubsub.v1`
        pub mod pubsub {
            /// `cachelock.pubsub.v1`
            pub mod v1 {
                tonic::include_proto!("cachelock.pubsub.v1");
            }
        }
        /// `cachelock.election.v1`
        pub mod election {
            /// `cachelock.election.v1`
            pub mod v1 {
                tonic::include_proto!("cachelock.election.v1");
            }
        }
    }
    pub use cachelock::{
        cache::v1 as cache, election::v1 as election, lock::v1 as lock, pubsub::v1 as pubsub,
        ratelimit::v1 as ratelimit, session::v1 as session,
    };
}

/// The Rust snippet of docs/clients.md, compiled as pasted (with `cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../../docs/clients.md")]
struct ClientsPage;
