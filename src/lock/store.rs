//! The lock's Redis side: each operation is one script, so one round trip.

use std::{sync::LazyLock, time::Duration};

use redis::Script;

use crate::{
    error::{Effect, Error},
    redis::{Keys, Redis, bounded},
    request::Ttl,
};

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../scripts/lock_acquire.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../scripts/lock_release.lua")));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../scripts/lock_extend.lua")));
static DESCRIBE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../scripts/lock_describe.lua")));

/// How long a lock's fencing counter outlives its last grant. Past that, the
/// next grant's token comes from the Redis clock, which is still larger.
const FENCE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The lock's scripts, for loading into Redis ahead of the first request.
pub fn scripts() -> [&'static Script; 4] {
    [&ACQUIRE, &RELEASE, &EXTEND, &DESCRIBE]
}

/// A lease granted to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The proof of ownership.
    pub token: String,
    /// The grant's fencing token.
    pub fencing_token: u64,
    /// The lease left.
    pub ttl: Duration,
}

/// The result of one attempt to take a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The caller holds the lock (now, or still, for a repeated request id).
    Granted(Grant),
    /// Someone else holds it, for this long at most.
    Held {
        /// The holder's lease left.
        ttl: Duration,
    },
}

/// What Describe shows of a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Whether the lock is held.
    pub held: bool,
    /// The holder's owner text.
    pub owner: String,
    /// The holder's fencing token, or the last one granted.
    pub fencing_token: u64,
    /// The holder's lease left.
    pub ttl: Option<Duration>,
}

/// What a new grant is made of.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The lock's name.
    pub name: &'a str,
    /// The token to grant with.
    pub token: &'a str,
    /// The lease.
    pub ttl: Ttl,
    /// Who asks.
    pub owner: &'a str,
    /// The caller's retry key ("" for none).
    pub request_id: &'a str,
}

/// Locks in Redis, under keys from [`Keys::lock`] and [`Keys::lock_fence`].
#[derive(Clone)]
pub struct LockStore {
    redis: Redis,
    keys: Keys,
}

impl LockStore {
    /// A store on the shared connection.
    pub fn new(redis: Redis, keys: Keys) -> LockStore {
        LockStore { redis, keys }
    }

    /// The channel a release of `name` is announced on.
    pub fn release_channel(&self, name: &str) -> String {
        self.keys.lock_released(name)
    }

    /// Takes the lock if it is free (or already granted to `request.request_id`).
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`]; after a timeout the lock may have
    /// been granted, which a retry with the same request id recovers.
    pub async fn try_acquire(&self, request: Request<'_>, budget: Duration) -> Result<Attempt, Error> {
        let mut conn = self.redis.connection();
        let (granted, token, fencing_token, ttl): (i64, String, u64, i64) = bounded(
            budget,
            Effect::NotIdempotent,
            ACQUIRE
                .key(self.keys.lock(request.name))
                .key(self.keys.lock_fence(request.name))
                .arg(request.token)
                .arg(request.ttl.millis())
                .arg(request.owner)
                .arg(request.request_id)
                .arg(FENCE_RETENTION.as_millis() as u64)
                .invoke_async(&mut conn),
        )
        .await?;
        let ttl = millis(ttl);
        Ok(if granted == 1 {
            Attempt::Granted(Grant {
                token,
                fencing_token,
                ttl,
            })
        } else {
            Attempt::Held { ttl }
        })
    }

    /// Releases the lock if `token` holds it; returns whether it did.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn release(&self, name: &str, token: &str, budget: Duration) -> Result<bool, Error> {
        let mut conn = self.redis.connection();
        let released: i64 = bounded(
            budget,
            Effect::Idempotent,
            RELEASE
                .key(self.keys.lock(name))
                .arg(token)
                .arg(self.keys.lock_released(name))
                .invoke_async(&mut conn),
        )
        .await?;
        Ok(released == 1)
    }

    /// Renews the lease if `token` holds the lock; returns its fencing token if so.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn extend(&self, name: &str, token: &str, ttl: Ttl, budget: Duration) -> Result<Option<u64>, Error> {
        let mut conn = self.redis.connection();
        let fencing_token: u64 = bounded(
            budget,
            Effect::Idempotent,
            EXTEND
                .key(self.keys.lock(name))
                .arg(token)
                .arg(ttl.millis())
                .invoke_async(&mut conn),
        )
        .await?;
        Ok((fencing_token > 0).then_some(fencing_token))
    }

    /// Shows the holder of a lock.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn describe(&self, name: &str, budget: Duration) -> Result<Holder, Error> {
        let mut conn = self.redis.connection();
        let (held, owner, fencing_token, ttl): (i64, String, u64, i64) = bounded(
            budget,
            Effect::Idempotent,
            DESCRIBE
                .key(self.keys.lock(name))
                .key(self.keys.lock_fence(name))
                .invoke_async(&mut conn),
        )
        .await?;
        Ok(Holder {
            held: held == 1,
            owner,
            fencing_token,
            ttl: (held == 1).then(|| millis(ttl)),
        })
    }
}

fn millis(millis: i64) -> Duration {
    Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}
