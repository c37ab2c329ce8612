//! The cache's Redis commands. Each operation is one round trip: one command, a
//! pipeline, or a MULTI/EXEC transaction — native commands where they can do the
//! job, because a Lua script copies every value it touches twice (into Lua and
//! back out), which makes bulk reads and writes several times slower for Redis.

use futures_util::future::try_join_all;
use tokio::time::Instant;

use super::entry::{Condition, Lease, LeaseAsk, Leased, NewEntry, SetOptions, Stored, Written};
use crate::{
    error::{Effect, Error, Reason},
    fence::{self, FENCED_REMOVE, FENCED_WRITE, Fenced},
    redis::{Batcher, Calls, KeySpace, LuaScript, Op, Redis},
    request::Ttl,
    time,
};

/// A cache write made under a fence (see `fenced_write.lua`).
pub enum FencedWrite<'a> {
    /// A Set: `condition` and `stale_ttl` as an unfenced one's.
    Set {
        /// The entry.
        entry: NewEntry<'a>,
        /// When to store.
        condition: Condition,
        /// How long a stale copy is kept after the ttl.
        stale_ttl: std::time::Duration,
    },
    /// A SetMany, every entry or none.
    SetMany(&'a [NewEntry<'a>]),
    /// An Increment.
    Increment {
        /// The counter.
        key: &'a str,
        /// What to add.
        delta: i64,
        /// Its ttl when created.
        ttl: Ttl,
    },
    /// An Expire.
    Expire {
        /// The entry.
        key: &'a str,
        /// The new ttl.
        ttl: Ttl,
    },
}

/// What a fenced write answered, when applied.
pub enum FencedAnswer {
    /// Set: whether it stored (its condition held).
    Stored(bool),
    /// SetMany: every entry stored.
    StoredMany,
    /// Increment: the new value.
    Counted(i64),
    /// Expire: whether the entry existed.
    Found(bool),
}

static GET: LuaScript = LuaScript::new("cache_get", include_str!("../scripts/cache_get.lua"));
static INCREMENT: LuaScript = LuaScript::new("cache_increment", include_str!("../scripts/cache_increment.lua"));
static GET_OR_LEASE: LuaScript =
    LuaScript::new("cache_get_or_lease", include_str!("../scripts/cache_get_or_lease.lua"));
static FILL: LuaScript = LuaScript::new("cache_fill", include_str!("../scripts/cache_fill.lua"));
static TAKE: LuaScript = LuaScript::new("cache_take", include_str!("../scripts/cache_take.lua"));

/// The cache's scripts, for loading into Redis ahead of the first request.
pub fn scripts() -> [&'static LuaScript; 5] {
    [&GET, &INCREMENT, &GET_OR_LEASE, &FILL, &TAKE]
}

/// Cache entries in Redis, under keys from [`KeySpace::cache`].
#[derive(Clone)]
pub struct CacheStore {
    redis: Redis,
    reads: Batcher<Reads>,
}

/// The script calls that read batches of entries (group commit: Gets that
/// arrive while a read is in flight go together in the next one).
#[derive(Clone)]
struct Reads {
    redis: Redis,
}

impl Calls for Reads {
    type Request = String;
    type Answer = Result<Option<Stored>, Error>;

    async fn call(&self, keys: &[&String], deadline: Instant) -> Result<Vec<Self::Answer>, Error> {
        let mut invocation = GET.prepare();
        for key in keys {
            invocation.key(key.as_str());
        }
        let replies: Vec<(Option<Vec<u8>>, i64)> = self.redis.run(Op::read(GET.name()), deadline, &invocation).await?;
        Ok(replies
            .into_iter()
            .map(|(value, ttl_millis)| {
                if ttl_millis == -3 {
                    Err(Error::Internal(
                        "a cache key holds a value that is not a string (written by something other than cachelock)"
                            .to_owned(),
                    ))
                } else {
                    Ok(stored((value, ttl_millis)))
                }
            })
            .collect())
    }

    fn effect(&self) -> Effect {
        Effect::Read
    }
}

