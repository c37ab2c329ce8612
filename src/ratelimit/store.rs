//! The rate limiter's Redis side: one script decides every limit of a request
//! and consumes their cost, all or nothing, in one round trip.
//!
//! Group commit: while a script call is in flight, the requests that arrive (on
//! one Redis Cluster slot) queue, and go together in the next call, decided one
//! after the other in arrival order exactly as if sent one by one. A lone request
//! goes at once; there is no timer. Under load this divides the script calls,
//! their parsing and their system calls by the batch size, on both sides.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    sync::oneshot,
    time::{Instant, timeout_at},
};

use crate::{
    error::Error,
    redis::{Effect, Invocation, KeySpace, LuaScript, Op, Redis},
    telemetry::Meter,
};

/// Script calls one lane may have in flight before requests queue for the next.
const CALLS_IN_FLIGHT: usize = 1;

static RATELIMIT: LuaScript = LuaScript::new("ratelimit", include_str!("../scripts/ratelimit.lua"));

/// The rate limiter's scripts, for loading into Redis ahead of the first request.
pub fn scripts() -> [&'static LuaScript; 1] {
    [&RATELIMIT]
}

/// How a limit is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// GCRA.
    TokenBucket,
    /// A count per aligned window.
    FixedWindow,
    /// The two-window weighted approximation.
    SlidingWindow,
}

impl Algorithm {
    /// Every algorithm, for clearing all of a key's state.
    pub const ALL: [Algorithm; 3] = [Algorithm::TokenBucket, Algorithm::FixedWindow, Algorithm::SlidingWindow];

    /// The number the script knows it by.
    pub fn code(self) -> u8 {
        match self {
            Algorithm::TokenBucket => 1,
            Algorithm::FixedWindow => 2,
            Algorithm::SlidingWindow => 3,
        }
    }

    /// The last segment of its state key.
    pub fn key_suffix(self) -> &'static str {
        match self {
            Algorithm::TokenBucket => "tb",
            Algorithm::FixedWindow => "fw",
            Algorithm::SlidingWindow => "sw",
        }
    }
}

/// One limit to decide, already validated.
#[derive(Debug, Clone)]
pub struct LimitCheck<'a> {
    /// The user's key.
    pub key: &'a str,
    /// How to count.
    pub algorithm: Algorithm,
    /// Units per period (1 ..= period in microseconds).
    pub limit: u64,
    /// The period in microseconds (at least 1000).
    pub period_micros: u64,
    /// Units to consume; 0 decides as for 1 without consuming.
    pub cost: u64,
    /// Whether the limit is decided and consumed on its own, outside the
    /// all-or-nothing of the others (Envoy's shadow and quota modes).
    pub alone: bool,
}

/// One limit's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether this limit allows the request.
    pub allowed: bool,
    /// Units left.
    pub remaining: u64,
    /// Time until the full limit is available again.
    pub reset_after: Duration,
    /// Time until a denied request could pass: zero when allowed, `None` when never.
    pub retry_after: Option<Duration>,
}

/// One limit as the script takes it, owning its key: a queued request outlives
/// the borrows of its handler's call.
#[derive(Debug, Clone)]
struct Limit {
    redis_key: String,
    algorithm: u8,
    limit: u64,
    period_micros: u64,
    cost: u64,
    /// Stands alone (Envoy's shadow and quota modes) rather than all or nothing.
    alone: bool,
}

impl Limit {
    fn of(space: &KeySpace, check: &LimitCheck<'_>) -> Limit {
        Limit {
            redis_key: redis_key(space, check),
            algorithm: check.algorithm.code(),
            limit: check.limit,
            period_micros: check.period_micros,
            cost: check.cost,
            alone: check.alone,
        }
    }
}

/// The requests of one lane (a Cluster slot; everything on one node) waiting for
/// the call in flight to end.
#[derive(Default)]
struct Lane {
    in_flight: usize,
    queue: Vec<Queued>,
}

struct Queued {
    limits: Vec<Limit>,
    deadline: Instant,
    answer: oneshot::Sender<Result<Vec<Decision>, Error>>,
}

/// Rate-limit state in Redis, under keys from [`KeySpace::ratelimit`].
#[derive(Clone)]
pub struct RateLimitStore {
    redis: Redis,
    lanes: Arc<Mutex<HashMap<u16, Lane>>>,
    meter: Meter,
}

