//! `cachelock.cache.v1.CacheService`: validates each request, runs it through
//! [`CacheStore`], and maps the answer.

mod entry;
mod flight;
mod store;

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tonic::{Request, Response, Status};

pub use entry::{Condition, Lease, LeaseAsk, Leased, NewEntry, SetOptions, Stored, Written};
pub use store::{CacheStore, FencedAnswer, FencedWrite, scripts};

use crate::{
    auth::Caller,
    config::Config,
    context::Context,
    error::{Error, Reason},
    fence::{self, Fenced},
    ids::random_token,
    notices::{Notices, Registration, Waiting, Woken},
    pb::cache::{
        DeleteRequest, DeleteResponse, Entry, ExpireRequest, ExpireResponse, GetManyRequest, GetManyResponse,
        GetOrLeaseRequest, GetOrLeaseResponse, GetRequest, GetResponse, IncrementRequest, IncrementResponse,
        LeaseOutcome, SetCondition, SetManyRequest, SetManyResponse, SetRequest, SetResponse, TakeRequest,
        TakeResponse, cache_service_server::CacheService,
    },
    redis::KeySpace,
    request::{self, Limits, Ttl, caller_budget, cross_slot, deadline},
    telemetry::{Meter, Metrics, Refusal, ThrottledLog},
    time::{duration_to_proto, ttl_from_millis},
};

/// Protobuf framing of one GetMany entry besides its key and value: tags,
/// lengths, `found` and the ttl.
const ENTRY_FRAMING_BYTES: usize = 32;

/// A fill lease's ttl when the request gives none.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Longest lease token a caller can hand back (ours are 22 characters).
const MAX_LEASE_TOKEN_BYTES: usize = 64;

/// GetOrLease calls waiting for a fill, for [`Notices`].
pub static WAITING: Waiting = Waiting {
    calls: "GetOrLease calls",
    what: "fills",
    what_one: "fills",
    flag: "cache-max-fill-waiters",
    flag_per_channel: "cache-max-fill-waiters",
    kind: "cache_fill",
    refusal: Refusal::CacheFillWaiters,
    log: &FILL_WAITERS_FULL,
};

static FILL_WAITERS_FULL: ThrottledLog =
    ThrottledLog::new("GetOrLease calls refused with RESOURCE_EXHAUSTED: --cache-max-fill-waiters reached");

/// The cache's settings, from the configuration.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Longest wait for Redis in one call.
    pub operation_timeout: Duration,
    /// Longest GetOrLease wait for a fill.
    pub max_fill_wait: Duration,
}

impl From<&Config> for CacheSettings {
    fn from(config: &Config) -> CacheSettings {
        CacheSettings {
            operation_timeout: config.operation_timeout,
            max_fill_wait: config.cache_max_fill_wait,
        }
    }
}

/// The gRPC handlers of the cache.
pub struct CacheApi {
    store: CacheStore,
    flights: flight::Flights<Option<Stored>>,
    fills: Notices,
    next_waiter: AtomicU64,
    meter: Meter,
    limits: Limits,
    settings: CacheSettings,
    draining: watch::Receiver<bool>,
}

impl CacheApi {
    /// Handlers over the context's Redis; GetOrLease waiters are woken by
    /// `fills` and end (MISS) once the server drains.
    pub fn new(context: &Context, settings: CacheSettings, fills: Notices) -> CacheApi {
        CacheApi {
            store: CacheStore::new(context.redis.clone()),
            flights: flight::Flights::new(),
            fills,
            next_waiter: AtomicU64::new(0),
            meter: context.meter.clone(),
            limits: context.limits.clone(),
            settings,
            draining: context.draining.clone(),
        }
    }

    /// Counts a GetOrLease answer.
    fn leased(&self, outcome: &'static str) {
        self.meter
            .record(|metrics| Metrics::count(&metrics.cache_lease_answers, outcome));
    }

