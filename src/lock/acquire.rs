//! Acquiring: the attempts of one Acquire (or of a Hold's first grant), the
//! waits between them, and what an Acquire that ends early leaves to undo.

use std::time::Duration;

use tokio::{sync::watch, time::Instant};

use super::{
    grant::{self, Attempt, Grant, PauseCause},
    store::LockStore,
};
use crate::{
    error::Error,
    notices::{Notices, Registration, Woken},
    redis::LockKeys,
    request::Ttl,
    telemetry::{Meter, ThrottledLog},
};

/// How often a waiter attempts again even when not woken: it renews its place
/// in the queue (which lapses after [`QUEUE_PLACE_LIFE`]), and finds the places
/// of waiters gone without leaving lapsed.
const QUEUE_RENEW: Duration = Duration::from_secs(1);
static PAUSED_LOST: ThrottledLog = ThrottledLog::new(
    "lock grants paused: the Redis node holding the lock lost its data (a restart without persistence, a \
     failover to an empty replica, or a flush); grants there wait until every lease granted before may have \
     ended (--lock-max-ttl)",
);
static PAUSED_YOUNG: ThrottledLog = ThrottledLog::new(
    "lock grants paused: the Redis node holding the lock started less than --lock-max-ttl ago and has no record \
     of earlier grants, so it may have restarted empty; grants there wait until it has been up that long (set \
     --lock-trust-young-redis only for a Redis that never held locks)",
);
static PAUSED_EVICTED: ThrottledLog = ThrottledLog::new(
    "lock grants paused: the Redis node holding the lock evicted keys, perhaps leases; grants there wait until \
     every lease granted before may have ended (--lock-max-ttl). Set maxmemory-policy to noeviction",
);

/// Logs (at most every 10 s, with their count) why grants were paused.
pub fn record_pause(cause: PauseCause) {
    match cause {
        PauseCause::Lost => PAUSED_LOST.record(),
        PauseCause::Young => PAUSED_YOUNG.record(),
        PauseCause::Evicted => PAUSED_EVICTED.record(),
    }
}

/// Takes locks for the handlers: attempts, waits, and leaves nothing behind.
#[derive(Clone)]
pub struct Acquirer {
    pub(super) store: LockStore,
    meter: Meter,
    notices: Notices,
    draining: watch::Receiver<bool>,
    operation_timeout: Duration,
}

/// The clocks of one Acquire, and the rules between them: attempts run until
/// the lock is granted or the wait ends; an attempt may run past the wait's end
/// (it started in time) but never past the caller's deadline.
pub struct WaitPlan {
    /// No attempt starts after this.
    wait_ends: Instant,
    /// Nothing runs after this: the caller's gRPC deadline, less a margin.
    caller_deadline: Option<Instant>,
    /// Longest time one attempt may take.
    attempt_timeout: Duration,
}

impl WaitPlan {
    pub fn new(wait: Duration, caller_left: Option<Duration>, attempt_timeout: Duration) -> WaitPlan {
        let now = Instant::now();
        // A wait cut short by the caller's deadline ends early enough to leave the
        // last attempt a tenth of the caller's time.
        let wait = caller_left.map_or(wait, |left| wait.min(left - left / 10));
        WaitPlan {
            wait_ends: now + wait,
            caller_deadline: caller_left.map(|left| now + left),
            attempt_timeout,
        }
    }

    /// The deadline of an attempt starting now; `None` when the caller's deadline has passed.
    fn attempt_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        let deadline = now + self.attempt_timeout;
        match self.caller_deadline {
            Some(caller) if caller <= now => None,
            Some(caller) => Some(deadline.min(caller)),
            None => Some(deadline),
        }
    }

    /// How long to wait before the next attempt, at most `until_next_chance`;
    /// `None` when the wait is over.
    fn pause(&self, until_next_chance: Duration) -> Option<Duration> {
        let left = self
            .wait_ends
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())?;
        Some(left.min(until_next_chance))
    }

    /// Whether the wait lasts at least `span` more.
    fn covers(&self, span: Duration) -> bool {
        Instant::now() + span <= self.wait_ends
    }
}

