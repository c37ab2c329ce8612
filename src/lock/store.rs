//! The lock's Redis side: each operation is one script, so one round trip.

use std::time::Duration;

use tokio::time::Instant;

use crate::{
    error::Error,
    redis::{Cause, Invocation, KeySpace, LuaScript, Op, Redis, Request as RedisRequest},
    request::Ttl,
};

static ACQUIRE: LuaScript = LuaScript::new("lock_acquire", include_str!("../scripts/lock_acquire.lua"));
static RELEASE: LuaScript = LuaScript::new("lock_release", include_str!("../scripts/lock_release.lua"));
static EXTEND: LuaScript = LuaScript::new("lock_extend", include_str!("../scripts/lock_extend.lua"));
static DESCRIBE: LuaScript = LuaScript::new("lock_describe", include_str!("../scripts/lock_describe.lua"));

/// The lock's scripts, for loading into Redis ahead of the first request.
pub fn scripts() -> [&'static LuaScript; 4] {
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

/// Why a token that was given to Release or Extend does not hold its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lapse {
    /// Nobody holds the lock: the lease expired (or was released by another call).
    Free,
    /// Another token holds the lock: the lease ran out and the lock was granted again.
    Taken,
}

impl Lapse {
    /// Reads a script's 0 (free) or -1 (taken).
    fn of(answer: i64) -> Lapse {
        if answer < 0 { Lapse::Taken } else { Lapse::Free }
    }
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
    /// The token to grant with, fresh for each Acquire call: sending the same
    /// attempt again after a lost connection finds its own grant.
    pub token: &'a str,
    /// The lease.
    pub ttl: Ttl,
    /// Who asks.
    pub owner: &'a str,
    /// The caller's retry key ("" for none).
    pub request_id: &'a str,
}

/// Locks in Redis, under keys from [`KeySpace::lock`] and [`KeySpace::lock_fence`].
#[derive(Clone)]
pub struct LockStore {
    redis: Redis,
    /// How long a fencing counter outlives the lease it was last used for.
    fence_retention: Duration,
    /// Replicas that must acknowledge a grant or an extension (`--lock-min-replicas`).
    min_replicas: u32,
}

impl LockStore {
    /// A store on the shared connections; grants wait for `min_replicas` replicas.
    pub fn new(redis: Redis, fence_retention: Duration, min_replicas: u32) -> LockStore {
        LockStore {
            redis,
            fence_retention,
            min_replicas,
        }
    }

    /// Runs a script that grants or extends a lease. With `--lock-min-replicas`,
    /// WAIT follows in the same round trip on a connection of its own (WAIT holds
    /// its connection), and the second value is how many replicas acknowledged.
    async fn granting<T: redis::FromRedisValue>(
        &self,
        op: Op,
        invocation: &Invocation,
        deadline: Instant,
    ) -> Result<(T, u32), Error> {
        if self.min_replicas == 0 {
            let reply = self.redis.run(op, deadline, invocation).await?;
            return Ok((reply, 0));
        }
        // Half of what is left for the acknowledgements; the rest answers or releases.
        let left = deadline.saturating_duration_since(Instant::now()) / 2;
        let request = RedisRequest::ScriptThenWait {
            script: invocation,
            replicas: self.min_replicas,
            timeout_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1),
        };
        self.redis.run(op.blocking(), deadline, request).await
    }

    /// Releases a grant that too few replicas acknowledged: a failover could
    /// erase it, so it is not handed out. If the release fails too, the lease
    /// runs out by itself; nobody was given its token.
    async fn unacknowledged(
        &self,
        space: &KeySpace,
        name: &str,
        token: &str,
        acknowledged: u32,
        deadline: Instant,
    ) -> Error {
        let released = self.release(space, name, token, deadline).await;
        if let Err(error) = released {
            tracing::debug!(%error, "could not release an unacknowledged lock grant; its lease will run out");
        }
        Error::Unavailable(Cause::NotReplicated {
            wanted: self.min_replicas,
            acknowledged,
        })
    }

    fn retention_millis(&self) -> u64 {
        u64::try_from(self.fence_retention.as_millis()).unwrap_or(u64::MAX)
    }

    /// Takes the lock if it is free (or already granted to this request).
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`]. Sent again after a lost
    /// connection: the token makes a repeated attempt find its own grant.
    pub async fn try_acquire(
        &self,
        space: &KeySpace,
        request: Request<'_>,
        deadline: Instant,
    ) -> Result<Attempt, Error> {
        let mut invocation = ACQUIRE.prepare();
        invocation
            .key(space.lock(request.name))
            .key(space.lock_fence(request.name))
            .arg(request.token)
            .arg(request.ttl.millis())
            .arg(request.owner)
            .arg(request.request_id)
            .arg(self.retention_millis());
        let ((granted, token, fencing_token, ttl), acknowledged): ((i64, String, u64, i64), u32) = self
            .granting(Op::replayable(ACQUIRE.name()), &invocation, deadline)
            .await?;
        if granted == 1 && acknowledged < self.min_replicas {
            return Err(self
                .unacknowledged(space, request.name, &token, acknowledged, deadline)
                .await);
        }
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

    /// Releases the lock if `token` holds it (or already did, by this same
    /// token); otherwise says why not.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn release(
        &self,
        space: &KeySpace,
        name: &str,
        token: &str,
        deadline: Instant,
    ) -> Result<Result<(), Lapse>, Error> {
        let mut invocation = RELEASE.prepare();
        invocation
            .key(space.lock(name))
            .key(space.lock_fence(name))
            .arg(token)
            .arg(space.lock_released(name))
            .arg(self.retention_millis());
        let released: i64 = self
            .redis
            .run(Op::idempotent(RELEASE.name()), deadline, &invocation)
            .await?;
        Ok(if released == 1 {
            Ok(())
        } else {
            Err(Lapse::of(released))
        })
    }

    /// Renews the lease if `token` holds the lock and returns its fencing token;
    /// otherwise says why not.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn extend(
        &self,
        space: &KeySpace,
        name: &str,
        token: &str,
        ttl: Ttl,
        deadline: Instant,
    ) -> Result<Result<u64, Lapse>, Error> {
        let mut invocation = EXTEND.prepare();
        invocation
            .key(space.lock(name))
            .key(space.lock_fence(name))
            .arg(token)
            .arg(ttl.millis())
            .arg(self.retention_millis());
        let (answer, acknowledged): (i64, u32) = self
            .granting(Op::idempotent(EXTEND.name()), &invocation, deadline)
            .await?;
        let Ok(fencing_token) = u64::try_from(answer) else {
            return Ok(Err(Lapse::of(answer)));
        };
        if fencing_token == 0 {
            return Ok(Err(Lapse::Free));
        }
        if acknowledged < self.min_replicas {
            return Err(self.unacknowledged(space, name, token, acknowledged, deadline).await);
        }
        Ok(Ok(fencing_token))
    }

    /// Shows the holder of a lock.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn describe(&self, space: &KeySpace, name: &str, deadline: Instant) -> Result<Holder, Error> {
        let mut invocation = DESCRIBE.prepare();
        invocation.key(space.lock(name)).key(space.lock_fence(name));
        let (held, owner, fencing_token, ttl): (i64, String, u64, i64) =
            self.redis.run(Op::read(DESCRIBE.name()), deadline, &invocation).await?;
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