    /// Waits for the key's fill up to `wait_ends` (woken by the fill, or when
    /// the filler's lease ends), then answers what GetOrLease finds.
    async fn get_or_lease_waiting(
        &self,
        space: &KeySpace,
        ask: LeaseAsk<'_>,
        wait_ends: Instant,
        caller_deadline: Option<Instant>,
    ) -> Result<GetOrLeaseResponse, Error> {
        let mut registration: Option<Registration> = None;
        loop {
            if let Some(registration) = registration.as_mut() {
                registration.mark_seen();
            }
            let now = Instant::now();
            let attempt_ends = now + self.settings.operation_timeout;
            let deadline = caller_deadline.map_or(attempt_ends, |caller| caller.min(attempt_ends));
            let found = self.store.get_or_lease(space, ask, deadline).await?;
            let lease_left = match found {
                Leased::Filling { lease_left } => lease_left,
                found => {
                    if registration.is_some() {
                        self.leased("waited");
                    }
                    return Ok(self.answer(found));
                }
            };
            let wait_left = wait_ends.saturating_duration_since(Instant::now());
            if wait_left.is_zero() {
                self.leased("miss");
                return Ok(GetOrLeaseResponse {
                    outcome: LeaseOutcome::Miss.into(),
                    lease_ttl: Some(duration_to_proto(lease_left)),
                    ..GetOrLeaseResponse::default()
                });
            }
            let Some(registration) = registration.as_mut() else {
                // Another caller fills it and this one waits: only now does it
                // register. SAFETY (no lost wake-up): the next attempt runs after
                // registering, so a fill before the registration is seen by it.
                let ticket = self.next_waiter.fetch_add(1, Ordering::Relaxed).to_string();
                registration = Some(self.fills.register(space.cache_filled(ask.key), ticket)?);
                continue;
            };
            // Woken by the fill; otherwise looks again when the filler's lease ends.
            let nap = wait_left.min(lease_left);
            if self.fills.wait(Some(registration), nap, &self.draining).await == Woken::Draining {
                self.leased("miss");
                return Ok(GetOrLeaseResponse {
                    outcome: LeaseOutcome::Miss.into(),
                    ..GetOrLeaseResponse::default()
                });
            }
        }
    }

    /// The response for what GetOrLease found, counted.
    fn answer(&self, found: Leased) -> GetOrLeaseResponse {
        let with_value =
            |outcome: LeaseOutcome, stored: Option<Stored>, lease: Option<Lease>, lease_left: Option<Duration>| {
                let (found, value, ttl) = match stored {
                    Some(Stored { value, ttl_millis }) => (true, value, ttl_from_millis(ttl_millis)),
                    None => (false, Vec::new(), None),
                };
                let (lease_token, lease_ttl) = match lease {
                    Some(Lease { token, ttl }) => (token, Some(duration_to_proto(ttl))),
                    None => (String::new(), lease_left.map(duration_to_proto)),
                };
                GetOrLeaseResponse {
                    outcome: outcome.into(),
                    found,
                    value,
                    ttl,
                    lease_token,
                    lease_ttl,
                }
            };
        match found {
            Leased::Fresh { stored, lease } => {
                self.leased(if lease.is_some() { "refresh" } else { "hit" });
                with_value(LeaseOutcome::Hit, Some(stored), lease, None)
            }
            Leased::Stale { stored, lease_left } => {
                self.leased("stale");
                with_value(LeaseOutcome::Stale, Some(stored), None, Some(lease_left))
            }
            Leased::Lease { lease, stale } => {
                self.leased("lease");
                with_value(LeaseOutcome::Lease, stale, Some(lease), None)
            }
            Leased::Filling { lease_left } => {
                self.leased("miss");
                with_value(LeaseOutcome::Miss, None, None, Some(lease_left))
            }
        }
    }

    /// Ends the sharing of Gets in flight on `keys`, after a write of them (done,
    /// failed or maybe applied): no later Get may be answered from before it.
    fn written<'k>(&self, space: &KeySpace, keys: impl IntoIterator<Item = &'k str>) {
        for key in keys {
            self.flights.forget(&space.cache(key));
        }
    }

    /// Counts a read as a hit or a miss.
    fn read(&self, found: bool) {
        self.meter
            .record(|metrics| Metrics::count(&metrics.cache_reads, if found { "hit" } else { "miss" }));
    }

    fn keys<'a>(&self, field: &str, keys: &'a [String]) -> Result<&'a [String], Status> {
        self.limits.batch(field, keys.len())?;
        for (i, key) in keys.iter().enumerate() {
            self.limits.key(&format!("{field}[{i}]"), key)?;
        }
        Ok(keys)
    }
}

