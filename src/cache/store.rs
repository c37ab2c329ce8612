//! The cache's Redis commands: each operation is one command, so one round trip.

use std::{sync::LazyLock, time::Duration};

use redis::{Script, Value};

use crate::{
    error::{Effect, Error},
    redis::{Keys, Redis, bounded},
    request::Ttl,
};

static GET: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../scripts/cache_get.lua")));
static GET_MANY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../scripts/cache_get_many.lua")));
static SET_MANY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../scripts/cache_set_many.lua")));
static INCREMENT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../scripts/cache_increment.lua")));

/// The cache's scripts, for loading into Redis ahead of the first request.
pub fn scripts() -> [&'static Script; 4] {
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

/// Cache entries in Redis, under keys from [`Keys::cache`].
#[derive(Clone)]
pub struct CacheStore {
    redis: Redis,
    keys: Keys,
}

impl CacheStore {
    /// A store on the shared connection.
    pub fn new(redis: Redis, keys: Keys) -> CacheStore {
        CacheStore { redis, keys }
    }

    /// Reads one entry.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn get(&self, key: &str, budget: Duration) -> Result<Option<Stored>, Error> {
        let mut conn = self.redis.connection();
        let reply: (Option<Vec<u8>>, i64) = bounded(
            budget,
            Effect::Idempotent,
            GET.key(self.keys.cache(key)).invoke_async(&mut conn),
        )
        .await?;
        Ok(stored(reply))
    }

    /// Reads several entries, answering in the order of `keys`.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn get_many(&self, keys: &[String], budget: Duration) -> Result<Vec<Option<Stored>>, Error> {
        let mut invocation = GET_MANY.prepare_invoke();
        for key in keys {
            invocation.key(self.keys.cache(key));
        }
        let mut conn = self.redis.connection();
        let replies: Vec<(Option<Vec<u8>>, i64)> =
            bounded(budget, Effect::Idempotent, invocation.invoke_async(&mut conn)).await?;
        Ok(replies.into_iter().map(stored).collect())
    }

    /// Writes one entry if `condition` holds; returns whether it wrote.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`]; a full Redis as [`Error::OutOfMemory`].
    pub async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Ttl,
        condition: Condition,
        budget: Duration,
    ) -> Result<bool, Error> {
        let mut command = redis::cmd("SET");
        command.arg(self.keys.cache(key)).arg(value).arg("PX").arg(ttl.millis());
        match condition {
            Condition::Always => {}
            Condition::IfAbsent => {
                command.arg("NX");
            }
            Condition::IfPresent => {
                command.arg("XX");
            }
        }
        let mut conn = self.redis.connection();
        let reply: Value = bounded(budget, Effect::Idempotent, command.query_async(&mut conn)).await?;
        Ok(!matches!(reply, Value::Nil))
    }

    /// Writes every entry, atomically.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`]; a full Redis as [`Error::OutOfMemory`],
    /// in which case nothing was written.
    pub async fn set_many(&self, entries: &[NewEntry<'_>], budget: Duration) -> Result<(), Error> {
        let mut invocation = SET_MANY.prepare_invoke();
        for entry in entries {
            invocation
                .key(self.keys.cache(entry.key))
                .arg(entry.value)
                .arg(entry.ttl.millis());
        }
        let mut conn = self.redis.connection();
        let _written: u64 = bounded(budget, Effect::Idempotent, invocation.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Deletes keys; returns how many existed.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn delete(&self, keys: &[String], budget: Duration) -> Result<u64, Error> {
        // UNLINK frees large values off Redis's main thread; it counts like DEL.
        let mut command = redis::cmd("UNLINK");
        for key in keys {
            command.arg(self.keys.cache(key));
        }
        let mut conn = self.redis.connection();
        bounded(budget, Effect::Idempotent, command.query_async(&mut conn)).await
    }

    /// Reads and deletes one entry atomically (GETDEL).
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`]. After a timeout the value may be gone.
    pub async fn take(&self, key: &str, budget: Duration) -> Result<Option<Vec<u8>>, Error> {
        let mut conn = self.redis.connection();
        let mut command = redis::cmd("GETDEL");
        command.arg(self.keys.cache(key));
        bounded(budget, Effect::NotIdempotent, command.query_async(&mut conn)).await
    }

    /// Adds `delta` to a counter, creating it with `ttl`; returns the new value.
    ///
    /// # Errors
    /// [`Error::FailedPrecondition`] when the stored value is not an integer or the
    /// sum overflows; Redis failures and timeouts, as [`Error`].
    pub async fn increment(&self, key: &str, delta: i64, ttl: Ttl, budget: Duration) -> Result<i64, Error> {
        let mut conn = self.redis.connection();
        let result = bounded(
            budget,
            Effect::NotIdempotent,
            INCREMENT
                .key(self.keys.cache(key))
                .arg(delta)
                .arg(ttl.millis())
                .invoke_async(&mut conn),
        )
        .await;
        match result {
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
            other => other,
        }
    }

    /// Sets a new time to live on an existing key; returns whether it existed.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn expire(&self, key: &str, ttl: Ttl, budget: Duration) -> Result<bool, Error> {
        let mut conn = self.redis.connection();
        let mut command = redis::cmd("PEXPIRE");
        command.arg(self.keys.cache(key)).arg(ttl.millis());
        bounded(budget, Effect::Idempotent, command.query_async(&mut conn)).await
    }
}

fn stored((value, ttl_millis): (Option<Vec<u8>>, i64)) -> Option<Stored> {
    value.map(|value| Stored { value, ttl_millis })
}
