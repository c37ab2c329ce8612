//! `cachelock.lock.v1.LockService`: leases with fencing tokens, server-side
//! waiting woken by release notices, idempotent acquire, and Hold streams whose
//! holder hears of a loss before its lease could have ended.
//!
//! Every grant and extension is decided by `lock_grant.lua` (see [`store`]);
//! nothing here grants: this module validates, waits, and keeps Holds.

mod keeper;
mod store;

use std::{
    pin::Pin,
    time::{Duration, SystemTime},
};

use futures_util::Stream;
use tokio::{
    sync::{mpsc, watch},
    time::{Instant, sleep},
};
use tonic::{Request, Response, Status};

pub use store::{Attempt, Grant, GrantRules, Lapse, LockStore, PauseCause, Renewal, request_key, scripts};

use crate::{
    auth::Caller,
    config::Config,
    error::{Error, Reason},
    ids::random_token,
    notices::{Notices, Registration, Waiting},
    pb::lock::{
        AcquireRequest, AcquireResponse, Acquired, DescribeRequest, DescribeResponse, ExtendRequest, ExtendResponse,
        HoldRequest, HoldResponse, NotAcquired, ReleaseRequest, ReleaseResponse, hold_response,
        lock_service_server::LockService,
    },
    redis::LockKeys,
    request::{self, Limits, Ttl, caller_budget, deadline, duration_to_proto},
    telemetry::Meter,
    telemetry::ThrottledLog,
};
use keeper::Keeper;

/// Longest owner text.
const MAX_OWNER_BYTES: usize = 256;
/// Longest request id.
const MAX_REQUEST_ID_BYTES: usize = 128;
/// Longest token a caller can hand back (ours are 22 characters).
const MAX_TOKEN_BYTES: usize = 64;
/// How often a waiter re-checks while release notices are not being heard.
const UNHEARD_RECHECK: Duration = Duration::from_millis(250);
/// How often a waiter attempts again even when not woken: it renews its place
/// in the queue (which lapses after [`QUEUE_PLACE_LIFE`]), and finds the places
/// of waiters gone without leaving lapsed.
const QUEUE_RENEW: Duration = Duration::from_secs(1);
/// Most permits one name can have.
const MAX_PERMITS: u32 = 10_000;

/// Acquires (and Holds) waiting for a lock, for [`Notices`].
pub static WAITING: Waiting = Waiting {
    calls: "Acquires",
    what: "locks",
    what_one: "this lock",
    flag: "lock-max-waiters",
    flag_per_channel: "lock-max-waiters-per-name",
    refusal: "lock_waiters",
    log: &WAITERS_FULL,
};

static WAITERS_FULL: ThrottledLog = ThrottledLog::new(
    "Acquires refused with RESOURCE_EXHAUSTED: --lock-max-waiters or --lock-max-waiters-per-name reached",
);

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
fn record_pause(cause: PauseCause) {
    match cause {
        PauseCause::Lost => PAUSED_LOST.record(),
        PauseCause::Young => PAUSED_YOUNG.record(),
        PauseCause::Evicted => PAUSED_EVICTED.record(),
    }
}

/// The lock's settings, from the configuration.
#[derive(Debug, Clone)]
pub struct LockSettings {
    /// Longest lease.
    pub max_ttl: Duration,
    /// Longest wait.
    pub max_wait: Duration,
    /// Longest wait for Redis in one attempt.
    pub operation_timeout: Duration,
}

impl From<&Config> for LockSettings {
    fn from(config: &Config) -> LockSettings {
        LockSettings {
            max_ttl: config.lock_max_ttl,
            max_wait: config.lock_max_wait,
            operation_timeout: config.operation_timeout,
        }
    }
}

/// The gRPC handlers of the lock service.
#[derive(Clone)]
pub struct LockApi {
    store: LockStore,
    meter: Meter,
    notices: Notices,
    limits: Limits,
    settings: LockSettings,
    draining: watch::Receiver<bool>,
}

/// The clocks of one Acquire, and the rules between them: attempts run until
/// the lock is granted or the wait ends; an attempt may run past the wait's end
/// (it started in time) but never past the caller's deadline.
struct WaitPlan {
    /// No attempt starts after this.
    wait_ends: Instant,
    /// Nothing runs after this: the caller's gRPC deadline, less a margin.
    caller_deadline: Option<Instant>,
    /// Longest time one attempt may take.
    attempt_timeout: Duration,
}