#[tonic::async_trait]
impl CacheService for CacheApi {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let key = self.limits.key("key", &request.key)?;
        let redis_key = space.cache(key);
        let read = self.store.get(&redis_key, deadline);
        let joined = || self.meter.record(|metrics| metrics.cache_shared_reads.inc());
        let response = match self.flights.read(&redis_key, deadline, read, joined).await? {
            Some(Stored { value, ttl_millis }) => GetResponse {
                found: true,
                value,
                ttl: ttl_from_millis(ttl_millis),
            },
            None => GetResponse::default(),
        };
        self.read(response.found);
        Ok(Response::new(response))
    }

    async fn get_or_lease(&self, request: Request<GetOrLeaseRequest>) -> Result<Response<GetOrLeaseResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = Caller::in_extensions(&extensions)?;
        // The fill record a lease writes.
        caller.charge(&request, 1)?;
        let space = caller.space.clone();
        let revoked = caller.revoked();
        let caller_left = caller_budget(&metadata)?;
        let key = self.limits.key("key", &request.key)?;
        let lease_ttl = match request.lease_ttl.as_ref() {
            None => Ttl::from_duration(DEFAULT_LEASE_TTL.min(self.limits.max_ttl)),
            Some(lease_ttl) => self.limits.required_ttl("lease_ttl", Some(lease_ttl))?,
        };
        let max_wait = self.settings.max_fill_wait;
        let wait = request::wait("wait", request.wait.as_ref(), max_wait, max_wait, "cache-max-fill-wait")?;
        let refresh = request.refresh_ahead;
        if !(0.0..1.0).contains(&refresh) {
            return Err(Error::invalid("refresh_ahead", "must be at least 0 and below 1").into());
        }
        // In millionths, for the script's integer arithmetic; below 1, so it fits.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let refresh_millionths = (refresh * 1e6) as u32;
        let token = random_token()?;
        let now = Instant::now();
        // A wait cut short by the caller's deadline ends early enough to leave the
        // last attempt a tenth of the caller's time.
        let wait_ends = now + caller_left.map_or(wait, |left| wait.min(left - left / 10));
        let caller_deadline = caller_left.map(|left| now + left);
        let ask = LeaseAsk {
            key,
            token: &token,
            lease_ttl,
            refresh_millionths,
        };
        // A client whose access is taken back while it waits is answered at once.
        let response = tokio::select! {
            response = self.get_or_lease_waiting(&space, ask, wait_ends, caller_deadline) => response?,
            status = revoked => return Err(status),
        };
        if response.found {
            self.read(true);
        }
        Ok(Response::new(response))
    }

    async fn get_many(&self, request: Request<GetManyRequest>) -> Result<Response<GetManyResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let keys = self.keys("keys", &request.keys)?;
        if keys.is_empty() {
            return Ok(Response::new(GetManyResponse::default()));
        }
        // What the response holds besides the values: each key, and protobuf framing.
        let framing: usize = keys.iter().map(|key| key.len() + ENTRY_FRAMING_BYTES).sum::<usize>() + 64;
        let value_budget = self.limits.max_response_bytes.saturating_sub(framing);
        let found = match self
            .store
            .get_many(&space, keys, value_budget, self.limits.max_value_bytes, deadline)
            .await?
        {
            Ok(found) => found,
            Err(total) => {
                return Err(Error::Exhausted {
                    reason: Reason::ResponseTooLarge,
                    message: format!(
                        "the values of these {} keys total {total} bytes: with the keys, above the response \
                         limit of {} bytes (--max-response-bytes); ask for fewer keys at once",
                        keys.len(),
                        self.limits.max_response_bytes
                    ),
                    retry_after: None,
                }
                .into());
            }
        };
        let entries: Vec<Entry> = request
            .keys
            .into_iter()
            .zip(found)
            .map(|(key, stored)| match stored {
                Some(Stored { value, ttl_millis }) => Entry {
                    key,
                    found: true,
                    value,
                    ttl: ttl_from_millis(ttl_millis),
                },
                None => Entry {
                    key,
                    ..Entry::default()
                },
            })
            .collect();
        for entry in &entries {
            self.read(entry.found);
        }
        Ok(Response::new(GetManyResponse { entries }))
    }

    async fn set(&self, request: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::writing(&request, 1)?;
        let request = request.into_inner();
        let key = self.limits.key("key", &request.key)?;
        self.limits.value("value", &request.value)?;
        let ttl = self.limits.ttl_or_default("ttl", request.ttl.as_ref())?;
        let condition = match SetCondition::try_from(request.condition) {
            Ok(SetCondition::Unspecified | SetCondition::Always) => Condition::Always,
            Ok(SetCondition::IfAbsent) => Condition::IfAbsent,
            Ok(SetCondition::IfPresent) => Condition::IfPresent,
            Err(_) => {
                let reason = format!("{} is not a SetCondition", request.condition);
                return Err(Error::invalid("condition", reason).into());
            }
        };
        let lease_token = request.lease_token.as_str();
        if lease_token.len() > MAX_LEASE_TOKEN_BYTES {
            return Err(Error::invalid("lease_token", "is not a lease this service issued").into());
        }
        if !lease_token.is_empty() && condition != Condition::Always {
            return Err(Error::invalid("condition", "cannot be combined with a lease_token").into());
        }
        let stale_ttl = match request.stale_ttl.as_ref() {
            None => Duration::ZERO,
            Some(stale) if stale.seconds == 0 && stale.nanos == 0 => Duration::ZERO,
            Some(stale) => Duration::from_millis(self.limits.required_ttl("stale_ttl", Some(stale))?.millis()),
        };
        if let Some(fenced) = Fenced::of(&self.limits, &space, request.fence.as_ref())? {
            if !lease_token.is_empty() {
                return Err(Error::invalid("fence", "cannot be combined with a lease_token").into());
            }
            self.store.fence_reaches(&space, &fenced, &[key])?;
            let entry = NewEntry {
                key,
                value: &request.value,
                ttl,
            };
            let write = FencedWrite::Set {
                entry,
                condition,
                stale_ttl,
            };
            let answer = self.store.fenced_write(&space, &fenced, write, deadline).await;
            self.written(&space, [key]);
            let stored = matches!(fence::counted(&self.meter, answer)?, FencedAnswer::Stored(true));
            if stored {
                self.meter.record(|metrics| metrics.cache_writes.inc());
            }
            return Ok(Response::new(SetResponse { stored }));
        }
        let options = SetOptions {
            condition,
            stale_ttl,
            lease_token,
        };
        let written = self
            .store
            .set(&space, key, &request.value, ttl, options, deadline)
            .await;
        self.written(&space, [key]);
        let stored = match written? {
            Written::Stored => true,
            Written::NotStored => false,
            Written::LeaseLost => {
                return Err(Error::FailedPrecondition(
                    Reason::LeaseLost,
                    "the fill lease is no longer this token's: it ran out (and may have passed to another caller), \
                     or a write or Delete of the key ended it; nothing was stored"
                        .to_owned(),
                )
                .into());
            }
        };
        if stored {
            self.meter.record(|metrics| metrics.cache_writes.inc());
        }
        Ok(Response::new(SetResponse { stored }))
    }

    async fn set_many(&self, request: Request<SetManyRequest>) -> Result<Response<SetManyResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::writing(&request, request.get_ref().entries.len())?;
        let request = request.into_inner();
        self.limits.batch("entries", request.entries.len())?;
        let mut entries = Vec::with_capacity(request.entries.len());
        for (i, entry) in request.entries.iter().enumerate() {
            let key = self.limits.key(&format!("entries[{i}].key"), &entry.key)?;
            self.limits.value(&format!("entries[{i}].value"), &entry.value)?;
            let ttl = self
                .limits
                .ttl_or_default(&format!("entries[{i}].ttl"), entry.ttl.as_ref())?;
            entries.push(NewEntry {
                key,
                value: &entry.value,
                ttl,
            });
        }
        let keys: Vec<&str> = entries.iter().map(|entry| entry.key).collect();
        if let Some((first, other)) = self.store.cross_slot(&space, &keys) {
            return Err(cross_slot("entries", "SetMany", &keys, first, other).into());
        }
        let fenced = Fenced::of(&self.limits, &space, request.fence.as_ref())?;
        if let Some(fenced) = &fenced {
            self.store.fence_reaches(&space, fenced, &keys)?;
        }
        if !entries.is_empty() {
            match &fenced {
                Some(fenced) => {
                    let written = self
                        .store
                        .fenced_write(&space, fenced, FencedWrite::SetMany(&entries), deadline)
                        .await;
                    self.written(&space, keys);
                    fence::counted(&self.meter, written)?;
                }
                None => {
                    let written = self.store.set_many(&space, &entries, deadline).await;
                    self.written(&space, keys);
                    written?;
                }
            }
            self.meter
                .record(|metrics| metrics.cache_writes.inc_by(entries.len() as u64));
        }
        let stored = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        Ok(Response::new(SetManyResponse { stored }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let keys = self.keys("keys", &request.keys)?;
        let deleted = match Fenced::of(&self.limits, &space, request.fence.as_ref())? {
            _ if keys.is_empty() => 0,
            Some(fenced) => {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                self.store.fence_reaches(&space, &fenced, &keys)?;
                let removed = self.store.fenced_remove(&space, &fenced, &keys, false, deadline).await;
                self.written(&space, keys.iter().copied());
                fence::counted(&self.meter, removed)?.0
            }
            None => {
                let deleted = self.store.delete(&space, keys, deadline).await;
                self.written(&space, keys.iter().map(String::as_str));
                deleted?
            }
        };
        Ok(Response::new(DeleteResponse {
            deleted: u32::try_from(deleted).unwrap_or(u32::MAX),
        }))
    }

    async fn take(&self, request: Request<TakeRequest>) -> Result<Response<TakeResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let key = self.limits.key("key", &request.key)?;
        let taken = match Fenced::of(&self.limits, &space, request.fence.as_ref())? {
            Some(fenced) => {
                self.store.fence_reaches(&space, &fenced, &[key])?;
                let removed = self.store.fenced_remove(&space, &fenced, &[key], true, deadline).await;
                self.written(&space, [key]);
                fence::counted(&self.meter, removed)?.1
            }
            None => {
                let taken = self.store.take(&space, key, deadline).await;
                self.written(&space, [key]);
                taken?
            }
        };
        let response = match taken {
            Some(value) => TakeResponse { found: true, value },
            None => TakeResponse::default(),
        };
        self.read(response.found);
        Ok(Response::new(response))
    }

    async fn increment(&self, request: Request<IncrementRequest>) -> Result<Response<IncrementResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::writing(&request, 1)?;
        let request = request.into_inner();
        let key = self.limits.key("key", &request.key)?;
        let ttl = self.limits.ttl_or_default("ttl", request.ttl.as_ref())?;
        let value = match Fenced::of(&self.limits, &space, request.fence.as_ref())? {
            Some(fenced) => {
                self.store.fence_reaches(&space, &fenced, &[key])?;
                let write = FencedWrite::Increment {
                    key,
                    delta: request.delta,
                    ttl,
                };
                let answer = self.store.fenced_write(&space, &fenced, write, deadline).await;
                self.written(&space, [key]);
                match fence::counted(&self.meter, answer)? {
                    FencedAnswer::Counted(value) => value,
                    _ => return Err(Error::Internal("a fenced increment answered no count".to_owned()).into()),
                }
            }
            None => {
                let value = self.store.increment(&space, key, request.delta, ttl, deadline).await;
                self.written(&space, [key]);
                value?
            }
        };
        Ok(Response::new(IncrementResponse { value }))
    }

    async fn expire(&self, request: Request<ExpireRequest>) -> Result<Response<ExpireResponse>, Status> {
        let deadline = deadline(request.metadata(), self.settings.operation_timeout)?;
        let space = Caller::of(&request)?.space.clone();
        let request = request.into_inner();
        let key = self.limits.key("key", &request.key)?;
        let ttl = self.limits.required_ttl("ttl", request.ttl.as_ref())?;
        let found = match Fenced::of(&self.limits, &space, request.fence.as_ref())? {
            Some(fenced) => {
                self.store.fence_reaches(&space, &fenced, &[key])?;
                let answer = self
                    .store
                    .fenced_write(&space, &fenced, FencedWrite::Expire { key, ttl }, deadline)
                    .await;
                self.written(&space, [key]);
                matches!(fence::counted(&self.meter, answer)?, FencedAnswer::Found(true))
            }
            None => {
                let found = self.store.expire(&space, key, ttl, deadline).await;
                self.written(&space, [key]);
                found?
            }
        };
        Ok(Response::new(ExpireResponse { found }))
    }
}
