//! The Redis connections the whole process shares, the development
//! redis-server, the key builder and the script registry.
//!
//! [`Redis`] holds two supervised, multiplexed connections (see [`link`]): one
//! for commands that only read, one for commands that write. Every RPC pipelines
//! onto one of them. They are separate because Redis processes one client's
//! commands in order: during `CLIENT PAUSE WRITE` (what a managed Redis does
//! during a failover) a paused write would otherwise hold up every read queued
//! behind it on the same socket.
//!
//! Every command goes through [`Redis::run`], which decides — from what the
//! command is ([`Effect`]) — whether it may be sent again after the connection
//! dropped, and what the caller is told when it cannot be.

pub mod connect;
pub mod embedded;
pub mod epoch;
pub mod keys;
pub mod link;
pub mod scripts;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use redis::{Cmd, FromRedisValue, Pipeline, ScriptInvocation, aio::MultiplexedConnection};
use tokio::{sync::watch, time::timeout_at};

pub use connect::{Cause, ConnectSettings, Endpoint};
pub use keys::{KeySpace, Keys};
pub use link::{Backoff, State};
pub use scripts::LuaScript;

use crate::{
    error::Error,
    telemetry::{Meter, rpc::add_redis_time},
};
use epoch::DataEpoch;
use link::Link;

/// What a command does, which decides the connection it uses, whether it may
/// be sent again after the connection dropped while it was in flight, and what
/// the caller is told when no answer came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Only reads. Sent on the read connection; repeated once after a drop.
    Read,
    /// Writes, and repeating it — by anyone — leaves the same state and gives
    /// the same answer (a plain SET, a PEXPIRE, a Release by its own token).
    /// Repeated once after a drop; the caller may retry after a timeout.
    IdempotentWrite,
    /// Writes, and carries an id fresh to this call (a lock token, a new session
    /// id): the identical request sent again finds its own result, so it is
    /// repeated once after a drop; but the caller's own retry would be a new
    /// request, so after a timeout the caller is told it may have applied.
    ReplayableWrite,
    /// Writes, and repeating it could change the state or the answer (an
    /// increment, a conditional SET, a take). Never sent twice: when it may have
    /// reached Redis and no answer came, the caller is told it may have applied.
    Write,
}

impl Effect {
    /// Whether sending the identical request again is harmless.
    pub fn may_resend(self) -> bool {
        !matches!(self, Effect::Write)
    }

    /// Whether the caller may simply retry when no answer came.
    pub fn caller_may_retry(self) -> bool {
        matches!(self, Effect::Read | Effect::IdempotentWrite)
    }
}

/// A named Redis operation: the name labels logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    /// A short stable name, such as `cache_get`.
    pub name: &'static str,
    /// What it does.
    pub effect: Effect,
}

impl Op {
    /// An operation that only reads.
    pub const fn read(name: &'static str) -> Op {
        Op {
            name,
            effect: Effect::Read,
        }
    }

    /// A write that is harmless to repeat.
    pub const fn idempotent(name: &'static str) -> Op {
        Op {
            name,
            effect: Effect::IdempotentWrite,
        }
    }

    /// A write carrying an id fresh to this call.
    pub const fn replayable(name: &'static str) -> Op {
        Op {
            name,
            effect: Effect::ReplayableWrite,
        }
    }

    /// A write that must not be repeated blindly.
    pub const fn write(name: &'static str) -> Op {
        Op {
            name,
            effect: Effect::Write,
        }
    }
}

/// What is sent: one command, one script call, or one pipeline.
#[derive(Clone, Copy)]
pub enum Request<'a> {
    /// A plain command.
    Command(&'a Cmd),
    /// A Lua script (EVALSHA, loading it again on NOSCRIPT).
    Script(&'a ScriptInvocation<'a>),
    /// Several commands in one round trip.
    Pipeline(&'a Pipeline),
}

impl<'a> From<&'a Cmd> for Request<'a> {
    fn from(command: &'a Cmd) -> Request<'a> {
        Request::Command(command)
    }
}

impl<'a> From<&'a ScriptInvocation<'a>> for Request<'a> {
    fn from(script: &'a ScriptInvocation<'a>) -> Request<'a> {
        Request::Script(script)
    }
}

