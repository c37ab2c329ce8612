//! `cachelock.lock.v1.LockService`: leases with fencing tokens, server-side
//! waiting woken by release notices, idempotent acquire, and Hold streams whose
//! holder hears of a loss before its lease could have ended.
//!
//! Every grant and extension is decided by `lock_grant.lua` (see [`store`]);
//! nothing here grants: this module validates, waits, and keeps Holds.

mod acquire;
mod election;
mod grant;
mod keeper;
mod store;

use std::{
    pin::Pin,
    time::{Duration, SystemTime},
};

use futures_util::Stream;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tonic::{Request, Response, Status};

pub use election::ElectionApi;
pub use grant::{GrantRules, Lapse, Renewal, request_key};
pub use store::{LockStore, scripts};

use crate::{
    auth::Caller,
    config::Config,
    context::Context,
    error::{Error, Reason},
    ids::random_token,
    notices::{Notices, Waiting},
    pb::lock::{
        AcquireRequest, AcquireResponse, Acquired, DescribeRequest, DescribeResponse, ExtendRequest, ExtendResponse,
        HoldRequest, HoldResponse, NotAcquired, ReleaseRequest, ReleaseResponse, hold_response,
        lock_service_server::LockService,
    },
    request::{self, Limits, Ttl, caller_budget, deadline},
    telemetry::{Meter, Refusal, ThrottledLog},
    time::duration_to_proto,
};
use acquire::{Acquirer, Ask, Outcome, WaitPlan, record_pause};
use keeper::{Keeper, hold_event};

/// Longest owner text.
const MAX_OWNER_BYTES: usize = 256;
/// Longest request id.
const MAX_REQUEST_ID_BYTES: usize = 128;
/// Longest token a caller can hand back (ours are 22 characters).
const MAX_TOKEN_BYTES: usize = 64;
/// Most permits one name can have.
const MAX_PERMITS: u32 = 10_000;

/// Acquires (and Holds) waiting for a lock, for [`Notices`].
pub static WAITING: Waiting = Waiting {
    calls: "Acquires",
    what: "locks",
    what_one: "this lock",
    flag: "lock-max-waiters",
    flag_per_channel: "lock-max-waiters-per-name",
    kind: "lock",
    refusal: Refusal::LockWaiters,
    log: &WAITERS_FULL,
};

static WAITERS_FULL: ThrottledLog = ThrottledLog::new(
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
    acquirer: Acquirer,
    meter: Meter,
    limits: Limits,
    settings: LockSettings,
    draining: watch::Receiver<bool>,
}

impl LockApi {
    /// Handlers over the context's Redis, granting by `rules`, woken by
    /// `notices`. Waiting Acquires end (not acquired) once the server drains, so
    /// a shutdown does not wait for them.
    pub fn new(context: &Context, rules: GrantRules, settings: LockSettings, notices: Notices) -> LockApi {
        let store = LockStore::new(context.redis.clone(), rules);
        LockApi {
            acquirer: Acquirer::new(
                store.clone(),
                context.meter.clone(),
                notices,
                context.draining.clone(),
                settings.operation_timeout,
            ),
            store,
            meter: context.meter.clone(),
            limits: context.limits.clone(),
            settings,
            draining: context.draining.clone(),
        }
    }

    /// Takes the lock of `ask` behind a stream of Hold events, as Hold does,
    /// and keeps it until the receiver is dropped or the lease is lost; the
    /// task ends once the lock is released. Campaign runs on it too.
    fn start_holding(
        &self,
        caller: &Caller,
        ask: Ask,
        margin: Duration,
    ) -> (mpsc::Receiver<Result<HoldResponse, Status>>, JoinHandle<()>) {
        let mut revoked = Box::pin(caller.revoked());
        let lease = Duration::from_millis(ask.ttl.millis());
        // Room for Acquired, a few Renewed a slow reader has not taken yet, and
        // always for Lost and a final status (see the keeper).
        let (events, stream) = mpsc::channel(keeper::EVENTS);
        // The stream opens at once; the lock is taken (waiting as Acquire does) behind it.
        let api = self.clone();
        let task = tokio::spawn(async move {
            let mut pending = api.acquirer.pending(&ask);
            // A caller that goes away while it waits leaves the queue at once:
            // dropping the attempt drops `pending`, which gives its place up.
            let outcome = tokio::select! {
                outcome = api.acquirer.take(&ask, &mut pending) => outcome.map_err(Status::from),
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
        (stream, task)
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
        let mut pending = self.acquirer.pending(&ask);
        // A client whose access is taken back while it waits is answered at once,
        // and leaves the queue.
        let outcome = tokio::select! {
            outcome = self.acquirer.take(&ask, &mut pending) => outcome?,
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
        let lease = Duration::from_millis(ask.ttl.millis());
        let margin = safety_margin(request.safety_margin.as_ref(), lease)?;
        let (stream, _) = self.start_holding(&caller, ask, margin);
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
