//! `cachelock.lock.v1.LockService`: leases with fencing tokens, server-side
//! waiting woken by release notices, and idempotent acquire.

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

pub use store::{Attempt, Grant, Holder, Lapse, LockStore, QUEUE_PLACE_LIFE, scripts};

use crate::{
    admission::RefusalLog,
    auth::Caller,
    config::Config,
    error::{Error, Reason},
    ids::random_token,
    notices::{Notices, Registration, Waiting},
    pb::lock::{
        AcquireRequest, AcquireResponse, Acquired, DescribeRequest, DescribeResponse, ExtendRequest, ExtendResponse,
        HoldRequest, HoldResponse, Lost, NotAcquired, ReleaseRequest, ReleaseResponse, hold_response,
        lock_service_server::LockService,
    },
    redis::{KeySpace, epoch::DataEpoch},
    request::{self, Limits, Ttl, caller_budget, deadline, duration_to_proto},
    telemetry::Meter,
};

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

static WAITERS_FULL: RefusalLog = RefusalLog::new(
    "Acquires refused with RESOURCE_EXHAUSTED: --lock-max-waiters or --lock-max-waiters-per-name reached",
);

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
    epoch: DataEpoch,
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

impl LockApi {
    /// Handlers over `store`, woken by `notices`, with
    /// grants paused while `epoch` says Redis recently lost its data. Waiting
    /// Acquires end (not acquired) once `draining` turns true, so a shutdown
    /// does not wait for them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: LockStore,
        meter: Meter,
        notices: Notices,
        epoch: DataEpoch,
        limits: Limits,
        settings: LockSettings,
        draining: watch::Receiver<bool>,
    ) -> LockApi {
        LockApi {
            store,
            meter,
            notices,
            epoch,
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

    /// Waits out a pause of grants after Redis lost its data, if the wait covers it.
    ///
    /// # Errors
    /// [`Error::LocksPaused`] when it does not.
    async fn sit_out_pause(&self, plan: &WaitPlan) -> Result<bool, Error> {
        let Some(left) = self.epoch.paused_for() else {
            return Ok(true);
        };
        if !plan.covers(left) {
            return Err(Error::LocksPaused(left));
        }
        let mut draining = self.draining.clone();
        tokio::select! {
            () = sleep(left) => Ok(true),
            _ = draining.wait_for(|draining| *draining) => Ok(false),
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

/// A waiter's place in a lock's queue: taken out of the queue when the Acquire
/// ends without the lock, however it ends (the wait ran out, an error, the
/// caller went away), so that the next in line need not wait for it to lapse.
struct QueuePlace {
    store: LockStore,
    space: KeySpace,
    name: String,
    ticket: String,
    operation_timeout: Duration,
    granted: bool,
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        let space = self.space.clone();
        let name = std::mem::take(&mut self.name);
        let ticket = std::mem::take(&mut self.ticket);
        let deadline = Instant::now() + self.operation_timeout;
        runtime.spawn(async move {
            // Best effort: if it fails, the place lapses by itself.
            if let Err(error) = store.leave(&space, &name, &ticket, deadline).await {
                tracing::debug!(%error, "could not leave a lock's queue; the place will lapse");
            }
        });
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

fn expires_at(ttl: Duration) -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now() + ttl)
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

/// What keeps one Hold's lease: renews it every third of the lease while the
/// stream is open, and releases it when the stream closes or the server drains.
struct Keeper {
    store: LockStore,
    space: KeySpace,
    name: String,
    token: String,
    ttl: Ttl,
    operation_timeout: Duration,
    events: mpsc::Sender<Result<HoldResponse, Status>>,
    draining: watch::Receiver<bool>,
    meter: Meter,
}

impl Keeper {
    async fn keep(self) {
        let lease = Duration::from_millis(self.ttl.millis());
        // The lease is certain until then: counted from before the last renewal was sent.
        let mut certain_until = Instant::now() + lease;
        loop {
            let mut draining = self.draining.clone();
            let shutting_down = tokio::select! {
                // The caller closed the stream, or its connection is gone.
                () = self.events.closed() => break,
                _ = draining.wait_for(|draining| *draining) => true,
                () = sleep(lease / 3) => false,
            };
            if shutting_down {
                self.lost("SHUTTING_DOWN").await;
                break;
            }
            let sent = Instant::now();
            let deadline = sent + self.operation_timeout.min(lease / 3);
            match self
                .store
                .extend(&self.space, &self.name, &self.token, self.ttl, deadline)
                .await
            {
                Ok(Ok(_)) => certain_until = sent + lease,
                Ok(Err(lapse)) => {
                    self.meter.record(|metrics| metrics.lock_leases_lost.inc());
                    self.lost(match lapse {
                        Lapse::Taken => "LEASE_LOST",
                        Lapse::Free => "LOCK_NOT_HELD",
                    })
                    .await;
                    return;
                }
                // Tried again at the next third, while the lease is certain.
                Err(_) if Instant::now() < certain_until => {}
                Err(_) => {
                    self.meter.record(|metrics| metrics.lock_leases_lost.inc());
                    self.lost("REDIS_UNAVAILABLE").await;
                    return;
                }
            }
        }
        let deadline = Instant::now() + self.operation_timeout;
        // Best effort: if it fails, the lease runs out by itself.
        let _ = self.store.release(&self.space, &self.name, &self.token, deadline).await;
    }

    async fn lost(&self, reason: &str) {
        let lost = hold_event(hold_response::Event::Lost(Lost {
            reason: reason.to_owned(),
        }));
        let _ = self.events.send(lost).await;
    }
}

#[tonic::async_trait]
impl LockService for LockApi {
    async fn acquire(&self, request: Request<AcquireRequest>) -> Result<Response<AcquireResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let space = Caller::in_extensions(&extensions)?.space.clone();
        let caller_left = caller_budget(&metadata)?;
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
        let permits = permits(request.permits)?;
        let token = random_token()?;
        // A caller that may wait queues at its first attempt, under a ticket of its own.
        let ticket = if wait.is_zero() { String::new() } else { random_token()? };
        let mut place = (!wait.is_zero()).then(|| QueuePlace {
            store: self.store.clone(),
            space: space.clone(),
            name: name.to_owned(),
            ticket: ticket.clone(),
            operation_timeout: self.settings.operation_timeout,
            granted: false,
        });
        let grant = store::Request {
            name,
            token: &token,
            ttl,
            owner,
            request_id,
            permits,
            ticket: &ticket,
        };
        let plan = WaitPlan::new(wait, caller_left, self.settings.operation_timeout);
        if !self.sit_out_pause(&plan).await? {
            return Ok(Response::new(not_acquired(Duration::ZERO)));
        }

        let mut holder_ttl = Duration::ZERO;
        let mut registration: Option<Registration> = None;
        // Counted when the Acquire ends, however it ends, if it waited.
        let waited = WaitTimer::new(&self.meter);
        loop {
            if let Some(registration) = registration.as_mut() {
                registration.mark_seen();
            }
            let Some(deadline) = plan.attempt_deadline() else {
                // Only after a first attempt: the caller's deadline ended the wait.
                return Ok(Response::new(not_acquired(holder_ttl)));
            };
            holder_ttl = match self.store.try_acquire(&space, grant, deadline).await? {
                Attempt::Granted(Grant {
                    token,
                    fencing_token,
                    ttl,
                }) => {
                    if let Some(place) = place.as_mut() {
                        place.granted = true;
                    }
                    self.meter.record(|metrics| metrics.lock_grants.inc());
                    return Ok(Response::new(AcquireResponse {
                        acquired: true,
                        token,
                        fencing_token,
                        expires_at: Some(expires_at(ttl)),
                        ttl: Some(duration_to_proto(ttl)),
                    }));
                }
                Attempt::Held { ttl } => ttl,
            };
            // Woken by a release that names this waiter; otherwise it attempts
            // again when the first lease ends, or to renew its place.
            let until_next_chance = if holder_ttl.is_zero() {
                QUEUE_RENEW
            } else {
                holder_ttl.min(QUEUE_RENEW)
            };
            let Some(mut nap) = plan.pause(until_next_chance) else {
                return Ok(Response::new(not_acquired(holder_ttl)));
            };
            let Some(registration) = registration.as_mut() else {
                // The lock is held and the caller waits: only now does it take a
                // waiter's place here. SAFETY (no lost wake-up): the next attempt
                // runs after registering, so a release between the first attempt
                // and the registration is seen by that attempt.
                registration = Some(self.notices.register(space.lock_released(name), ticket.clone())?);
                waited.start();
                continue;
            };
            if !self.notices.is_listening() {
                nap = nap.min(UNHEARD_RECHECK);
            }
            let mut draining = self.draining.clone();
            tokio::select! {
                () = registration.released() => {}
                () = sleep(nap) => {}
                // The caller can retry on another instance rather than be cut off at the grace's end.
                _ = draining.wait_for(|draining| *draining) => return Ok(Response::new(not_acquired(holder_ttl))),
            }
        }
    }

    async fn release(&self, request: Request<ReleaseRequest>) -> Result<Response<ReleaseResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let name = self.limits.key("name", &request.name)?;
        let token = self.token(&request.token)?;
        if let Err(lapse) = self.store.release(&space, name, token, deadline).await? {
            self.meter.record(|metrics| metrics.lock_leases_lost.inc());
            return Err(lapsed(lapse).into());
        }
        Ok(Response::new(ReleaseResponse {}))
    }

    async fn extend(&self, request: Request<ExtendRequest>) -> Result<Response<ExtendResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let name = self.limits.key("name", &request.name)?;
        let token = self.token(&request.token)?;
        let ttl = self.lease(request.ttl.as_ref())?;
        let fencing_token = match self.store.extend(&space, name, token, ttl, deadline).await? {
            Ok(fencing_token) => fencing_token,
            Err(lapse) => {
                self.meter.record(|metrics| metrics.lock_leases_lost.inc());
                return Err(lapsed(lapse).into());
            }
        };
        let lease = Duration::from_millis(ttl.millis());
        Ok(Response::new(ExtendResponse {
            expires_at: Some(expires_at(lease)),
            ttl: Some(duration_to_proto(lease)),
            fencing_token,
        }))
    }

    type HoldStream = HoldStream;

    async fn hold(&self, request: Request<HoldRequest>) -> Result<Response<HoldStream>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let space = Caller::in_extensions(&extensions)?.space.clone();
        let name = self.limits.key("name", &request.name)?.to_owned();
        let ttl = self.lease(request.ttl.as_ref())?;
        let acquire = AcquireRequest {
            name: request.name,
            ttl: request.ttl,
            wait_timeout: request.wait_timeout,
            owner: request.owner,
            request_id: String::new(),
            permits: request.permits,
        };
        let (events, stream) = mpsc::channel(2);
        // The stream opens at once; the lock is taken (waiting as Acquire does) behind it.
        let api = self.clone();
        tokio::spawn(async move {
            let granted = match api.acquire(Request::from_parts(metadata, extensions, acquire)).await {
                Ok(granted) => granted.into_inner(),
                Err(status) => {
                    let _ = events.send(Err(status)).await;
                    return;
                }
            };
            if !granted.acquired {
                let not_acquired = NotAcquired { ttl: granted.ttl };
                let _ = events
                    .send(hold_event(hold_response::Event::NotAcquired(not_acquired)))
                    .await;
                return;
            }
            let acquired = Acquired {
                fencing_token: granted.fencing_token,
                ttl: granted.ttl,
            };
            let keeper = Keeper {
                store: api.store.clone(),
                space,
                name,
                token: granted.token,
                ttl,
                operation_timeout: api.settings.operation_timeout,
                events,
                draining: api.draining.clone(),
                meter: api.meter.clone(),
            };
            // A caller gone before the grant still gets the lock released by the keeper.
            let _ = keeper
                .events
                .send(hold_event(hold_response::Event::Acquired(acquired)))
                .await;
            keeper.keep().await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            stream,
        ))))
    }

    async fn describe(&self, request: Request<DescribeRequest>) -> Result<Response<DescribeResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let name = self.limits.key("name", &request.name)?;
        let holder = self.store.describe(&space, name, deadline).await?;
        Ok(Response::new(DescribeResponse {
            held: holder.holders > 0,
            owner: holder.owner,
            ttl: holder.ttl.map(duration_to_proto),
            expires_at: holder.ttl.map(expires_at),
            fencing_token: holder.fencing_token,
            holders: holder.holders,
            waiting: holder.waiting,
            permits: holder.permits,
        }))
    }
}
