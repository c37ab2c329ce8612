//! The cache's Redis commands: each operation is one command, so one round trip.

use redis::Value;
use tokio::time::Instant;

use crate::{
    error::Error,
    redis::{KeySpace, LuaScript, Op, Redis},
    request::Ttl,
};

static GET: LuaScript = LuaScript::new("cache_get", include_str!("../scripts/cache_get.lua"));
static GET_MANY: LuaScript = LuaScript::new("cache_get_many", include_str!("../scripts/cache_get_many.lua"));
static SET_MANY: LuaScript = LuaScript::new("cache_set_many", include_str!("../scripts/cache_set_many.lua"));
static INCREMENT: LuaScript = LuaScript::new("cache_increment", include_str!("../scripts/cache_increment.lua"));

/// The cache's scripts, for loading into Redis ahead of the first request.
pub fn scripts() -> [&'static LuaScript; 4] {
    [&GET, &GET_MANY, &SET_MANY, &INCREMENT]
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

/// Cache entries in Redis, under keys from [`KeySpace::cache`].
#[derive(Clone)]
pub struct CacheStore {
    redis: Redis,
}

impl CacheStore {
    /// A store on the shared connections.
    pub fn new(redis: Redis) -> CacheStore {
        CacheStore { redis }
    }

    /// Reads one entry.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn get(&self, space: &KeySpace, key: &str, deadline: Instant) -> Result<Option<Stored>, Error> {
        let mut invocation = GET.prepare();
        invocation.key(space.cache(key));
        let reply: (Option<Vec<u8>>, i64) = self.redis.run(Op::read(GET.name()), deadline, &invocation).await?;
        Ok(stored(reply))
    }

    /// Reads several entries, answering in the order of `keys`.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn get_many(
        &self,
        space: &KeySpace,
        keys: &[String],
        deadline: Instant,
    ) -> Result<Vec<Option<Stored>>, Error> {
        let mut invocation = GET_MANY.prepare();
        for key in keys {
            invocation.key(space.cache(key));
        }
        let replies: Vec<(Option<Vec<u8>>, i64)> =
            self.redis.run(Op::read(GET_MANY.name()), deadline, &invocation).await?;
        Ok(replies.into_iter().map(stored).collect())
    }

    /// Writes one entry if `condition` holds; returns whether it wrote.
    ///
    /// A conditional write is not repeated after a lost connection: its repetition
    /// would answer "not stored" for a write that happened.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`]; a full Redis as [`Error::OutOfMemory`].
    pub async fn set(
        &self,
        space: &KeySpace,
        key: &str,
        value: &[u8],
        ttl: Ttl,
        condition: Condition,
        deadline: Instant,
    ) -> Result<bool, Error> {
        let mut command = redis::cmd("SET");
        command.arg(space.cache(key)).arg(value).arg("PX").arg(ttl.millis());
        let op = match condition {
            Condition::Always => Op::idempotent("cache_set"),
            Condition::IfAbsent => {
                command.arg("NX");
                Op::write("cache_set_if_absent")
            }
            Condition::IfPresent => {
                command.arg("XX");
                Op::write("cache_set_if_present")
            }
        };
        let reply: Value = self.redis.run(op, deadline, &command).await?;
        Ok(!matches!(reply, Value::Nil))
    }

    /// Writes every entry, atomically.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`]; a full Redis as [`Error::OutOfMemory`],
    /// in which case nothing was written.
    pub async fn set_many(&self, space: &KeySpace, entries: &[NewEntry<'_>], deadline: Instant) -> Result<(), Error> {
        let mut invocation = SET_MANY.prepare();
        for entry in entries {
            invocation
                .key(space.cache(entry.key))
                .arg(entry.value)
                .arg(entry.ttl.millis());
        }
        let _written: u64 = self
            .redis
            .run(Op::idempotent(SET_MANY.name()), deadline, &invocation)
            .await?;
        Ok(())
    }

    /// Deletes keys; returns how many existed.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`]. Not repeated after a lost
    /// connection, since a repetition would count zero.
    pub async fn delete(&self, space: &KeySpace, keys: &[String], deadline: Instant) -> Result<u64, Error> {
        // UNLINK frees large values off Redis's main thread; it counts like DEL.
        let mut command = redis::cmd("UNLINK");
        for key in keys {
            command.arg(space.cache(key));
        }
        self.redis.run(Op::write("cache_delete"), deadline, &command).await
    }

    /// Reads and deletes one entry atomically (GETDEL).
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`]. After a timeout the value may be gone.
    pub async fn take(&self, space: &KeySpace, key: &str, deadline: Instant) -> Result<Option<Vec<u8>>, Error> {
        let mut command = redis::cmd("GETDEL");
        command.arg(space.cache(key));
        self.redis.run(Op::write("cache_take"), deadline, &command).await
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
        invocation.key(space.cache(key)).arg(delta).arg(ttl.millis());
        let result: Result<String, Error> = self.redis.run(Op::write(INCREMENT.name()), deadline, &invocation).await;
        match result {
            // The script returns the stored text: a Lua number would lose precision above 2^53.
            Ok(text) => text
                .parse()
                .map_err(|_| Error::Internal("the counter's new value is not an integer".to_owned())),
            Err(Error::Redis(error)) => {
                let detail = error.detail().unwrap_or_default();
                if detail.contains("not an integer") {
                    Err(Error::FailedPrecondition(
                        "key holds a value that is not a 64-bit integer counter".to_owned(),
                    ))
                } else if detail.contains("overflow") {
                    Err(Error::FailedPrecondition(
                        "the increment would overflow a 64-bit integer".to_owned(),
                    ))
                } else {
                    Err(Error::Redis(error))
                }
            }
            Err(other) => Err(other),
        }
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

fn stored((value, ttl_millis): (Option<Vec<u8>>, i64)) -> Option<Stored> {
    value.map(|value| Stored { value, ttl_millis })
}