/// Hands a lane's turn on when its call ends, however it ends (a caller that
/// went away included): the queued requests go as the next call, or the lane
/// has one call fewer in flight.
struct Turn<'s> {
    store: &'s RateLimitStore,
    lane: u16,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.store.hand_on(self.lane);
    }
}

impl RateLimitStore {
    /// A store on the shared connections, counting its calls in `meter`.
    pub fn new(redis: Redis, meter: Meter) -> RateLimitStore {
        RateLimitStore {
            redis,
            lanes: Arc::new(Mutex::new(HashMap::new())),
            meter,
        }
    }

    /// Sends the requests queued on `lane` as one call (on a task of its own,
    /// which hands on again when it ends), or frees the lane's turn.
    fn hand_on(&self, lane: u16) {
        let batch: Vec<Queued> = {
            let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(state) = lanes.get_mut(&lane) else {
                return;
            };
            // Requests whose caller stopped waiting are dropped before they are sent.
            state.queue.retain(|queued| !queued.answer.is_closed());
            if state.queue.is_empty() {
                state.in_flight = state.in_flight.saturating_sub(1);
                if state.in_flight == 0 {
                    lanes.remove(&lane);
                }
                return;
            }
            std::mem::take(&mut state.queue)
        };
        let store = self.clone();
        tokio::spawn(async move {
            let _turn = Turn { store: &store, lane };
            let deadline = batch
                .iter()
                .map(|queued| queued.deadline)
                .max()
                .unwrap_or_else(Instant::now);
            let requests: Vec<&[Limit]> = batch.iter().map(|queued| queued.limits.as_slice()).collect();
            let mut answers = match store.call(&requests, deadline).await {
                Ok(decisions) => decisions.into_iter().map(Ok).collect(),
                Err(error) => vec![Err(error); batch.len()],
            };
            for (queued, answer) in batch.into_iter().zip(answers.drain(..)) {
                let _ = queued.answer.send(answer);
            }
        });
    }