/// One Acquire (or the acquiring part of a Hold), validated.
pub struct Ask {
    /// The lock's keys, in the caller's key space.
    pub keys: LockKeys,
    /// The token a grant will carry.
    pub token: String,
    /// The lease asked for.
    pub ttl: Ttl,
    /// The caller's owner text.
    pub owner: String,
    /// The key of the request id ("" without one).
    pub request_key: String,
    /// The permits the caller believes the name has.
    pub permits: u32,
    /// The caller's place in the queue when it may wait ("" when it does not).
    pub ticket: String,
    /// Its clocks.
    pub plan: WaitPlan,
}

/// How an Acquire ended.
pub enum Outcome {
    /// Granted; the attempt that was granted was sent at `sent`, so the lease
    /// is certain until `sent` plus the grant's ttl.
    Granted { grant: Grant, sent: Instant },
    /// The wait ended without the lock.
    NotAcquired {
        /// The lease left of the holder whose lease ends first.
        holder_ttl: Duration,
    },
}

/// What an Acquire may leave behind in Redis if it ends before its caller has
/// the grant — however it ends (the wait ran out, an error, the caller went
/// away, its future was dropped mid-attempt): its place in the queue, and a
/// grant its last attempt may have made although no answer came back. Both are
/// given up in one script when it is dropped, so neither outlives the call
/// (otherwise the next in line would wait for the place to lapse, or a grant
/// nobody knows of would hold the lock until its lease ran out).
pub struct Pending {
    store: LockStore,
    keys: LockKeys,
    /// The grant's token, or "" when the grant must stay: a request with a
    /// request id may be retried (here or on another instance) to collect the
    /// grant its lost answer carried.
    token: String,
    ticket: String,
    operation_timeout: Duration,
    /// An attempt is in flight or went unanswered, or a place is queued, and
    /// nothing was handed over yet.
    armed: bool,
}

impl Pending {
    /// The grant reached its caller: nothing is left to undo.
    pub fn handed_over(&mut self) {
        self.armed = false;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.armed || (self.token.is_empty() && self.ticket.is_empty()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        let keys = self.keys.clone();
        let token = std::mem::take(&mut self.token);
        let ticket = std::mem::take(&mut self.ticket);
        let deadline = Instant::now() + self.operation_timeout;
        runtime.spawn(async move {
            // Best effort: if it fails, the place lapses and the lease runs out by themselves.
            if let Err(error) = store.release(&keys, &token, &ticket, deadline).await {
                tracing::debug!(%error, "could not leave a lock's queue; the place will lapse");
            }
        });
    }
}

impl Acquirer {
    /// Takes locks in `store`, woken by `notices`; waits end once `draining` turns true.
    pub fn new(
        store: LockStore,
        meter: Meter,
        notices: Notices,
        draining: watch::Receiver<bool>,
        operation_timeout: Duration,
    ) -> Acquirer {
        Acquirer {
            store,
            meter,
            notices,
            draining,
            operation_timeout,
        }
    }

    /// The release notices it waits on, which Observe waits on too.
    pub fn notices(&self) -> &Notices {
        &self.notices
    }