impl CacheStore {
    /// A store on the shared connections.
    pub fn new(redis: Redis) -> CacheStore {
        CacheStore {
            reads: Batcher::new(Reads { redis: redis.clone() }),
            redis,
        }
    }

    /// Reads one entry, in the next read call of its lane.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn get(&self, redis_key: &str, deadline: Instant) -> Result<Option<Stored>, Error> {
        self.reads
            .run(self.redis.lane(redis_key), redis_key.to_owned(), deadline)
            .await?
    }

    /// Reads several entries, answering in the order of `keys`, if their values
    /// total at most `value_budget` bytes; `Err(total)` inside `Ok` when they do
    /// not. `max_value_bytes` is the largest a value can be: when the keys cannot
    /// hold more than the budget, they are read at once; otherwise their sizes are
    /// read first (STRLEN is O(1)), so that Redis never builds a reply nobody may
    /// receive.
    ///
    /// The values come from one MGET, a consistent snapshot; each ttl is read a
    /// moment later in the same round trip. On a Cluster there is one such
    /// round trip per slot, all at once, and the snapshot is per slot.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn get_many(
        &self,
        space: &KeySpace,
        keys: &[String],
        value_budget: usize,
        max_value_bytes: usize,
        deadline: Instant,
    ) -> Result<Result<Vec<Option<Stored>>, u64>, Error> {
        let redis_keys: Vec<String> = keys.iter().map(|key| space.cache(key)).collect();
        let groups = self.redis.group_by_slot(&redis_keys);
        if keys.len().saturating_mul(max_value_bytes) > value_budget {
            let sizes = try_join_all(groups.iter().map(|group| {
                let mut sizes = redis::pipe();
                for &index in group {
                    sizes.cmd("STRLEN").arg(&redis_keys[index]);
                }
                async move {
                    let sizes: Vec<u64> = self.redis.run(Op::read("cache_sizes"), deadline, &sizes).await?;
                    Ok::<u64, Error>(sizes.iter().sum())
                }
            }))
            .await?;
            let total: u64 = sizes.iter().sum();
            if total > value_budget as u64 {
                return Ok(Err(total));
            }
        }
        let replies = try_join_all(groups.iter().map(|group| self.read_group(&redis_keys, group, deadline))).await?;
        let mut answers: Vec<Option<Stored>> = vec![None; keys.len()];
        for (group, reply) in groups.iter().zip(replies) {
            for (&index, answer) in group.iter().zip(reply) {
                answers[index] = answer;
            }
        }
        // A value that grew between the sizes and the read (a concurrent write) can
        // still push the reply past the budget: it is refused rather than sent.
        let total: u64 = answers.iter().flatten().map(|stored| stored.value.len() as u64).sum();
        if total > value_budget as u64 {
            return Ok(Err(total));
        }
        Ok(Ok(answers))
    }

    /// Reads the keys at `indices` of `redis_keys` (all in one slot) in one round trip.
    async fn read_group(
        &self,
        redis_keys: &[String],
        indices: &[usize],
        deadline: Instant,
    ) -> Result<Vec<Option<Stored>>, Error> {
        let mut read = redis::pipe();
        let mget = read.cmd("MGET");
        for &index in indices {
            mget.arg(&redis_keys[index]);
        }
        for &index in indices {
            read.cmd("PTTL").arg(&redis_keys[index]);
        }
        let mut replies: Vec<redis::Value> = self.redis.run(Op::read("cache_get_many"), deadline, &read).await?;
        let ttls: Vec<i64> = redis::from_redis_value(redis::Value::Array(replies.split_off(1)))
            .map_err(|e| Error::Internal(format!("unexpected PTTL replies: {e}")))?;
        let values: Vec<Option<Vec<u8>>> = match replies.pop() {
            Some(values) => {
                redis::from_redis_value(values).map_err(|e| Error::Internal(format!("unexpected MGET reply: {e}")))?
            }
            None => return Err(Error::Internal("no MGET reply".to_owned())),
        };
        Ok(values
            .into_iter()
            .zip(ttls)
            .map(|(value, ttl_millis)| stored((value, ttl_millis)))
            .collect())
    }

    /// Writes one entry if the condition holds and, with a lease token, the
    /// lease is still the caller's. Any write ends the key's lease and stale
    /// copy (a newer value makes both obsolete) and wakes the lease's waiters.
    ///
    /// A plain write is a SET with the fill record's UNLINK in one round trip;
    /// the rest is one script. Neither is repeated after a lost connection when
    /// its repetition could answer differently (a condition, a lease).
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`]; a full Redis as [`Error::OutOfMemory`].
    pub async fn set(
        &self,
        space: &KeySpace,
        key: &str,
        value: &[u8],
        ttl: Ttl,
        options: SetOptions<'_>,
        deadline: Instant,
    ) -> Result<Written, Error> {
        let plain =
            options.condition == Condition::Always && options.stale_ttl.is_zero() && options.lease_token.is_empty();
        if plain {
            let mut write = redis::pipe();
            write
                .cmd("SET")
                .arg(space.cache(key))
                .arg(value)
                .arg("PX")
                .arg(ttl.millis())
                .ignore()
                .cmd("UNLINK")
                .arg(space.cache_fill(key));
            let (ended,): (u64,) = self.redis.run(Op::idempotent("cache_set"), deadline, &write).await?;
            if ended > 0 {
                self.announce_fills(space, [key], deadline).await;
            }
            return Ok(Written::Stored);
        }
        let mut invocation = FILL.prepare();
        invocation
            .key(space.cache(key))
            .key(space.cache_fill(key))
            .arg(value)
            .arg(ttl.millis())
            .arg(time::millis(options.stale_ttl))
            .arg(options.lease_token)
            .arg(match options.condition {
                Condition::Always => "",
                Condition::IfAbsent => "NX",
                Condition::IfPresent => "XX",
            })
            .arg(space.cache_filled(key));
        let written: i64 = self.redis.run(Op::write(FILL.name()), deadline, &invocation).await?;
        Ok(match written {
            1 => Written::Stored,
            0 => Written::NotStored,
            _ => Written::LeaseLost,
        })
    }

    /// Wakes the waiters for the fill of `keys`, whose leases a write or a
    /// Delete just ended. Best effort: a waiter that misses it looks again when
    /// the lease would have ended.
    async fn announce_fills<'k>(&self, space: &KeySpace, keys: impl IntoIterator<Item = &'k str>, deadline: Instant) {
        let mut announce = redis::pipe();
        for key in keys {
            announce.cmd("PUBLISH").arg(space.cache_filled(key)).arg("").ignore();
        }
        let sent: Result<(), Error> = self
            .redis
            .run(Op::idempotent("cache_fill_notice"), deadline, &announce)
            .await;
        if let Err(error) = sent {
            tracing::debug!(%error, "could not announce the end of fill leases; their waiters look again later");
        }
    }

    /// Reads an entry, or takes the lease to fill it (see `cache_get_or_lease.lua`).
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`]. Sent again after a lost
    /// connection: the token makes a repeated call find its own lease.
    pub async fn get_or_lease(&self, space: &KeySpace, ask: LeaseAsk<'_>, deadline: Instant) -> Result<Leased, Error> {
        let mut invocation = GET_OR_LEASE.prepare();
        invocation
            .key(space.cache(ask.key))
            .key(space.cache_fill(ask.key))
            .arg(ask.token)
            .arg(ask.lease_ttl.millis())
            .arg(ask.refresh_millionths);
        let (outcome, value, ttl_millis, token, lease_millis): (i64, Option<Vec<u8>>, i64, String, i64) = self
            .redis
            .run(Op::replayable(GET_OR_LEASE.name()), deadline, &invocation)
            .await?;
        let stored = value.map(|value| Stored { value, ttl_millis });
        let lease_left = time::from_millis(lease_millis);
        let lease = (!token.is_empty()).then_some(Lease { token, ttl: lease_left });
        match (outcome, stored, lease) {
            (1, Some(stored), lease) => Ok(Leased::Fresh { stored, lease }),
            (2, Some(stored), None) => Ok(Leased::Stale { stored, lease_left }),
            (3, stale, Some(lease)) => Ok(Leased::Lease { lease, stale }),
            (4, None, None) => Ok(Leased::Filling { lease_left }),
            _ => Err(Error::Internal(format!(
                "unexpected cache_get_or_lease outcome {outcome}"
            ))),
        }
    }

    /// Writes every entry, atomically: one MULTI/EXEC transaction. A full Redis
    /// refuses each SET as it is queued and then the whole EXEC, so either every
    /// entry is written or none is. On a Cluster every key must be in one slot
    /// (see [`CacheStore::cross_slot`]).
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`]; a full Redis as [`Error::OutOfMemory`],
    /// in which case nothing was written.
    pub async fn set_many(&self, space: &KeySpace, entries: &[NewEntry<'_>], deadline: Instant) -> Result<(), Error> {
        let mut transaction = redis::pipe();
        transaction.atomic();
        for entry in entries {
            transaction
                .cmd("SET")
                .arg(space.cache(entry.key))
                .arg(entry.value)
                .arg("PX")
                .arg(entry.ttl.millis())
                .ignore();
        }
        let unlink = transaction.cmd("UNLINK");
        for entry in entries {
            unlink.arg(space.cache_fill(entry.key));
        }
        let (ended,): (u64,) = self
            .redis
            .run(Op::idempotent("cache_set_many"), deadline, &transaction)
            .await?;
        if ended > 0 {
            self.announce_fills(space, entries.iter().map(|entry| entry.key), deadline)
                .await;
        }
        Ok(())
    }

    /// Deletes keys; returns how many existed. On a Cluster, one UNLINK per slot,
    /// all at once: when one fails, the others may still have deleted theirs.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`]. Not repeated after a lost
    /// connection, since a repetition would count zero.
    pub async fn delete(&self, space: &KeySpace, keys: &[String], deadline: Instant) -> Result<u64, Error> {
        let redis_keys: Vec<String> = keys.iter().map(|key| space.cache(key)).collect();
        let groups = self.redis.group_by_slot(&redis_keys);
        let counts = try_join_all(groups.iter().map(|group| {
            // UNLINK frees large values off Redis's main thread; it counts like DEL.
            // The entries' fill records go too: a Delete ends their leases.
            let mut unlink = redis::pipe();
            let entries = unlink.cmd("UNLINK");
            for &index in group {
                entries.arg(&redis_keys[index]);
            }
            let records = unlink.cmd("UNLINK");
            for &index in group {
                records.arg(space.cache_fill(&keys[index]));
            }
            async move {
                let (deleted, ended): (u64, u64) = self.redis.run(Op::write("cache_delete"), deadline, &unlink).await?;
                if ended > 0 {
                    self.announce_fills(space, group.iter().map(|&index| keys[index].as_str()), deadline)
                        .await;
                }
                Ok::<u64, Error>(deleted)
            }
        }))
        .await?;
        Ok(counts.iter().sum())
    }

    /// On a Cluster, the positions of two of `keys` whose entries live in
    /// different slots, so that they cannot be written together atomically.
    pub fn cross_slot(&self, space: &KeySpace, keys: &[&str]) -> Option<(usize, usize)> {
        let redis_keys: Vec<String> = keys.iter().map(|key| space.cache(key)).collect();
        self.redis.first_cross_slot(&redis_keys)
    }

    /// Reads and deletes one entry atomically (see `cache_take.lua`), with its fill record.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`]. After a timeout the value may be gone.
    pub async fn take(&self, space: &KeySpace, key: &str, deadline: Instant) -> Result<Option<Vec<u8>>, Error> {
        let mut invocation = TAKE.prepare();
        invocation.key(space.cache(key)).key(space.cache_fill(key));
        let (value, ended): (Option<Vec<u8>>, u64) =
            self.redis.run(Op::write(TAKE.name()), deadline, &invocation).await?;
        if ended > 0 {
            self.announce_fills(space, [key], deadline).await;
        }
        Ok(value)
    }

    /// Adds `delta` to a counter, creating it with `ttl`; returns the new value.
    ///
    /// # Errors
    /// [`Error::FailedPrecondition`] when the stored value is not an integer or the
    /// sum overflows; Redis failures and timeouts, as [`Error`].
    pub async fn increment(
        &self,
        space: &KeySpace,
        key: &str,
        delta: i64,
        ttl: Ttl,
        deadline: Instant,
    ) -> Result<i64, Error> {
        let mut invocation = INCREMENT.prepare();
        invocation
            .key(space.cache(key))
            .key(space.cache_fill(key))
            .arg(delta)
            .arg(ttl.millis());
        let (text, ended): (String, u64) = self
            .redis
            .run(Op::write(INCREMENT.name()), deadline, &invocation)
            .await
            .map_err(counter_error)?;
        if ended > 0 {
            self.announce_fills(space, [key], deadline).await;
        }
        // The script returns the stored text: a Lua number would lose precision above 2^53.
        text.parse()
            .map_err(|_| Error::Internal("the counter's new value is not an integer".to_owned()))
    }

    /// Sets a new time to live on an existing key; returns whether it existed.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn expire(&self, space: &KeySpace, key: &str, ttl: Ttl, deadline: Instant) -> Result<bool, Error> {
        let mut command = redis::cmd("PEXPIRE");
        command.arg(space.cache(key)).arg(ttl.millis());
        self.redis.run(Op::idempotent("cache_expire"), deadline, &command).await
    }
}