    /// Decides `limits` (one request's, in one slot): at once if the lane is free,
    /// else with the next call.
    async fn decide(&self, limits: Vec<Limit>, deadline: Instant) -> Result<Vec<Decision>, Error> {
        let lane = limits.first().map_or(0, |limit| self.redis.lane(&limit.redis_key));
        let mut limits = Some(limits);
        let queued = {
            let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            let state = lanes.entry(lane).or_default();
            if state.in_flight < CALLS_IN_FLIGHT {
                state.in_flight += 1;
                None
            } else {
                let (answer, answered) = oneshot::channel();
                state.queue.push(Queued {
                    limits: limits.take().unwrap_or_default(),
                    deadline,
                    answer,
                });
                Some(answered)
            }
        };
        let Some(answered) = queued else {
            let _turn = Turn { store: self, lane };
            let limits = limits.unwrap_or_default();
            let mut decisions = self.call(&[&limits], deadline).await?;
            return decisions
                .pop()
                .ok_or_else(|| Error::Internal("a rate-limit script answered no request".to_owned()));
        };
        let started = Instant::now();
        match timeout_at(deadline, answered).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Error::Internal("a batched rate-limit call was dropped".to_owned())),
            // It may be in a call already sent: it may have applied.
            Err(_) => Err(Error::Timeout {
                waited: started.elapsed(),
                effect: Effect::Write,
            }),
        }
    }

    /// On a Cluster, the positions of two of `checks` whose state lives in
    /// different slots, so that they cannot be decided together atomically.
    pub fn cross_slot(&self, space: &KeySpace, checks: &[LimitCheck<'_>]) -> Option<(usize, usize)> {
        let redis_keys: Vec<String> = checks.iter().map(|check| redis_key(space, check)).collect();
        self.redis.first_cross_slot(&redis_keys)
    }

    /// Decides every limit and, if all allow, consumes every cost, atomically.
    ///
    /// On a Redis Cluster, limits whose state lives in different slots are decided
    /// by one script per slot, concurrently, so all-or-nothing holds within each
    /// slot only (CheckMany refuses such requests; Envoy's descriptors accept it).
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`]; after a timeout the cost may have been consumed.
    pub async fn check(
        &self,
        space: &KeySpace,
        checks: &[LimitCheck<'_>],
        deadline: Instant,
    ) -> Result<Vec<Decision>, Error> {
        let redis_keys: Vec<String> = checks.iter().map(|check| redis_key(space, check)).collect();
        let groups = self.redis.group_by_slot(&redis_keys);
        if groups.len() <= 1 {
            return self.check_together(space, checks, deadline).await;
        }
        let answers = futures_util::future::try_join_all(groups.iter().map(|group| {
            let subset: Vec<LimitCheck<'_>> = group.iter().map(|&index| checks[index].clone()).collect();
            async move { self.check_together(space, &subset, deadline).await }
        }))
        .await?;
        let mut decisions: Vec<Option<Decision>> = vec![None; checks.len()];
        for (group, answer) in groups.iter().zip(answers) {
            for (&index, decision) in group.iter().zip(answer) {
                decisions[index] = Some(decision);
            }
        }
        decisions
            .into_iter()
            .map(|decision| {
                decision.ok_or_else(|| Error::Internal("a rate-limit script answered too few limits".to_owned()))
            })
            .collect()
    }

    /// Decides `checks`, all in one slot, with one script call (shared with
    /// the requests queued beside it).
    async fn check_together(
        &self,
        space: &KeySpace,
        checks: &[LimitCheck<'_>],
        deadline: Instant,
    ) -> Result<Vec<Decision>, Error> {
        let limits = checks.iter().map(|check| Limit::of(space, check)).collect();
        self.decide(limits, deadline).await
    }

    /// One script call deciding `requests` in order; the decisions of each.
    async fn call(&self, requests: &[&[Limit]], deadline: Instant) -> Result<Vec<Vec<Decision>>, Error> {
        let invocation = batch_invocation(requests);
        let replies: Vec<(i64, i64, i64, i64)> = self
            .redis
            .run(Op::write(RATELIMIT.name()), deadline, &invocation)
            .await?;
        self.meter.record(|metrics| {
            metrics.ratelimit_batches.inc();
            metrics.ratelimit_batched_requests.inc_by(requests.len() as u64);
        });
        let wanted: usize = requests.iter().map(|limits| limits.len()).sum();
        if replies.len() != wanted {
            return Err(Error::Internal(
                "a rate-limit script answered too few limits".to_owned(),
            ));
        }
        let mut replies = replies
            .into_iter()
            .map(|(allowed, remaining, reset_after, retry_after)| Decision {
                allowed: allowed == 1,
                remaining: u64::try_from(remaining).unwrap_or(0),
                reset_after: micros(reset_after),
                retry_after: (retry_after >= 0).then(|| micros(retry_after)),
            });
        Ok(requests
            .iter()
            .map(|limits| replies.by_ref().take(limits.len()).collect())
            .collect())
    }

    /// Clears the state of the limiters of `key` with `limit` per `period_micros`
    /// under `algorithms`; returns whether any existed.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn reset(
        &self,
        space: &KeySpace,
        key: &str,
        limit: u64,
        period_micros: u64,
        algorithms: &[Algorithm],
        deadline: Instant,
    ) -> Result<bool, Error> {
        let mut command = redis::cmd("UNLINK");
        for algorithm in algorithms {
            command.arg(space.ratelimit(key, algorithm.key_suffix(), limit, period_micros));
        }
        let removed: u64 = self.redis.run(Op::write("ratelimit_reset"), deadline, &command).await?;
        Ok(removed > 0)
    }
}

/// The script call deciding one request's `checks` alone, as
/// [`RateLimitStore::check`] sends it when nothing else is queued.
pub fn invocation(space: &KeySpace, checks: &[LimitCheck<'_>]) -> Invocation {
    let limits: Vec<Limit> = checks.iter().map(|check| Limit::of(space, check)).collect();
    batch_invocation(&[&limits])
}

/// The script call deciding `requests` one after the other, each its own group.
fn batch_invocation(requests: &[&[Limit]]) -> Invocation {
    let mut invocation = RATELIMIT.prepare();
    for (index, limits) in requests.iter().enumerate() {
        let group = index + 1;
        for limit in limits.iter() {
            invocation
                .key(&limit.redis_key)
                .arg(limit.algorithm)
                .arg(limit.limit)
                .arg(limit.period_micros)
                .arg(limit.cost)
                .arg(if limit.alone { 0 } else { group });
        }
    }
    invocation
}

fn micros(micros: i64) -> Duration {
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

/// The key holding one limiter's state.
fn redis_key(space: &KeySpace, check: &LimitCheck<'_>) -> String {
    space.ratelimit(
        check.key,
        check.algorithm.key_suffix(),
        check.limit,
        check.period_micros,
    )
}
