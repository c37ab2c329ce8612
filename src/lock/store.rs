//! The lock's Redis side: each operation is one script, so one round trip, and
//! every grant and extension goes through the one script that decides them
//! (`lock_grant.lua`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::grant::{Attempt, Grant, GrantRules, Holder, Lapse, PauseCause, Renewal, Request};
use crate::{
    error::{Cause, Error, Reason},
    redis::{Invocation, LockKeys, LuaScript, Op, Redis, Request as RedisRequest},
    request::Ttl,
    time,
};

static GRANT: LuaScript = LuaScript::new("lock_grant", include_str!("../scripts/lock_grant.lua"));
static RELEASE: LuaScript = LuaScript::new("lock_release", include_str!("../scripts/lock_release.lua"));
static DESCRIBE: LuaScript = LuaScript::new("lock_describe", include_str!("../scripts/lock_describe.lua"));
static FENCE_OUT: LuaScript = LuaScript::new("lock_fence_out", include_str!("../scripts/lock_fence_out.lua"));
static RECORD_TERM: LuaScript = LuaScript::new("election_record", include_str!("../scripts/election_record.lua"));

/// The lock's scripts, for loading into Redis ahead of the first request.
pub fn scripts() -> [&'static LuaScript; 5] {
    [&GRANT, &RELEASE, &DESCRIBE, &FENCE_OUT, &RECORD_TERM]
}

/// How long a waiter's place in a lock's queue lasts unless it renews it by
/// attempting again: long enough to outlast a slow attempt on a busy machine,
/// short enough that the waiters of an instance that died without leaving
/// hold the line up only briefly.
pub const QUEUE_PLACE_LIFE: Duration = Duration::from_secs(5);

/// How long an epoch marker lives without a grant in its slot tag (each grant
/// renews it). Far longer than any lease: a marker that expired says nothing
/// of a lease, since none can have been granted in its tag meanwhile.
const MARKER_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Locks in Redis, under the keys of [`crate::redis::KeySpace::lock`].
#[derive(Clone)]
pub struct LockStore {
    redis: Redis,
    rules: Arc<GrantRules>,
    /// The epoch marker of each slot tag as this instance last saw it. Given to
    /// every grant, so that a marker that vanished or changed since is noticed
    /// in the grant's own script.
    markers: Arc<Markers>,
}

/// The marker ids this instance saw, per slot tag, and when: a memory older
/// than half the markers' retention is forgotten, since the marker may have
/// expired unused since (which is no loss).
struct Markers {
    ids: Box<[AtomicU64]>,
    /// Seconds since `epoch` when each id was last seen.
    seen: Box<[AtomicU64]>,
    epoch: std::time::Instant,
}

impl Markers {
    fn new() -> Markers {
        Markers {
            ids: (0..=u16::MAX).map(|_| AtomicU64::new(0)).collect(),
            seen: (0..=u16::MAX).map(|_| AtomicU64::new(0)).collect(),
            epoch: std::time::Instant::now(),
        }
    }

    /// The id last seen for `tag`, or 0 for none (or none recently enough to count).
    fn known(&self, tag: u16) -> u64 {
        let tag = usize::from(tag);
        let seen = self.seen[tag].load(Ordering::Relaxed);
        let now = self.epoch.elapsed().as_secs();
        if now.saturating_sub(seen) > MARKER_RETENTION.as_secs() / 2 {
            return 0;
        }
        self.ids[tag].load(Ordering::Relaxed)
    }

    fn saw(&self, tag: u16, id: u64) {
        let tag = usize::from(tag);
        self.ids[tag].store(id, Ordering::Relaxed);
        self.seen[tag].store(self.epoch.elapsed().as_secs(), Ordering::Relaxed);
    }
}

/// How long an election's record of its term's start is kept: a term longer
/// than this is reported without its start.
const TERM_RECORD_MILLIS: u64 = 24 * 60 * 60 * 1000;

