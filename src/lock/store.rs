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
static LEAVE: LuaScript = LuaScript::new("lock_leave", include_str!("../scripts/lock_leave.lua"));

/// The lock's scripts, for loading into Redis ahead of the first request.
pub fn scripts() -> [&'static LuaScript; 5] {
    [&ACQUIRE, &RELEASE, &EXTEND, &DESCRIBE, &LEAVE]
}

/// How long a waiter's place in a lock's queue lasts unless it renews it by
/// attempting again: long enough to outlast a slow attempt on a busy machine,
/// short enough that the waiters of an instance that died without leaving
/// hold the line up only briefly.
pub const QUEUE_PLACE_LIFE: Duration = Duration::from_secs(5);

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
    /// Every permit is held, or earlier waiters go first.
    Held {
        /// The lease left of the holder whose lease ends first; zero when
        /// nobody holds it and earlier waiters are about to take it.
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
    /// How many grants may hold the name at once (1 for a lock).
    pub permits: u32,
    /// The caller's place in the queue when it waits ("" when it does not).
    pub ticket: &'a str,
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
        lock_keys(&mut invocation, space, request.name)
            .arg(request.token)
            .arg(request.ttl.millis())
            .arg(request.owner)
            .arg(request.request_id)
            .arg(self.retention_millis())
            .arg(request.permits)
            .arg(request.ticket)
            .arg(u64::try_from(QUEUE_PLACE_LIFE.as_millis()).unwrap_or(u64::MAX));
        let ((granted, token, fencing_token, ttl, _ahead), acknowledged): ((i64, String, u64, i64, i64), u32) = self
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
        lock_keys(&mut invocation, space, name)
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

    /// Takes `ticket` out of the lock's queue: its wait ended without the lock.
    /// Returns whether it was queued.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn leave(&self, space: &KeySpace, name: &str, ticket: &str, deadline: Instant) -> Result<bool, Error> {
        let mut invocation = LEAVE.prepare();
        lock_keys(&mut invocation, space, name)
            .arg(ticket)
            .arg(space.lock_released(name));
        let left: i64 = self
            .redis
            .run(Op::idempotent(LEAVE.name()), deadline, &invocation)
            .await?;
        Ok(left == 1)
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
        lock_keys(&mut invocation, space, name);
        let (holders, owner, fencing_token, ttl, waiting, permits): (u32, String, u64, i64, u32, u32) =
            self.redis.run(Op::read(DESCRIBE.name()), deadline, &invocation).await?;
        Ok(Holder {
            holders,
            owner,
            fencing_token,
            ttl: (holders > 0).then(|| millis(ttl)),
            waiting,
            permits,
        })
    }
}

/// A lock's four keys, in the order every lock script takes them.
fn lock_keys<'i>(invocation: &'i mut Invocation, space: &KeySpace, name: &str) -> &'i mut Invocation {
    invocation
        .key(space.lock(name))
        .key(space.lock_fence(name))
        .key(space.lock_queue(name))
        .key(space.lock_waiting(name))
}

fn millis(millis: i64) -> Duration {
    Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}