impl<'a> From<&'a Pipeline> for Request<'a> {
    fn from(pipeline: &'a Pipeline) -> Request<'a> {
        Request::Pipeline(pipeline)
    }
}

impl Request<'_> {
    async fn send<T: FromRedisValue>(self, connection: &mut MultiplexedConnection) -> redis::RedisResult<T> {
        match self {
            Request::Command(command) => command.query_async(connection).await,
            Request::Script(script) => script.invoke_async(connection).await,
            Request::Pipeline(pipeline) => pipeline.query_async(connection).await,
        }
    }
}

/// How long a call waits for a connection while Redis is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    /// Until a connection attempt that began after the call arrived has failed:
    /// no call fails because of what was true before it arrived.
    Fresh,
    /// Not at all when the last attempt failed: for callers with a cheap
    /// fallback (the rate limiter's outage policy) that prefer an answer now.
    Current,
}

/// The shared Redis connections. Cloning is cheap and shares them.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    reads: Link,
    writes: Link,
    address: String,
    meter: Meter,
}

/// Which of the two connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Commands that only read.
    Reads,
    /// Commands that write.
    Writes,
}

impl Redis {
    /// Starts connecting to `endpoint` in the background; the process serves
    /// (answering UNAVAILABLE) while Redis is down. Every new connection loads
    /// `scripts` first, and every new write connection checks `epoch`.
    pub fn start(
        endpoint: Endpoint,
        scripts: &[&'static LuaScript],
        backoff: Backoff,
        epoch: DataEpoch,
        meter: Meter,
    ) -> Redis {
        let scripts: Arc<[&'static LuaScript]> = scripts.into();
        let address = endpoint.address();
        let reads = Link::start(
            endpoint.clone(),
            "cachelock-reads",
            scripts.clone(),
            backoff,
            None,
            meter.clone(),
        );
        let writes = Link::start(
            endpoint,
            "cachelock-writes",
            scripts,
            backoff,
            Some(epoch),
            meter.clone(),
        );
        Redis {
            inner: Arc::new(Inner {
                reads,
                writes,
                address,
                meter,
            }),
        }
    }

    /// Checks whether Redis still holds the data `epoch` last saw (see [`epoch`]).
    ///
    /// # Errors
    /// [`Error::Unavailable`] without a connection in time; [`Error::Timeout`] or a
    /// Redis error when the check did not complete.
    pub async fn check_epoch(&self, epoch: &DataEpoch, deadline: tokio::time::Instant) -> Result<(), Error> {
        let (mut connection, _) = self
            .inner
            .writes
            .connection(None, None, deadline)
            .await
            .map_err(Error::Unavailable)?;
        match timeout_at(deadline, epoch.check(&mut connection)).await {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(Error::Timeout {
                waited: Duration::ZERO,
                effect: Effect::IdempotentWrite,
            }),
        }
    }

    /// Where it connects, fit for a log line.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    fn link(&self, role: Role) -> &Link {
        match role {
            Role::Reads => &self.inner.reads,
            Role::Writes => &self.inner.writes,
        }
    }

    /// What one of the connections is doing.
    pub fn state(&self, role: Role) -> State {
        self.link(role).state()
    }

    /// Receivers that see every change of either connection's state.
    pub fn watch(&self) -> [watch::Receiver<State>; 2] {
        [self.inner.reads.watch(), self.inner.writes.watch()]
    }

    /// Runs `request` within `deadline`, waiting for a connection when there is
    /// none yet ([`Patience::Fresh`]).
    ///
    /// # Errors
    /// See [`Redis::run_with`].
    pub async fn run<T: FromRedisValue>(
        &self,
        op: Op,
        deadline: tokio::time::Instant,
        request: impl Into<Request<'_>>,
    ) -> Result<T, Error> {
        self.run_with(op, Patience::Fresh, deadline, request.into()).await
    }

    /// Runs `request` within `deadline`.
    ///
    /// A command whose connection dropped is sent again, once, on the next
    /// connection when that is harmless ([`Effect::may_resend`]).
    ///
    /// # Errors
    /// - [`Error::Unavailable`] when it cannot have applied: no connection in
    ///   time, or Redis refused it without running it (BUSY, LOADING, READONLY…);
    /// - [`Error::Timeout`] when no answer came in time (a write may still apply);
    /// - [`Error::MayHaveApplied`] when the connection dropped while a write that
    ///   must not be resent was in flight, or dropped again after the resend;
    /// - [`Error::OutOfMemory`], or another classified Redis error.
    pub async fn run_with<T: FromRedisValue>(
        &self,
        op: Op,
        patience: Patience,
        deadline: tokio::time::Instant,
        request: Request<'_>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        let result = self.attempt(op, patience, deadline, request).await;
        let took = started.elapsed();
        add_redis_time(took);
        self.inner.meter.record(|metrics| {
            metrics.redis_call(op.name, took);
            if let Err(error) = &result
                && let Some(kind) = error.redis_failure_kind()
            {
                metrics.redis_error(kind);
            }
        });
        result
    }

    async fn attempt<T: FromRedisValue>(
        &self,
        op: Op,
        patience: Patience,
        deadline: tokio::time::Instant,
        request: Request<'_>,
    ) -> Result<T, Error> {
        let link = self.link(match op.effect {
            Effect::Read => Role::Reads,
            Effect::IdempotentWrite | Effect::ReplayableWrite | Effect::Write => Role::Writes,
        });
        let started = Instant::now();
        let mut fresh_since = match patience {
            Patience::Fresh => Some(started),
            Patience::Current => None,
        };
        let mut avoid = None;
        loop {
            let (mut connection, generation) = link
                .connection(fresh_since, avoid, deadline)
                .await
                .map_err(Error::Unavailable)?;
            let reply = match timeout_at(deadline, request.send(&mut connection)).await {
                Ok(reply) => reply,
                Err(_) => {
                    return Err(Error::Timeout {
                        waited: started.elapsed(),
                        effect: op.effect,
                    });
                }
            };
            match reply {
                Ok(value) => return Ok(value),
                Err(error) if connection_lost(&error) => {
                    link.abandon(generation);
                    let cause = Cause::of(&error);
                    if avoid.is_some() || !op.effect.may_resend() {
                        return Err(if op.effect.caller_may_retry() {
                            Error::Unavailable(cause)
                        } else {
                            Error::MayHaveApplied(cause)
                        });
                    }
                    // Once more, on a connection made after this one was lost.
                    avoid = Some(generation);
                    fresh_since = Some(Instant::now());
                }
                Err(error) => return Err(Error::from(error)),
            }
        }
    }
}

/// Whether an error means the connection is gone (rather than Redis answering with an error).
fn connection_lost(error: &redis::RedisError) -> bool {
    error.is_io_error() || error.is_connection_dropped()
}

/// The URL with any password replaced by `***`, fit for a log line.
pub fn redacted(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<unparseable URL>".to_owned();
    };
    if parsed.password().is_some() {
        // Only fails for URLs that cannot have a password, which this one has.
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let secret = matches!(name.as_ref(), "pass" | "password");
                (
                    name.into_owned(),
                    if secret { "***".to_owned() } else { value.into_owned() },
                )
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(redacted("redis://:hunter2@db:6379/0"), "redis://:***@db:6379/0");
        assert_eq!(redacted("rediss://app:hunter2@db:6380"), "rediss://app:***@db:6380");
        assert!(!redacted("redis+unix:///run/redis.sock?db=1&pass=hunter2").contains("hunter2"));
        assert_eq!(redacted("redis://db:6379"), "redis://db:6379");
        assert_eq!(redacted("not a url"), "<unparseable URL>");
    }
}