impl LockStore {
    /// A store on the shared connections, granting by `rules`.
    pub fn new(redis: Redis, rules: GrantRules) -> LockStore {
        LockStore {
            redis,
            rules: Arc::new(rules),
            markers: Arc::new(Markers::new()),
        }
    }

    /// Runs the grant script. With `--lock-min-replicas`, WAIT follows in the
    /// same round trip on a connection of its own (WAIT holds its connection),
    /// and the second value is how many replicas acknowledged.
    async fn granting(&self, op: Op, invocation: &Invocation, deadline: Instant) -> Result<(GrantReply, u32), Error> {
        let min_replicas = self.rules.min_replicas;
        if min_replicas == 0 {
            let reply = self.redis.run(op, deadline, invocation).await?;
            return Ok((reply, 0));
        }
        // Half of what is left for the acknowledgements; the rest answers or releases.
        let request = RedisRequest::ScriptThenWait {
            script: invocation,
            replicas: min_replicas,
            deadline,
        };
        self.redis.run(op.blocking(), deadline, request).await
    }

    /// The answer to a grant or extension that too few replicas acknowledged:
    /// a failover could erase it, so it is not handed out. A grant this very
    /// call made (`release`) is released, since nobody was given its token (if
    /// the release fails too, the lease runs out by itself); one found by its
    /// request id, or an extension, is left as it is: its holder already counts
    /// on it, and a longer lease on the primary takes nothing from anyone.
    async fn unacknowledged(
        &self,
        keys: &LockKeys,
        release: Option<&str>,
        acknowledged: u32,
        deadline: Instant,
    ) -> Error {
        if let Some(token) = release
            && let Err(error) = self.release(keys, token, "", deadline).await
        {
            tracing::debug!(%error, "could not release an unacknowledged lock grant; its lease will run out");
        }
        Error::Unavailable(Cause::NotReplicated {
            wanted: self.rules.min_replicas,
            acknowledged,
        })
    }

    /// The grant script's call, with the arguments every mode shares.
    fn invocation(&self, mode: &str, request: &Request<'_>) -> Result<Invocation, Error> {
        let known = self.markers.known(request.keys.tag);
        let mut invocation = GRANT.prepare();
        invocation
            .key(&request.keys.holders)
            .key(&request.keys.state)
            .key(&request.keys.queue)
            .key(&request.keys.waiting)
            .key(&request.keys.epoch)
            .arg(mode)
            .arg(request.token)
            .arg(request.ttl.millis())
            .arg(request.owner)
            .arg(request.request_key)
            .arg(request.permits)
            .arg(request.ticket)
            .arg(time::millis(QUEUE_PLACE_LIFE))
            .arg(time::millis(self.rules.fence_retention))
            .arg(if known == 0 { String::new() } else { known.to_string() })
            .arg(fresh_marker_id()?.to_string())
            .arg(time::millis(self.rules.max_ttl))
            .arg(u8::from(self.rules.trust_young_redis))
            .arg(u8::from(self.rules.allow_evicting))
            .arg(time::millis(MARKER_RETENTION))
            .arg(u8::from(self.rules.trust_persistence));
        Ok(invocation)
    }