    /// Attempts until the lock is granted or the wait ends. Every attempt is
    /// the grant script's decision: a pause it reports (Redis lost its data) is
    /// seen by a waiter already waiting too, and waited out only when the wait
    /// covers it.
    ///
    /// # Errors
    /// Redis failures, [`Error::LocksPaused`] when a pause outlasts the wait,
    /// and the grant script's refusals.
    pub async fn take(&self, ask: &Ask, pending: &mut Pending) -> Result<Outcome, Error> {
        let request = grant::Request {
            keys: &ask.keys,
            token: &ask.token,
            ttl: ask.ttl,
            owner: &ask.owner,
            request_key: &ask.request_key,
            permits: ask.permits,
            ticket: &ask.ticket,
        };
        let plan = &ask.plan;
        let mut holder_ttl = Duration::ZERO;
        let mut registration: Option<Registration> = None;
        let mut queued = false;
        // Counted when the Acquire ends, however it ends, if it waited.
        let waited = WaitTimer::new(&self.meter);
        loop {
            if let Some(registration) = registration.as_mut() {
                registration.mark_seen();
            }
            let Some(deadline) = plan.attempt_deadline() else {
                // Only after a first attempt: the caller's deadline ended the wait.
                return Ok(Outcome::NotAcquired { holder_ttl });
            };
            let sent = Instant::now();
            // In flight: if this future is dropped now, the attempt may still grant.
            pending.armed = true;
            let answer = self.store.try_acquire(request, deadline).await;
            if !matches!(answer, Err(Error::Timeout { .. } | Error::MayHaveApplied(_))) {
                // An answer came (or nothing was sent): only a queued place is left behind.
                pending.armed = queued;
            }
            let (until_next_chance, held) = match answer? {
                Attempt::Granted(grant) => {
                    self.meter.record(|metrics| metrics.lock_grants.inc());
                    return Ok(Outcome::Granted { grant, sent });
                }
                Attempt::Held { ttl } => {
                    holder_ttl = ttl;
                    // Woken by a release that names this waiter; otherwise it attempts
                    // again when the first lease ends, or to renew its place.
                    (
                        if ttl.is_zero() {
                            QUEUE_RENEW
                        } else {
                            ttl.min(QUEUE_RENEW)
                        },
                        true,
                    )
                }
                Attempt::Paused { left, cause } => {
                    record_pause(cause);
                    if !plan.covers(left) {
                        return Err(Error::LocksPaused(left));
                    }
                    // The script kept the waiter's place; it renews it through the pause.
                    (left.min(QUEUE_RENEW), false)
                }
            };
            // A waiter's attempt that was not granted holds a place in the queue.
            queued = !ask.ticket.is_empty();
            pending.armed = queued;
            let Some(nap) = plan.pause(until_next_chance) else {
                return Ok(Outcome::NotAcquired { holder_ttl });
            };
            if registration.is_none() && held {
                // The lock is held and the caller waits: only now does it take a
                // waiter's place here. SAFETY (no lost wake-up): the next attempt
                // runs after registering, so a release between the first attempt
                // and the registration is seen by that attempt.
                registration = Some(self.notices.register(ask.keys.released.clone(), ask.ticket.clone())?);
                waited.start();
                continue;
            }
            if self.notices.wait(registration.as_mut(), nap, &self.draining).await == Woken::Draining {
                return Ok(Outcome::NotAcquired { holder_ttl });
            }
        }
    }

    /// What `ask` leaves to undo if it ends before its caller has the grant.
    pub fn pending(&self, ask: &Ask) -> Pending {
        Pending {
            store: self.store.clone(),
            keys: ask.keys.clone(),
            token: if ask.request_key.is_empty() {
                ask.token.clone()
            } else {
                String::new()
            },
            ticket: ask.ticket.clone(),
            operation_timeout: self.operation_timeout,
            armed: false,
        }
    }
}

/// Counts an Acquire that waited, and how long, when it ends.
struct WaitTimer<'m> {
    meter: &'m Meter,
    since: std::cell::Cell<Option<Instant>>,
}

impl<'m> WaitTimer<'m> {
    fn new(meter: &'m Meter) -> WaitTimer<'m> {
        WaitTimer {
            meter,
            since: std::cell::Cell::new(None),
        }
    }

    fn start(&self) {
        self.since.set(Some(Instant::now()));
    }
}

impl Drop for WaitTimer<'_> {
    fn drop(&mut self) {
        if let Some(since) = self.since.get() {
            let waited = since.elapsed().as_secs_f64();
            self.meter.record(|metrics| {
                metrics.lock_waits.inc();
                metrics.lock_wait_seconds.observe(waited);
            });
        }
    }
}