impl CacheStore {
    /// Refuses, on a Cluster, a fence whose lock is not in the slot of `keys`.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming `fence.lock`.
    pub fn fence_reaches(&self, space: &KeySpace, fenced: &Fenced, keys: &[&str]) -> Result<(), Error> {
        let redis_keys: Vec<String> = keys.iter().map(|key| space.cache(key)).collect();
        fenced.co_located(&self.redis, &redis_keys, keys)
    }

    /// Makes `write` under `fence`, the check and the write in one script.
    ///
    /// # Errors
    /// [`Error::FailedPrecondition`] with [`Reason::FencedOut`] (a newer grant of
    /// the lock) or [`Reason::PermitsMismatch`] (a semaphore), nothing changed;
    /// the errors of the unfenced write.
    pub async fn fenced_write(
        &self,
        space: &KeySpace,
        fenced: &Fenced,
        write: FencedWrite<'_>,
        deadline: Instant,
    ) -> Result<FencedAnswer, Error> {
        let keys: Vec<&str> = match &write {
            FencedWrite::Set { entry, .. } => vec![entry.key],
            FencedWrite::SetMany(entries) => entries.iter().map(|entry| entry.key).collect(),
            FencedWrite::Increment { key, .. } | FencedWrite::Expire { key, .. } => vec![*key],
        };
        // Every fenced write is one that must not be sent again blindly: a resend
        // after a newer grant would be refused although the first send applied,
        // and the caller told "nothing changed". A lost answer is MAY_HAVE_APPLIED.
        let mut invocation = FENCED_WRITE.prepare();
        invocation.key(&fenced.state_key);
        for key in &keys {
            invocation.key(space.cache(key));
        }
        for key in &keys {
            invocation.key(space.cache_fill(key));
        }
        invocation.arg(fenced.token);
        let op = match &write {
            FencedWrite::Set {
                entry,
                condition,
                stale_ttl,
            } => {
                invocation
                    .arg("set")
                    .arg(entry.value)
                    .arg(entry.ttl.millis())
                    .arg(time::millis(*stale_ttl))
                    .arg(match condition {
                        Condition::Always => "",
                        Condition::IfAbsent => "NX",
                        Condition::IfPresent => "XX",
                    });
                Op::write("fenced_set")
            }
            FencedWrite::SetMany(entries) => {
                invocation.arg("set_many");
                for entry in *entries {
                    invocation.arg(entry.value).arg(entry.ttl.millis());
                }
                Op::write("fenced_set_many")
            }
            FencedWrite::Increment { delta, ttl, .. } => {
                invocation.arg("increment").arg(*delta).arg(ttl.millis());
                Op::write("fenced_increment")
            }
            FencedWrite::Expire { ttl, .. } => {
                invocation.arg("expire").arg(ttl.millis());
                Op::write("fenced_expire")
            }
        };
        let reply: Result<(i64, redis::Value, u64), Error> = self.redis.run(op, deadline, &invocation).await;
        let (code, result, ended) = match reply {
            Ok(reply) => reply,
            Err(error) => return Err(counter_error(error)),
        };
        if let Some(refused) = fence::refusal(code, &text(&result)) {
            return Err(refused);
        }
        if ended > 0 {
            self.announce_fills(space, keys.iter().copied(), deadline).await;
        }
        let number = || redis::from_redis_value::<i64>(result.clone()).unwrap_or_default();
        Ok(match write {
            FencedWrite::Set { .. } => FencedAnswer::Stored(number() == 1),
            FencedWrite::SetMany(_) => FencedAnswer::StoredMany,
            FencedWrite::Increment { .. } => FencedAnswer::Counted(
                text(&result)
                    .parse()
                    .map_err(|_| Error::Internal("the counter's new value is not an integer".to_owned()))?,
            ),
            FencedWrite::Expire { .. } => FencedAnswer::Found(number() == 1),
        })
    }