    /// Remembers the marker a reply named, and turns refusals that are errors
    /// for every caller into them.
    fn read(&self, keys: &LockKeys, reply: &GrantReply) -> Result<(), Error> {
        if let Ok(id) = reply.marker.parse::<u64>() {
            self.markers.saw(keys.tag, id);
        }
        match reply.code {
            -4 => Err(Error::FailedPrecondition(
                Reason::EvictionPolicy,
                format!(
                    "Redis may evict keys (maxmemory-policy {}), and an evicted lease would be granted again while \
                     its holder still works, so lock grants and extensions are refused: set maxmemory-policy to \
                     noeviction (or start cachelock with --allow-evicting-redis, accepting that risk)",
                    reply.detail
                ),
            )),
            -5 => Err(Error::FailedPrecondition(
                Reason::PermitsMismatch,
                format!(
                    "the lock is held with permits {}: every caller of a name must ask for the same permits while \
                     anyone holds it",
                    reply.n
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Takes the lock if it is free (or already granted to this request).
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`]; FAILED_PRECONDITION when Redis
    /// may evict or the holders have other permits. Sent again after a lost
    /// connection: the token makes a repeated attempt find its own grant.
    pub async fn try_acquire(&self, request: Request<'_>, deadline: Instant) -> Result<Attempt, Error> {
        let invocation = self.invocation("acquire", &request)?;
        let (reply, acknowledged) = self
            .granting(Op::replayable(GRANT.name()), &invocation, deadline)
            .await?;
        self.read(request.keys, &reply)?;
        Ok(match reply.code {
            1 if acknowledged < self.rules.min_replicas => {
                let made_now = (reply.token == request.token).then_some(request.token);
                return Err(self
                    .unacknowledged(request.keys, made_now, acknowledged, deadline)
                    .await);
            }
            1 => Attempt::Granted(Grant {
                token: reply.token,
                fencing_token: reply.fencing_token,
                ttl: time::from_millis(reply.ms),
            }),
            -3 => Attempt::Paused {
                left: time::from_millis(reply.ms),
                cause: PauseCause::of(&reply.detail),
            },
            _ => Attempt::Held {
                ttl: time::from_millis(reply.ms),
            },
        })
    }

    /// Renews the lease if `token` holds the lock, and returns its fencing token;
    /// otherwise says why not.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`]; FAILED_PRECONDITION when Redis may evict.
    pub async fn extend(&self, keys: &LockKeys, token: &str, ttl: Ttl, deadline: Instant) -> Result<Renewal, Error> {
        let request = Request {
            keys,
            token,
            ttl,
            owner: "",
            request_key: "",
            permits: 0,
            ticket: "",
        };
        let invocation = self.invocation("extend", &request)?;
        let (reply, acknowledged) = self
            .granting(Op::idempotent(GRANT.name()), &invocation, deadline)
            .await?;
        self.read(keys, &reply)?;
        Ok(match reply.code {
            1 if acknowledged < self.rules.min_replicas => {
                return Err(self.unacknowledged(keys, None, acknowledged, deadline).await);
            }
            1 => Renewal::Extended(reply.fencing_token),
            -1 => Renewal::Lapsed(Lapse::Taken),
            -3 => Renewal::Paused {
                left: time::from_millis(reply.ms),
                cause: PauseCause::of(&reply.detail),
            },
            _ => Renewal::Lapsed(Lapse::Free),
        })
    }

    /// Releases the lock if `token` holds it (or already did, by this same
    /// token), and takes `ticket` (unless empty) out of the queue; says why
    /// the token did not hold it.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn release(
        &self,
        keys: &LockKeys,
        token: &str,
        ticket: &str,
        deadline: Instant,
    ) -> Result<Result<(), Lapse>, Error> {
        let mut invocation = RELEASE.prepare();
        invocation
            .key(&keys.holders)
            .key(&keys.state)
            .key(&keys.queue)
            .key(&keys.waiting)
            .arg(token)
            .arg(ticket)
            .arg(&keys.released)
            .arg(time::millis(self.rules.fence_retention));
        let released: i64 = self
            .redis
            .run(Op::idempotent(RELEASE.name()), deadline, &invocation)
            .await?;
        Ok(match released {
            1 => Ok(()),
            answer if answer < 0 => Err(Lapse::Taken),
            _ => Err(Lapse::Free),
        })
    }

    /// Shows the holder of a lock.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn describe(&self, keys: &LockKeys, deadline: Instant) -> Result<Holder, Error> {
        let mut invocation = DESCRIBE.prepare();
        invocation
            .key(&keys.holders)
            .key(&keys.state)
            .key(&keys.queue)
            .key(&keys.waiting);
        let (holders, owner, fencing_token, ttl, waiting, permits): (u32, String, u64, i64, u32, u32) =
            self.redis.run(Op::read(DESCRIBE.name()), deadline, &invocation).await?;
        Ok(Holder {
            holders,
            owner,
            fencing_token,
            ttl: (holders > 0).then(|| time::from_millis(ttl)),
            waiting,
            permits,
        })
    }

    /// Records that `term` of the election at `key` began now, won by `candidate`
    /// (for Leader and Observe: the lock holds the truth, this only its start).
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn record_term(&self, key: &str, term: u64, candidate: &str, deadline: Instant) -> Result<(), Error> {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis());
        let mut invocation = RECORD_TERM.prepare();
        invocation
            .key(key)
            .arg(term)
            .arg(candidate)
            .arg(since.to_string())
            .arg(TERM_RECORD_MILLIS);
        let _: i64 = self
            .redis
            .run(Op::idempotent(RECORD_TERM.name()), deadline, &invocation)
            .await?;
        Ok(())
    }

    /// When `term` of the election at `key` began (ms since the epoch), if recorded.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn term_since(&self, key: &str, term: u64, deadline: Instant) -> Result<Option<u64>, Error> {
        let mut read = redis::cmd("HMGET");
        read.arg(key).arg("term").arg("since");
        let (recorded, since): (Option<u64>, Option<u64>) =
            self.redis.run(Op::read("election_record"), deadline, &read).await?;
        Ok(since.filter(|_| recorded == Some(term)))
    }

