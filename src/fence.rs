//! Fenced writes: a cache or session write made conditional on a lock, so that a
//! holder whose lease ran out and whose lock was granted again cannot overwrite
//! the new holder's work.
//!
//! The check is made by the write's own script, in the same atomic step as the
//! write (see `fenced_write.lua`): it reads the lock's state — the last fencing
//! token granted (`f`) and the permits (`p`), kept by `lock_grant.lua` — and
//! refuses when a newer grant exists. What this module does is the part that
//! needs no Redis: the fence's fields, and on a Redis Cluster that the lock and
//! the written keys share a slot, without which no script could see both.

use crate::{
    error::{Error, Reason},
    pb::lock::Fence,
    redis::{KeySpace, LuaScript, Redis},
    request::Limits,
    telemetry::{Meter, Metrics},
};

/// The fenced cache writes that may grow memory.
pub static FENCED_WRITE: LuaScript = LuaScript::new("fenced_write", include_str!("scripts/fenced_write.lua"));
/// The fenced deletes and takes, of cache entries and sessions.
pub static FENCED_REMOVE: LuaScript = LuaScript::new("fenced_remove", include_str!("scripts/fenced_remove.lua"));

/// The fenced writes' scripts, for loading into Redis ahead of the first request.
pub fn scripts() -> [&'static LuaScript; 2] {
    [&FENCED_WRITE, &FENCED_REMOVE]
}

/// A checked fence: the lock, its state key and the caller's fencing token.
#[derive(Clone, Debug)]
pub struct Fenced {
    /// The lock's name.
    pub lock: String,
    /// The lock's state, in the caller's key space (`KeySpace::lock`).
    pub state_key: String,
    /// The caller's fencing token.
    pub token: u64,
}

impl Fenced {
    /// The fence of a request, checked: `None` when it has none.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming `fence.lock` or `fence.fencing_token`.
    pub fn of(limits: &Limits, space: &KeySpace, fence: Option<&Fence>) -> Result<Option<Fenced>, Error> {
        let Some(fence) = fence else { return Ok(None) };
        let name = limits.key("fence.lock", &fence.lock)?;
        if fence.fencing_token == 0 {
            return Err(Error::invalid(
                "fence.fencing_token",
                "must be the fencing token of a grant of the lock (positive)",
            ));
        }
        Ok(Some(Fenced {
            lock: name.to_owned(),
            state_key: space.lock(name).state,
            token: fence.fencing_token,
        }))
    }

    /// On a Redis Cluster, refuses a fence whose lock lives in another slot than
    /// `redis_keys` (the Redis keys the write changes): the write's script could
    /// not read the lock there.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming `fence.lock`, with the fix.
    pub fn co_located(&self, redis: &Redis, redis_keys: &[String], user_keys: &[&str]) -> Result<(), Error> {
        let mut all = Vec::with_capacity(redis_keys.len() + 1);
        all.push(self.state_key.clone());
        all.extend_from_slice(redis_keys);
        match redis.first_cross_slot(&all) {
            None => Ok(()),
            Some((_, other)) => Err(Error::invalid(
                "fence.lock",
                format!(
                    "the lock {:?} and {:?} live in different Redis Cluster slots, so no one step can check the \
                     lock and write: give them one hash tag, such as the lock {{order:42}} and the keys \
                     {{order:42}}:total (for a session, the lock named by its user id, or with the user id as its \
                     {{…}} section, for a user id without braces)",
                    self.lock,
                    user_keys.get(other - 1).copied().unwrap_or_default(),
                ),
            )),
        }
    }
}

/// Counts a fenced write's result (applied, or refused as fenced out), and
/// passes it on.
pub fn counted<T>(meter: &Meter, result: Result<T, Error>) -> Result<T, Error> {
    let label = match &result {
        Ok(_) => "applied",
        Err(Error::FailedPrecondition(Reason::FencedOut, _)) => "fenced_out",
        Err(_) => return result,
    };
    meter.record(|metrics| Metrics::count(&metrics.fenced_writes, label));
    result
}

/// What a fenced write's script answers when it refused (`code` -1 or -2, see
/// `fenced_write.lua`), as the error the caller gets; `None` when it applied.
pub fn refusal(code: i64, detail: &str) -> Option<Error> {
    match code {
        -1 => Some(fenced_out(detail)),
        -2 => Some(semaphore(detail)),
        _ => None,
    }
}

/// The refusal of a write whose lock was granted again, now under fencing token `newer`.
pub fn fenced_out(newer: &str) -> Error {
    Error::FailedPrecondition(
        Reason::FencedOut,
        format!(
            "the fence's lock was granted again since (its fencing token is now {newer}): this holder's lease is \
             over, so its write was refused and nothing changed"
        ),
    )
}

/// The refusal of a fence on a semaphore of `permits`.
pub fn semaphore(permits: &str) -> Error {
    Error::FailedPrecondition(
        Reason::PermitsMismatch,
        format!(
            "the fence's lock is held as a semaphore of {permits} permits, whose holders would fence each other \
             out: fence writes with a lock of one permit"
        ),
    )
}