impl WaitPlan {
    fn new(wait: Duration, caller_left: Option<Duration>, attempt_timeout: Duration) -> WaitPlan {
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
struct Ask {
    keys: LockKeys,
    token: String,
    ttl: Ttl,
    owner: String,
    request_key: String,
    permits: u32,
    /// The caller's place in the queue when it may wait ("" when it does not).
    ticket: String,
    plan: WaitPlan,
}

/// How an Acquire ended.
enum Outcome {
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
struct Pending {
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
    fn handed_over(&mut self) {
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

impl LockApi {
    /// Handlers over `store`, woken by `notices`. Waiting Acquires end (not
    /// acquired) once `draining` turns true, so a shutdown does not wait for them.
    pub fn new(
        store: LockStore,
        meter: Meter,
        notices: Notices,
        limits: Limits,
        settings: LockSettings,
        draining: watch::Receiver<bool>,
    ) -> LockApi {
        LockApi {
            store,
            meter,
            notices,
            limits,
            settings,
            draining,
        }
    }

    fn lease(&self, ttl: Option<&prost_types::Duration>) -> Result<Ttl, Error> {
        let lease_limits = Limits {
            max_ttl: self.settings.max_ttl,
            ..self.limits.clone()
        };
        lease_limits.required_ttl("ttl", ttl)
    }

    fn token<'a>(&self, token: &'a str) -> Result<&'a str, Error> {
        if token.is_empty() {
            return Err(Error::invalid("token", "must not be empty"));
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Error::invalid("token", "is not a token this service issued"));
        }
        Ok(token)
    }

    /// Validates what Acquire and Hold share.
    fn ask(&self, caller: &Caller, request: &AcquireRequest, caller_left: Option<Duration>) -> Result<Ask, Error> {
        let name = self.limits.key("name", &request.name)?;
        let ttl = self.lease(request.ttl.as_ref())?;
        let wait = request::wait(
            "wait_timeout",
            request.wait_timeout.as_ref(),
            Duration::ZERO,
            self.settings.max_wait,
            "lock-max-wait",
        )?;
        let owner = bounded_text("owner", &request.owner, MAX_OWNER_BYTES)?;
        let request_id = bounded_text("request_id", &request.request_id, MAX_REQUEST_ID_BYTES)?;
        Ok(Ask {
            keys: caller.space.lock(name),
            token: random_token()?,
            ttl,
            owner: owner.to_owned(),
            request_key: request_key(caller.client.as_deref(), owner, request_id),
            permits: permits(request.permits)?,
            // A caller that may wait queues at its first attempt, under a ticket of its own.
            ticket: if wait.is_zero() { String::new() } else { random_token()? },
            plan: WaitPlan::new(wait, caller_left, self.settings.operation_timeout),
        })
    }

    /// Attempts until the lock is granted or the wait ends. Every attempt is
    /// the grant script's decision: a pause it reports (Redis lost its data) is
    /// seen by a waiter already waiting too, and waited out only when the wait
    /// covers it.
    ///
    /// # Errors
    /// Redis failures, [`Error::LocksPaused`] when a pause outlasts the wait,
    /// and the grant script's refusals.
    async fn take(&self, ask: &Ask, pending: &mut Pending) -> Result<Outcome, Error> {
        let request = store::Request {
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
            let Some(mut nap) = plan.pause(until_next_chance) else {
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
            if !self.notices.is_listening() {
                nap = nap.min(UNHEARD_RECHECK);
            }
            let mut draining = self.draining.clone();
            let released = async {
                match registration.as_mut() {
                    Some(registration) => registration.released().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = released => {}
                () = sleep(nap) => {}
                // The caller can retry on another instance rather than be cut off at the grace's end.
                _ = draining.wait_for(|draining| *draining) => return Ok(Outcome::NotAcquired { holder_ttl }),
            }
        }
    }

    fn pending(&self, ask: &Ask) -> Pending {
        Pending {
            store: self.store.clone(),
            keys: ask.keys.clone(),
            token: if ask.request_key.is_empty() {
                ask.token.clone()
            } else {
                String::new()
            },
            ticket: ask.ticket.clone(),
            operation_timeout: self.settings.operation_timeout,
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

fn bounded_text<'a>(field: &str, text: &'a str, max: usize) -> Result<&'a str, Error> {
    if text.len() > max {
        return Err(Error::invalid(
            field,
            format!("is {} bytes, above the limit of {max}", text.len()),
        ));
    }
    Ok(text)
}

/// The permits asked for: unset means 1, a lock.
fn permits(asked: u32) -> Result<u32, Error> {
    match asked {
        0 => Ok(1),
        permits if permits > MAX_PERMITS => Err(Error::invalid(
            "permits",
            format!("{permits} is above the limit of {MAX_PERMITS}"),
        )),
        permits => Ok(permits),
    }
}

/// When a lease of `ttl` whose grant was sent at `sent` ends at the latest
/// (Redis counts it from a moment after the send), on the system clock.
fn expires_at(sent: Instant, ttl: Duration) -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now() - sent.elapsed() + ttl)
}

fn not_acquired(holder_ttl: Duration) -> AcquireResponse {
    AcquireResponse {
        acquired: false,
        ttl: Some(duration_to_proto(holder_ttl)),
        ..AcquireResponse::default()
    }
}

/// The answer to a Release or Extend whose token does not hold the lock.
fn lapsed(lapse: Lapse) -> Error {
    match lapse {
        Lapse::Taken => Error::FailedPrecondition(
            Reason::LeaseLost,
            "the lease was lost: another token holds the lock now (this lease ran out and the lock was \
             granted again, or the token is not this lock's)"
                .to_owned(),
        ),
        Lapse::Free => Error::FailedPrecondition(
            Reason::LockNotHeld,
            "the lock is not held: this lease ran out or was already released, and nobody holds it now".to_owned(),
        ),
    }
}

/// The stream of one Hold.
type HoldStream = Pin<Box<dyn Stream<Item = Result<HoldResponse, Status>> + Send>>;

fn hold_event(event: hold_response::Event) -> Result<HoldResponse, Status> {
    Ok(HoldResponse { event: Some(event) })
}

/// The margin a Hold keeps before its lease could end: the caller's, or a
/// tenth of the lease; at most half of it.
fn safety_margin(asked: Option<&prost_types::Duration>, lease: Duration) -> Result<Duration, Error> {
    let margin = match asked {
        None => return Ok(lease / 10),
        // Zero would send `lost` at the very moment the lease could end: too late.
        Some(margin) => request::positive_duration("safety_margin", margin)?,
    };
    if margin > lease / 2 {
        return Err(Error::invalid(
            "safety_margin",
            format!(
                "{} is more than half the ttl ({})",
                humantime::format_duration(margin),
                humantime::format_duration(lease)
            ),
        ));
    }
    Ok(margin)
}

#[tonic::async_trait]
impl LockService for LockApi {
    async fn acquire(&self, request: Request<AcquireRequest>) -> Result<Response<AcquireResponse>, Status> {
        let caller_left = caller_budget(request.metadata())?;
        let caller = Caller::of(&request)?;
        // The holder's and the lock's state records.
        caller.charge(request.get_ref(), 2)?;
        let ask = self.ask(caller, request.get_ref(), caller_left)?;
        let revoked = caller.revoked();
        let mut pending = self.pending(&ask);
        // A client whose access is taken back while it waits is answered at once,
        // and leaves the queue.
        let outcome = tokio::select! {
            outcome = self.take(&ask, &mut pending) => outcome?,
            status = revoked => return Err(status),
        };
        match outcome {
            Outcome::Granted { grant, sent } => {
                pending.handed_over();
                Ok(Response::new(AcquireResponse {
                    acquired: true,
                    token: grant.token,
                    fencing_token: grant.fencing_token,
                    expires_at: Some(expires_at(sent, grant.ttl)),
                    ttl: Some(duration_to_proto(grant.ttl)),
                }))
            }
            Outcome::NotAcquired { holder_ttl } => Ok(Response::new(not_acquired(holder_ttl))),
        }
    }

    async fn release(&self, request: Request<ReleaseRequest>) -> Result<Response<ReleaseResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let keys = space.lock(self.limits.key("name", &request.name)?);
        let token = self.token(&request.token)?;
        if let Err(lapse) = self.store.release(&keys, token, "", deadline).await? {
            self.meter.record(|metrics| metrics.lock_leases_lost.inc());
            return Err(lapsed(lapse).into());
        }
        Ok(Response::new(ReleaseResponse {}))
    }

    async fn extend(&self, request: Request<ExtendRequest>) -> Result<Response<ExtendResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let keys = space.lock(self.limits.key("name", &request.name)?);
        let token = self.token(&request.token)?;
        let ttl = self.lease(request.ttl.as_ref())?;
        let sent = Instant::now();
        let fencing_token = match self.store.extend(&keys, token, ttl, deadline).await? {
            Renewal::Extended(fencing_token) => fencing_token,
            Renewal::Lapsed(lapse) => {
                self.meter.record(|metrics| metrics.lock_leases_lost.inc());
                return Err(lapsed(lapse).into());
            }
            Renewal::Paused { left, cause } => {
                record_pause(cause);
                return Err(Error::LocksPaused(left).into());
            }
        };
        let lease = Duration::from_millis(ttl.millis());
        Ok(Response::new(ExtendResponse {
            expires_at: Some(expires_at(sent, lease)),
            ttl: Some(duration_to_proto(lease)),
            fencing_token,
        }))
    }

    type HoldStream = HoldStream;

    async fn hold(&self, request: Request<HoldRequest>) -> Result<Response<HoldStream>, Status> {
        let caller = Caller::of(&request)?.clone();
        caller.charge(request.get_ref(), 2)?;
        let request = request.into_inner();
        let acquire = AcquireRequest {
            name: request.name,
            ttl: request.ttl,
            wait_timeout: request.wait_timeout,
            owner: request.owner,
            request_id: String::new(),
            permits: request.permits,
        };
        // A Hold's wait is bounded by its wait_timeout alone: its stream outlives any deadline.
        let ask = self.ask(&caller, &acquire, None)?;
        let mut revoked = Box::pin(caller.revoked());
        let lease = Duration::from_millis(ask.ttl.millis());
        let margin = safety_margin(request.safety_margin.as_ref(), lease)?;
        // Room for Acquired, a few Renewed a slow reader has not taken yet, and
        // always for Lost and a final status (see the keeper).
        let (events, stream) = mpsc::channel(keeper::EVENTS);
        // The stream opens at once; the lock is taken (waiting as Acquire does) behind it.
        let api = self.clone();
        tokio::spawn(async move {
            let mut pending = api.pending(&ask);
            // A caller that goes away while it waits leaves the queue at once:
            // dropping the attempt drops `pending`, which gives its place up.
            let outcome = tokio::select! {
                outcome = api.take(&ask, &mut pending) => outcome.map_err(Status::from),
                () = events.closed() => return,
                status = &mut revoked => Err(status),
            };
            let (grant, sent) = match outcome {
                Ok(Outcome::Granted { grant, sent }) => (grant, sent),
                Ok(Outcome::NotAcquired { holder_ttl }) => {
                    let not_acquired = NotAcquired {
                        ttl: Some(duration_to_proto(holder_ttl)),
                    };
                    let _ = events
                        .send(hold_event(hold_response::Event::NotAcquired(not_acquired)))
                        .await;
                    return;
                }
                Err(status) => {
                    let _ = events.send(Err(status)).await;
                    return;
                }
            };
            // From here the keeper answers for the grant, and releases it when done.
            pending.handed_over();
            let certain_for = (sent + grant.ttl)
                .checked_sub(margin)
                .map_or(Duration::ZERO, |until| until.saturating_duration_since(Instant::now()));
            let acquired = Acquired {
                fencing_token: grant.fencing_token,
                ttl: Some(duration_to_proto(lease)),
                certain_for: Some(duration_to_proto(certain_for)),
            };
            let keeper = Keeper {
                store: api.store.clone(),
                keys: ask.keys,
                token: grant.token,
                ttl: ask.ttl,
                margin,
                operation_timeout: api.settings.operation_timeout,
                events,
                draining: api.draining.clone(),
                revoked,
                meter: api.meter.clone(),
            };
            // A caller gone before the grant still gets the lock released by the keeper.
            let _ = keeper
                .events
                .send(hold_event(hold_response::Event::Acquired(acquired)))
                .await;
            keeper.keep(sent, grant.ttl).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            stream,
        ))))
    }

    async fn describe(&self, request: Request<DescribeRequest>) -> Result<Response<DescribeResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let keys = space.lock(self.limits.key("name", &request.name)?);
        let holder = self.store.describe(&keys, deadline).await?;
        let now = Instant::now();
        Ok(Response::new(DescribeResponse {
            held: holder.holders > 0,
            owner: holder.owner,
            ttl: holder.ttl.map(duration_to_proto),
            expires_at: holder.ttl.map(|ttl| expires_at(now, ttl)),
            fencing_token: holder.fencing_token,
            holders: holder.holders,
            waiting: holder.waiting,
            permits: holder.permits,
        }))
    }
}
