//! One supervised connection to Redis.
//!
//! A background task (the supervisor) opens the connection, hands it out while it
//! is up, and opens a new one the moment the socket closes — it awaits the
//! connection's driver, so a close is noticed when it happens, not at the next
//! command. Failed attempts are repeated forever, with exponential backoff
//! capped at the configured maximum; a call waiting for the connection cuts the
//! backoff short (down to the minimum), so recovery is seen within one minimum
//! backoff while there is traffic.
//!
//! A call is refused only by an attempt that *began after it arrived*: a call
//! never fails on stale news, so none fails after Redis is back. While Redis is
//! down that means a call waits for the next attempt — at most the minimum
//! backoff plus the attempt itself.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
    time::{sleep, sleep_until, timeout_at},
};

use crate::{error::Cause, telemetry::Meter};

use super::{
    connection::Connection,
    scripts::LuaScript,
    topology::{Opened, Topology},
};

/// What a link is doing.
#[derive(Clone)]
pub enum State {
    /// An attempt to connect is under way.
    Connecting,
    /// Connected; the generation counts connections made so far.
    Up {
        /// The connection (clones share its socket).
        connection: Connection,
        /// 1 for the first connection, 2 after the first reconnect, and so on.
        generation: u64,
    },
    /// The attempt that began at `started` failed.
    Down {
        /// Why.
        cause: Cause,
        /// When the failed attempt began.
        started: Instant,
    },
}

/// Reconnection timing.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first delay after a failed attempt, and the shortest when a call is waiting.
    pub min: Duration,
    /// The longest delay between attempts.
    pub max: Duration,
}

struct Shared {
    state: watch::Sender<State>,
    /// A call is waiting for a connection: attempt again soon.
    demand: Notify,
    /// The highest generation a call found broken while its driver still ran.
    abandon: watch::Sender<u64>,
}

/// A supervised connection; dropping it stops the supervisor.
pub struct Link {
    shared: Arc<Shared>,
    supervisor: JoinHandle<()>,
}

/// What a link connects to and how.
pub struct LinkSettings {
    /// Where Redis is.
    pub topology: Topology,
    /// The client name Redis shows for it.
    pub name: &'static str,
    /// Loaded on every new connection.
    pub scripts: Arc<[&'static LuaScript]>,
    /// Reconnection timing.
    pub backoff: Backoff,
    /// On a Cluster: a connection that never sends a command twice by itself.
    pub exact: bool,
    /// Bumped when a Sentinel announces a failover: the connection is replaced.
    pub failovers: watch::Receiver<u64>,
}

impl Link {
    /// Starts connecting in the background, as `settings` say.
    pub fn start(settings: LinkSettings, meter: Meter) -> Link {
        let shared = Arc::new(Shared {
            state: watch::Sender::new(State::Connecting),
            demand: Notify::new(),
            abandon: watch::Sender::new(0),
        });
        let supervisor = tokio::spawn(supervise(shared.clone(), settings, meter));
        Link { shared, supervisor }
    }

    /// What the link is doing now.
    pub fn state(&self) -> State {
        self.shared.state.borrow().clone()
    }

    /// A receiver that sees every change of state.
    pub fn watch(&self) -> watch::Receiver<State> {
        self.shared.state.subscribe()
    }

    /// The connection, once it is up and not of generation `avoid`.
    ///
    /// `fresh_since`: a failed attempt that began before this instant does not
    /// count (the call waits for the next one); `None`: any failed attempt counts,
    /// for callers with a cheap fallback that prefer an answer now.
    ///
    /// # Errors
    /// The cause of the failed attempt that decided it, or [`Cause::Timeout`] when
    /// `deadline` came first.
    pub async fn connection(
        &self,
        fresh_since: Option<Instant>,
        avoid: Option<u64>,
        deadline: tokio::time::Instant,
    ) -> Result<(Connection, u64), Cause> {
        let mut state = self.shared.state.subscribe();
        let waiting_since = Instant::now();
        loop {
            let last_cause = {
                let current = state.borrow_and_update();
                match &*current {
                    State::Up { connection, generation } if Some(*generation) != avoid => {
                        return Ok((connection.clone(), *generation));
                    }
                    State::Down { cause, started } if fresh_since.is_none_or(|since| *started >= since) => {
                        return Err(cause.clone());
                    }
                    State::Down { cause, .. } => {
                        self.shared.demand.notify_one();
                        Some(cause.clone())
                    }
                    State::Up { .. } | State::Connecting => None,
                }
            };
            match timeout_at(deadline, state.changed()).await {
                Ok(Ok(())) => {}
                // The supervisor is gone: the process is stopping.
                Ok(Err(_)) => return Err(Cause::Closed),
                Err(_) => return Err(last_cause.unwrap_or(Cause::Timeout(waiting_since.elapsed()))),
            }
        }
    }

    /// Reports that a command found connection `generation` unusable although its
    /// socket is still open (or that it reaches a demoted primary); the supervisor replaces it.
    pub fn abandon(&self, generation: u64) {
        self.shared.abandon.send_if_modified(|highest| {
            let newer = generation > *highest;
            if newer {
                *highest = generation;
            }
            newer
        });
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

async fn supervise(shared: Arc<Shared>, settings: LinkSettings, meter: Meter) {
    let LinkSettings {
        topology,
        name,
        scripts,
        backoff,
        exact,
        mut failovers,
    } = settings;
    let mut generation = 0;
    let mut failures: u32 = 0;
    let mut abandon = shared.abandon.subscribe();
    loop {
        let started = Instant::now();
        shared.state.send_replace(State::Connecting);
        failovers.borrow_and_update();
        match topology.open(name, &scripts, exact).await {
            Ok(Opened {
                connection, mut driver, ..
            }) => {
                generation += 1;
                if generation > 1 {
                    meter.record(|metrics| metrics.redis_reconnects.inc());
                }
                failures = 0;
                shared.state.send_replace(State::Up { connection, generation });
                let closed = async {
                    match &mut driver {
                        Some(driver) => {
                            let _ = driver.await;
                        }
                        // A Cluster connection repairs its node connections itself.
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    () = closed => {}
                    _ = abandon.wait_for(|highest| *highest >= generation) => {}
                    Ok(()) = failovers.changed() => {}
                }
                if let Some(driver) = &driver {
                    driver.abort();
                }
                // Reconnect at once: most losses are a restart, a failover or an
                // idle timeout, and the next attempt usually succeeds.
            }
            Err(cause) => {
                shared.state.send_replace(State::Down { cause, started });
                let delay = jittered(backoff.min.saturating_mul(1 << failures.min(16)).min(backoff.max));
                failures = failures.saturating_add(1);
                let ended = tokio::time::Instant::now();
                tokio::select! {
                    () = sleep(delay) => {}
                    () = shared.demand.notified() => sleep_until(ended + backoff.min.min(delay)).await,
                }
            }
        }
    }
}

/// Between half and all of `delay`, so that many instances do not reconnect in step.
fn jittered(delay: Duration) -> Duration {
    let fraction = getrandom::u32().map_or(0.75, |random| 0.5 + f64::from(random) / f64::from(u32::MAX) / 2.0);
    delay.mul_f64(fraction)
}
