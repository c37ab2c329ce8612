//! The Redis connections the whole process shares, the development
//! redis-server, the key builder and the script registry.
//!
//! [`Redis`] holds supervised, multiplexed connections (see [`link`]) to
//! wherever the [`Topology`] says Redis is: one for commands that only read,
//! one for commands that write, and on a Cluster one more for writes that must
//! never be sent twice (redis-rs's Cluster connection resends a command by
//! itself after a lost connection; that one is told not to). Every RPC
//! pipelines onto one of them. Reads and writes are apart because Redis
//! processes one client's commands in order: during `CLIENT PAUSE WRITE` (what
//! a managed Redis does during a failover) a paused write would otherwise hold
//! up every read queued behind it on the same socket.
//!
//! Every command goes through [`Redis::run`], which decides — from what the
//! command is ([`Effect`]) — whether it may be sent again after the connection
//! dropped, and what the caller is told when it cannot be. A refusal that means
//! the command did not run and will soon succeed elsewhere — a Cluster slot
//! that moved (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) or a Sentinel primary that was
//! demoted (READONLY) — is followed within the call's deadline.

mod batch;
mod connect;
mod connection;
mod embedded;
mod inspect;
mod keys;
mod link;
mod scripts;
mod topology;

use std::{sync::Arc, time::Instant};

use redis::FromRedisValue;
use tokio::{
    sync::watch,
    time::{sleep, timeout_at},
};
use tracing::{Instrument, debug_span};

pub use batch::{Batcher, Calls};
pub use connect::{ConnectSettings, Endpoint};
pub use connection::{Connection, Request};
pub use embedded::EmbeddedRedis;
pub use inspect::{ClusterNode, info_command, parse_cluster_nodes, parse_info, replicas};
pub use keys::{DEFAULT_TENANT, KeySpace, Keys, LockKeys, envoy_descriptor, slot_tag};
pub use link::{Backoff, State};
pub use scripts::{Invocation, LuaScript};
pub use topology::{Cluster, Kind, Sentinels, Topology, watch_failovers};

use crate::{
    error::{Cause, Effect, Error, server_code},
    telemetry::{Meter, add_redis_time},
};
use link::{Link, LinkSettings};

/// A named Redis operation: the name labels logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    /// A short stable name, such as `cache_get`.
    pub name: &'static str,
    /// What it does.
    pub effect: Effect,
    /// It may hold its connection for a while (WAIT): it goes on a connection of
    /// its own, so that nothing queued behind it waits too.
    pub blocking: bool,
}

impl Op {
    /// An operation that only reads.
    pub const fn read(name: &'static str) -> Op {
        Op {
            name,
            effect: Effect::Read,
            blocking: false,
        }
    }

    /// A write that is harmless to repeat.
    pub const fn idempotent(name: &'static str) -> Op {
        Op {
            name,
            effect: Effect::IdempotentWrite,
            blocking: false,
        }
    }

    /// A write carrying an id fresh to this call.
    pub const fn replayable(name: &'static str) -> Op {
        Op {
            name,
            effect: Effect::ReplayableWrite,
            blocking: false,
        }
    }

    /// A write that must not be repeated blindly.
    pub const fn write(name: &'static str) -> Op {
        Op {
            name,
            effect: Effect::Write,
            blocking: false,
        }
    }

    /// The same operation, marked as one that may hold its connection (WAIT).
    pub const fn blocking(self) -> Op {
        Op { blocking: true, ..self }
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

/// What the shared connections are opened with.
pub struct RedisSettings {
    /// Where Redis is.
    pub topology: Topology,
    /// Loaded on every new connection.
    pub scripts: Vec<&'static LuaScript>,
    /// Reconnection timing.
    pub backoff: Backoff,
    /// Open a connection for [`Op::blocking`] operations.
    pub blocking: bool,
}

/// The shared Redis connections. Cloning is cheap and shares them.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    reads: Link,
    writes: Link,
    /// Cluster only: writes that must never be sent twice.
    exact: Option<Link>,
    /// Operations that may hold their connection.
    blocking: Option<Link>,
    topology: Topology,
    /// Bumped when the primary changed (a Sentinel failover): every connection is replaced.
    failovers: watch::Sender<u64>,
    backoff: Backoff,
    meter: Meter,
    /// Whether the last probe found every primary well below its maxmemory (or
    /// without one): scripts that guard against growing a full Redis may then
    /// skip reading INFO memory themselves.
    roomy: std::sync::atomic::AtomicBool,
}

/// Which of the connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Commands that only read.
    Reads,
    /// Commands that write.
    Writes,
    /// Cluster only: writes that must never be sent twice.
    Exact,
    /// Operations that may hold their connection (WAIT).
    Blocking,
}