    /// The fencing token of the grant `token` holds, while it holds one.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn fencing_token_of(
        &self,
        keys: &LockKeys,
        token: &str,
        deadline: Instant,
    ) -> Result<Option<u64>, Error> {
        let mut read = redis::cmd("HGET");
        read.arg(&keys.state).arg(format!("f:{token}"));
        self.redis.run(Op::read("lock_fencing_token"), deadline, &read).await
    }

    /// Ends `term` for fenced writes: the lock's last fencing token is raised
    /// above it (see `lock_fence_out.lua`), so that a write fenced by it is
    /// refused from now on.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn fence_out(&self, keys: &LockKeys, term: u64, deadline: Instant) -> Result<(), Error> {
        let mut invocation = FENCE_OUT.prepare();
        invocation
            .key(&keys.state)
            .arg(term.saturating_add(1))
            .arg(time::millis(self.rules.fence_retention));
        let _: String = self
            .redis
            .run(Op::idempotent(FENCE_OUT.name()), deadline, &invocation)
            .await?;
        Ok(())
    }

    /// Wakes everyone watching the lock (Observe, and waiters, which look
    /// again): a term began or ended. Best effort: watchers also look again on
    /// their own.
    pub async fn announce_change(&self, keys: &LockKeys, deadline: Instant) {
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(&keys.released).arg("");
        let sent: Result<u64, Error> = self
            .redis
            .run(Op::idempotent("election_notice"), deadline, &publish)
            .await;
        if let Err(error) = sent {
            tracing::debug!(%error, "could not announce an election's change; its observers look again soon");
        }
    }
}

/// What `lock_grant.lua` answers (see its header).
struct GrantReply {
    code: i64,
    token: String,
    fencing_token: u64,
    ms: i64,
    n: i64,
    marker: String,
    detail: String,
}

impl redis::FromRedisValue for GrantReply {
    fn from_redis_value(value: redis::Value) -> Result<GrantReply, redis::ParsingError> {
        let (code, token, fencing_token, ms, n, marker, detail) = redis::FromRedisValue::from_redis_value(value)?;
        Ok(GrantReply {
            code,
            token,
            fencing_token,
            ms,
            n,
            marker,
            detail,
        })
    }
}

/// A new marker id: random, never 0 (which stands for "none seen").
fn fresh_marker_id() -> Result<u64, Error> {
    let id = getrandom::u64().map_err(|error| Error::Internal(format!("no randomness from the OS: {error}")))?;
    Ok(id.max(1))
}