    /// Deletes `keys`, or takes the one of `take`, under `fence` (see
    /// `fenced_remove.lua`). Every key must be in the lock's slot on a Cluster.
    ///
    /// # Errors
    /// As [`CacheStore::fenced_write`].
    pub async fn fenced_remove(
        &self,
        space: &KeySpace,
        fenced: &Fenced,
        keys: &[&str],
        take: bool,
        deadline: Instant,
    ) -> Result<(u64, Option<Vec<u8>>), Error> {
        let mut invocation = FENCED_REMOVE.prepare();
        invocation.key(&fenced.state_key);
        for key in keys {
            invocation.key(space.cache(key));
        }
        for key in keys {
            invocation.key(space.cache_fill(key));
        }
        invocation
            .arg(fenced.token)
            .arg(if take { "take" } else { "delete" })
            .arg(keys.len());
        let (code, result, ended): (i64, redis::Value, u64) = self
            .redis
            .run(Op::write(FENCED_REMOVE.name()), deadline, &invocation)
            .await?;
        if let Some(refused) = fence::refusal(code, &text(&result)) {
            return Err(refused);
        }
        if ended > 0 {
            self.announce_fills(space, keys.iter().copied(), deadline).await;
        }
        if take {
            let value: Option<Vec<u8>> = redis::from_redis_value(result).unwrap_or_default();
            Ok((u64::from(value.is_some()), value))
        } else {
            Ok((redis::from_redis_value(result).unwrap_or_default(), None))
        }
    }
}

/// A script's reply element as text: a refusal's detail, a counter's value.
fn text(value: &redis::Value) -> String {
    redis::from_redis_value::<String>(value.clone()).unwrap_or_default()
}

/// An increment's failure: Redis's refusal of a value that is not a counter, or
/// of an overflow, as the caller's error.
fn counter_error(error: Error) -> Error {
    let Error::Redis(redis_error) = error else { return error };
    let detail = redis_error.detail().unwrap_or_default();
    if detail.contains("not an integer") {
        Error::FailedPrecondition(
            Reason::NotAnInteger,
            "key holds a value that is not a 64-bit integer counter".to_owned(),
        )
    } else if detail.contains("overflow") {
        Error::FailedPrecondition(
            Reason::IntegerOverflow,
            "the increment would overflow a 64-bit integer".to_owned(),
        )
    } else {
        Error::Redis(redis_error)
    }
}

fn stored((value, ttl_millis): (Option<Vec<u8>>, i64)) -> Option<Stored> {
    value.map(|value| Stored { value, ttl_millis })
}