impl Redis {
    /// Starts connecting in the background; the process serves (answering
    /// UNAVAILABLE) while Redis is down. Every new connection loads the scripts
    /// first.
    pub fn start(settings: RedisSettings, meter: Meter) -> Redis {
        let RedisSettings {
            topology,
            scripts,
            backoff,
            blocking,
        } = settings;
        let scripts: Arc<[&'static LuaScript]> = scripts.into();
        let failovers = watch::Sender::new(0);
        let link = |name: &'static str, exact: bool| {
            Link::start(
                LinkSettings {
                    topology: topology.clone(),
                    name,
                    scripts: scripts.clone(),
                    backoff,
                    exact,
                    failovers: failovers.subscribe(),
                },
                meter.clone(),
            )
        };
        let reads = link("cachelock-reads", false);
        let writes = link("cachelock-writes", false);
        let exact = (topology.kind() == Kind::Cluster).then(|| link("cachelock-exact", true));
        let blocking = blocking.then(|| link("cachelock-blocking", false));
        Redis {
            inner: Arc::new(Inner {
                reads,
                writes,
                exact,
                blocking,
                topology,
                failovers,
                backoff,
                meter,
                roomy: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Whether the last probe found every primary under 90% of its maxmemory,
    /// or without one; false until a probe says so.
    pub fn roomy(&self) -> bool {
        self.inner.roomy.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records what the health prober found of Redis's memory.
    pub fn set_roomy(&self, roomy: bool) {
        self.inner.roomy.store(roomy, std::sync::atomic::Ordering::Relaxed);
    }

    /// Where it connects, fit for a log line.
    pub fn describe(&self) -> String {
        self.inner.topology.describe()
    }

    /// Where Redis is.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// Which topology it runs on.
    pub fn kind(&self) -> Kind {
        self.inner.topology.kind()
    }

    /// Replaces every connection (they reconnect at once): the primary changed.
    pub fn reconnect(&self) {
        self.inner.failovers.send_modify(|count| *count += 1);
    }

    /// The sender bumped on each failover, for the Sentinel watcher.
    pub fn failovers(&self) -> watch::Sender<u64> {
        self.inner.failovers.clone()
    }

    fn link(&self, role: Role) -> &Link {
        match role {
            Role::Reads => &self.inner.reads,
            Role::Writes => &self.inner.writes,
            Role::Exact => self.inner.exact.as_ref().unwrap_or(&self.inner.writes),
            Role::Blocking => self.inner.blocking.as_ref().unwrap_or(&self.inner.writes),
        }
    }

    /// The connections there are.
    pub fn roles(&self) -> Vec<Role> {
        let mut roles = vec![Role::Reads, Role::Writes];
        if self.inner.exact.is_some() {
            roles.push(Role::Exact);
        }
        if self.inner.blocking.is_some() {
            roles.push(Role::Blocking);
        }
        roles
    }

    /// What one of the connections is doing.
    pub fn state(&self, role: Role) -> State {
        self.link(role).state()
    }

    /// Receivers that see every change of any connection's state.
    pub fn watch(&self) -> Vec<watch::Receiver<State>> {
        self.roles().into_iter().map(|role| self.link(role).watch()).collect()
    }

    /// Groups the indices of `redis_keys` by Cluster slot, so that each group can
    /// go in one request; one group of all of them when not on a Cluster.
    pub fn group_by_slot(&self, redis_keys: &[String]) -> Vec<Vec<usize>> {
        if self.kind() != Kind::Cluster {
            return vec![(0..redis_keys.len()).collect()];
        }
        let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
        for (index, key) in redis_keys.iter().enumerate() {
            let slot = keys::slot(key);
            match groups.iter_mut().find(|(group_slot, _)| *group_slot == slot) {
                Some((_, members)) => members.push(index),
                None => groups.push((slot, vec![index])),
            }
        }
        groups.into_iter().map(|(_, members)| members).collect()
    }

    /// The slot of `redis_key` on a Cluster; 0 elsewhere (one lane for everything).
    pub fn lane(&self, redis_key: &str) -> u16 {
        if self.kind() == Kind::Cluster {
            keys::slot(redis_key)
        } else {
            0
        }
    }

    /// On a Cluster, the indices of the first two of `redis_keys` that live in
    /// different slots (and so cannot change together atomically).
    pub fn first_cross_slot(&self, redis_keys: &[String]) -> Option<(usize, usize)> {
        if self.kind() != Kind::Cluster {
            return None;
        }
        let first = keys::slot(redis_keys.first()?);
        redis_keys
            .iter()
            .position(|key| keys::slot(key) != first)
            .map(|other| (0, other))
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
    /// connection when that is harmless ([`Effect::may_resend`]). A command
    /// refused without running because its slot moved (Cluster) or its primary
    /// was demoted (Sentinel) is sent again where it now belongs.
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
        // A span for traces only (DEBUG: the log filter leaves it out): the
        // operation's name, never a key or an argument.
        let span = debug_span!(
            "redis",
            otel.name = op.name,
            otel.kind = "client",
            db.system.name = "redis",
            db.operation.name = op.name,
        );
        let result = self.attempt(op, patience, deadline, request).instrument(span).await;
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

    /// Sends `request` until it is answered, the answer is final, or the
    /// deadline passes: again on a fresh connection when one was lost (once,
    /// and only when its effect allows), and where a Cluster or a failover
    /// redirects it.
    async fn attempt<T: FromRedisValue>(
        &self,
        op: Op,
        patience: Patience,
        deadline: tokio::time::Instant,
        request: Request<'_>,
    ) -> Result<T, Error> {
        let role = match op.effect {
            _ if op.blocking => Role::Blocking,
            Effect::Read => Role::Reads,
            Effect::IdempotentWrite | Effect::ReplayableWrite => Role::Writes,
            Effect::Write => Role::Exact,
        };
        let link = self.link(role);
        let started = Instant::now();
        let mut next = NextTry {
            fresh_since: matches!(patience, Patience::Fresh).then_some(started),
            ..NextTry::default()
        };
        loop {
            let (mut connection, generation) = link
                .connection(next.fresh_since, next.avoid, deadline)
                .await
                .map_err(|cause| next.settle(Error::Unavailable(cause), op.effect))?;
            let asking = next.asking.take();
            let send = async {
                if let (Some((host, port)), Connection::Cluster(cluster)) = (&asking, &mut connection)
                    && let Some(reply) = request.send_asking(cluster, host, *port).await
                {
                    return reply;
                }
                request.send(&mut connection).await
            };
            let Ok(reply) = timeout_at(deadline, send).await else {
                return Err(Error::Timeout {
                    waited: started.elapsed(),
                    effect: op.effect,
                });
            };
            match reply {
                Ok(value) => return Ok(value),
                Err(error) => {
                    if let Err(error) = self.after(error, op, link, generation, deadline, &mut next).await {
                        return Err(next.settle(error, op.effect));
                    }
                }
            }
        }
    }

    /// Decides, after `error` on the connection of `generation`, whether and
    /// where the command goes next (in `next`); the error to answer when it
    /// does not.
    async fn after(
        &self,
        error: redis::RedisError,
        op: Op,
        link: &Link,
        generation: u64,
        deadline: tokio::time::Instant,
        next: &mut NextTry,
    ) -> Result<(), Error> {
        let kind = self.kind();
        if connection_lost(&error) {
            let cause = Cause::of(&error);
            // A Cluster connection repairs its node connections itself.
            if kind != Kind::Cluster {
                link.abandon(generation);
            }
            if next.resent || !op.effect.may_resend() {
                return Err(if op.effect.caller_may_retry() {
                    Error::Unavailable(cause)
                } else {
                    Error::MayHaveApplied(cause)
                });
            }
            // Once more, on a connection made after this one was lost.
            next.resent = true;
            if kind != Kind::Cluster {
                next.avoid = Some(generation);
            }
            next.fresh_since = Some(Instant::now());
            return Ok(());
        }
        if server_code(&error).as_deref() == Some("UNBLOCKED") {
            next.ran = true;
        }
        match resend(&error, kind, op.effect.may_resend()) {
            Resend::Never => return Err(Error::from(error)),
            Resend::Asking { host, port } => next.asking = Some((host, port)),
            Resend::AfterSlotRefresh => {
                // redis-rs refreshes the slot map; try again shortly.
                let pause = self.inner.backoff.min;
                if tokio::time::Instant::now() + pause >= deadline {
                    return Err(Error::Unavailable(Cause::of(&error)));
                }
                sleep(pause).await;
            }
            Resend::ToNewPrimary => {
                // The primary became a replica: look it up again, and send the
                // command (which did not run) to the new one.
                link.abandon(generation);
                next.avoid = Some(generation);
                next.fresh_since = Some(Instant::now());
            }
        }
        Ok(())
    }
}

/// Where the next try of a command goes.
#[derive(Default)]
struct NextTry {
    /// Only a connection made after this instant will do.
    fresh_since: Option<Instant>,
    /// Not the connection of this generation.
    avoid: Option<u64>,
    /// The command was already sent again once after a lost connection.
    resent: bool,
    /// Cluster: send it ASKING to this node, which is importing the slot.
    asking: Option<(String, u16)>,
    /// A try ran part of the request before failing (a script whose WAIT a
    /// failover released): "nothing was applied" is no longer true.
    ran: bool,
}

impl NextTry {
    /// `error`, as it must be answered after the tries so far: a refusal after
    /// a try that ran is an answer that it may have applied (unless the caller
    /// may simply retry).
    fn settle(&self, error: Error, effect: Effect) -> Error {
        match error {
            Error::Unavailable(cause) if self.ran && !effect.caller_may_retry() => Error::MayHaveApplied(cause),
            other => other,
        }
    }
}

/// What a Redis error reply means for sending the command again.
enum Resend {
    /// The answer stands.
    Never,
    /// Cluster: the slot is being imported by the node at `host:port`; ask it there.
    Asking { host: String, port: u16 },
    /// Cluster: the slot moved, or cannot be served for a moment; it did not run.
    AfterSlotRefresh,
    /// Sentinel: the primary was demoted; it did not run.
    ToNewPrimary,
}

fn resend(error: &redis::RedisError, kind: Kind, may_resend: bool) -> Resend {
    let code = server_code(error);
    match (kind, code.as_deref()) {
        // WAIT unblocked because its node stopped being a primary (a failover):
        // the script before it ran on a node no longer in charge. A write that
        // may be sent again goes to the new primary, and is decided there.
        (Kind::Cluster, Some("UNBLOCKED")) if may_resend => Resend::AfterSlotRefresh,
        (Kind::Sentinel, Some("UNBLOCKED")) if may_resend => Resend::ToNewPrimary,
        (Kind::Cluster, Some("ASK")) => match error.redirect_node() {
            Some((node, _)) => match node
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host, port.parse().ok()?)))
            {
                Some((host, port)) => Resend::Asking {
                    host: host.to_owned(),
                    port,
                },
                None => Resend::AfterSlotRefresh,
            },
            None => Resend::AfterSlotRefresh,
        },
        (Kind::Cluster, Some("MOVED" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY")) => {
            Resend::AfterSlotRefresh
        }
        (Kind::Cluster, _) if error.kind() == redis::ErrorKind::ClusterConnectionNotFound => Resend::AfterSlotRefresh,
        (Kind::Sentinel, Some("READONLY")) => Resend::ToNewPrimary,
        _ => Resend::Never,
    }
}

/// Whether an error means the connection is gone (rather than Redis answering with an error).
fn connection_lost(error: &redis::RedisError) -> bool {
    error.is_io_error() || error.is_connection_dropped()
}
