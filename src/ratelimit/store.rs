//! The rate limiter's Redis side: one script decides every limit of a request
//! and consumes their cost, all or nothing, in one round trip.
//!
//! Group commit ([`crate::redis::batch`]): requests that arrive while a call is
//! in flight go together in the next call, decided one after the other in
//! arrival order exactly as if sent one by one.

use std::time::Duration;

use tokio::time::Instant;

use super::calendar::Calendar;
use crate::{
    error::{Effect, Error},
    redis::{Batcher, Calls, Invocation, KeySpace, LuaScript, Op, Redis},
    telemetry::Meter,
};

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
    /// How it counts beside the request's other limits.
    pub counting: Counting,
    /// For a fixed window aligned to a calendar (then `period_micros` is 0).
    pub calendar: Option<Calendar>,
}

impl LimitCheck<'_> {
    /// What tells one limiter from another: two checks share state only when
    /// all of it is equal.
    pub fn identity(&self) -> (&str, Algorithm, u64, u64, Option<&Calendar>) {
        (
            self.key,
            self.algorithm,
            self.limit,
            self.period_micros,
            self.calendar.as_ref(),
        )
    }

    /// The period as the script takes it: microseconds, or a calendar window's
    /// boundaries around this machine's now (the script picks the window by the
    /// Redis clock).
    fn period_argument(&self) -> String {
        match &self.calendar {
            None => self.period_micros.to_string(),
            Some(calendar) => calendar
                .boundaries(jiff::Timestamp::now())
                .iter()
                .map(|instant| (instant.as_microsecond() - SCRIPT_EPOCH_MICROS).to_string())
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// The scripts' time origin, 2024-01-01 UTC, in microseconds of Unix time.
const SCRIPT_EPOCH_MICROS: i64 = 1_704_067_200_000_000;

/// What the script answers for a calendar limit whose boundaries, computed
/// by this machine's clock, do not hold the Redis clock's now.
const SKEWED: i64 = -3;

/// The error for [`SKEWED`].
fn clocks_disagree() -> Error {
    Error::Internal(
        "this machine's clock and the Redis server's differ by more than a calendar window: synchronise them (NTP)"
            .to_owned(),
    )
}

/// How a limit counts beside the other limits of its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    /// All or nothing with the request's other limits: consumed only if every
    /// one of them allows.
    Together,
    /// On its own (Envoy's shadow mode): consumed whenever it allows itself, and
    /// never what refuses the request.
    Alone,
    /// Never what refuses the request, as [`Counting::Alone`], but on a counter
    /// one of the request's limits that count together also counts: consumed only
    /// if they are all allowed too, so a refused request consumes nothing there.
    Follows,
    /// Together with the request's other limits, but refusing it only when every
    /// quota limit of the request is over (Envoy's quota mode).
    Quota,
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
    period: String,
    cost: u64,
    counting: Counting,
}

impl Limit {
    fn of(space: &KeySpace, check: &LimitCheck<'_>) -> Limit {
        Limit {
            redis_key: redis_key(space, check),
            algorithm: check.algorithm.code(),
            limit: check.limit,
            period: check.period_argument(),
            cost: check.cost,
            counting: check.counting,
        }
    }
}

/// Rate-limit state in Redis, under keys from [`KeySpace::ratelimit`].
#[derive(Clone)]
pub struct RateLimitStore {
    redis: Redis,
    batches: Batcher<Scripts>,
}

/// The script calls that decide batches of requests.
#[derive(Clone)]
struct Scripts {
    redis: Redis,
    meter: Meter,
}

impl Calls for Scripts {
    type Request = Vec<Limit>;
    /// The decisions of a request's limits, or [`Error::OutOfMemory`] when one
    /// of them could not be decided: its new state would not fit in a full Redis.
    type Answer = Result<Vec<Decision>, Error>;

    /// One script call deciding `requests` in order; the decisions of each.
    async fn call(&self, requests: &[&Vec<Limit>], deadline: Instant) -> Result<Vec<Self::Answer>, Error> {
        let invocation = batch_invocation(requests.iter().map(|limits| limits.as_slice()), self.redis.roomy());
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
        let mut replies = replies.into_iter();
        Ok(requests
            .iter()
            .map(|limits| {
                let replies: Vec<(i64, i64, i64, i64)> = replies.by_ref().take(limits.len()).collect();
                if replies.iter().any(|(allowed, ..)| *allowed == SKEWED) {
                    return Err(clocks_disagree());
                }
                if replies.iter().any(|(allowed, ..)| *allowed < 0) {
                    return Err(Error::OutOfMemory);
                }
                Ok(replies
                    .into_iter()
                    .map(|(allowed, remaining, reset_after, retry_after)| Decision {
                        allowed: allowed == 1,
                        remaining: u64::try_from(remaining).unwrap_or(0),
                        reset_after: micros(reset_after),
                        retry_after: (retry_after >= 0).then(|| micros(retry_after)),
                    })
                    .collect())
            })
            .collect())
    }

    fn effect(&self) -> Effect {
        Effect::Write
    }
}

impl RateLimitStore {
    /// A store on the shared connections, counting its calls in `meter`.
    pub fn new(redis: Redis, meter: Meter) -> RateLimitStore {
        RateLimitStore {
            batches: Batcher::new(Scripts {
                redis: redis.clone(),
                meter,
            }),
            redis,
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
        let limits: Vec<Limit> = checks.iter().map(|check| Limit::of(space, check)).collect();
        let lane = limits.first().map_or(0, |limit| self.redis.lane(&limit.redis_key));
        self.batches.run(lane, limits, deadline).await?
    }

    /// Clears the state of `check`'s limiter under each of `algorithms`;
    /// returns whether any existed.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`].
    pub async fn reset(
        &self,
        space: &KeySpace,
        check: &LimitCheck<'_>,
        algorithms: &[Algorithm],
        deadline: Instant,
    ) -> Result<bool, Error> {
        let mut command = redis::cmd("UNLINK");
        for &algorithm in algorithms {
            command.arg(redis_key(
                space,
                &LimitCheck {
                    algorithm,
                    ..check.clone()
                },
            ));
        }
        let removed: u64 = self.redis.run(Op::write("ratelimit_reset"), deadline, &command).await?;
        Ok(removed > 0)
    }
}

/// A budget operation on one limit (see `ratelimit.lua`).
pub enum Budget<'a> {
    /// Count the check's cost now and make reservation `id`, lasting `ttl`.
    Reserve {
        /// The reservation's id.
        id: &'a str,
        /// How long it waits for Commit or Cancel.
        ttl: std::time::Duration,
    },
    /// Settle reservation `id` at the check's cost.
    Commit {
        /// The reservation's id.
        id: &'a str,
        /// Charge an excess beyond the limit.
        allow_debt: bool,
    },
    /// Settle reservation `id` at no cost.
    Cancel {
        /// The reservation's id.
        id: &'a str,
    },
    /// Count the check's cost without deciding.
    Report,
}

/// How a reservation was settled.
pub struct Settled {
    /// Settled before this call: the figures are that settlement's.
    pub before: bool,
    /// What it cost in the end.
    pub charged: u64,
    /// What was given back of the estimate.
    pub refunded: u64,
    /// Units left now.
    pub remaining: u64,
    /// How long until the limit is whole again.
    pub reset_after: Duration,
}

/// What a budget operation answered.
pub enum BudgetAnswer {
    /// Reserve: the decision on the estimate.
    Reserved(Decision),
    /// Commit or Cancel: how the reservation was settled; `None` when unknown.
    Settled(Option<Settled>),
    /// The reservation was counted under another limit.
    OtherLimit,
    /// Report: where the limit stands.
    Reported {
        /// Units left now (0 in debt).
        remaining: u64,
        /// How long until the limit is whole again.
        reset_after: Duration,
        /// How long until a cost of 1 fits.
        retry_after: Duration,
    },
    /// A full Redis could not take the new state.
    NotDecided,
}

impl RateLimitStore {
    /// Runs one budget operation on `check`'s limit, in one script call.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`]. A Reserve is sent again after a
    /// lost connection (its record makes the repeat count nothing); Commit and
    /// Cancel too (a settled reservation answers the same); a Report is not.
    pub async fn budget(
        &self,
        space: &KeySpace,
        check: &LimitCheck<'_>,
        operation: Budget<'_>,
        deadline: Instant,
    ) -> Result<BudgetAnswer, Error> {
        let mut invocation = RATELIMIT.prepare();
        invocation.key(redis_key(space, check));
        let (name, op) = match &operation {
            Budget::Reserve { .. } => ("reserve", Op::replayable("ratelimit_reserve")),
            Budget::Commit { .. } => ("commit", Op::idempotent("ratelimit_commit")),
            Budget::Cancel { .. } => ("cancel", Op::idempotent("ratelimit_cancel")),
            Budget::Report => ("report", Op::write("ratelimit_report")),
        };
        if let Budget::Reserve { id, .. } | Budget::Commit { id, .. } | Budget::Cancel { id } = &operation {
            invocation.key(space.ratelimit_reservation(check.key, id));
        }
        invocation
            .arg(name)
            .arg(check.algorithm.code())
            .arg(check.limit)
            .arg(check.period_argument())
            .arg(check.cost);
        match &operation {
            Budget::Reserve { ttl, .. } => {
                invocation.arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
            }
            Budget::Commit { allow_debt, .. } => {
                invocation.arg(if *allow_debt { "1" } else { "0" });
            }
            Budget::Cancel { .. } | Budget::Report => {}
        }
        let reply: Vec<i64> = self.redis.run(op, deadline, &invocation).await?;
        if reply.first() == Some(&SKEWED) {
            return Err(clocks_disagree());
        }
        let micros = |value: i64| Duration::from_micros(u64::try_from(value).unwrap_or(0));
        let count = |value: i64| u64::try_from(value).unwrap_or(0);
        Ok(match (operation, reply.as_slice()) {
            (Budget::Reserve { .. }, [-1, ..]) => BudgetAnswer::NotDecided,
            (Budget::Reserve { .. }, [allowed, remaining, reset, retry]) => BudgetAnswer::Reserved(Decision {
                allowed: *allowed == 1,
                remaining: count(*remaining),
                reset_after: micros(*reset),
                retry_after: (*retry >= 0).then(|| micros(*retry)),
            }),
            (Budget::Commit { .. } | Budget::Cancel { .. }, [0]) => BudgetAnswer::Settled(None),
            (Budget::Commit { .. } | Budget::Cancel { .. }, [-2]) => BudgetAnswer::OtherLimit,
            (Budget::Commit { .. } | Budget::Cancel { .. }, [1, charged, refunded, remaining, reset, before]) => {
                BudgetAnswer::Settled(Some(Settled {
                    before: *before == 1,
                    charged: count(*charged),
                    refunded: count(*refunded),
                    remaining: count(*remaining),
                    reset_after: micros(*reset),
                }))
            }
            (Budget::Report, [-1, ..]) => BudgetAnswer::NotDecided,
            (Budget::Report, [remaining, reset, retry]) => BudgetAnswer::Reported {
                remaining: count(*remaining),
                reset_after: micros(*reset),
                retry_after: micros(*retry),
            },
            (_, reply) => {
                return Err(Error::Internal(format!("unexpected ratelimit budget answer {reply:?}")));
            }
        })
    }
}

/// A waiting check's turn (see [`RateLimitStore::wait`]).
pub struct Turn {
    /// The decision: allowed now, allowed after `delay`, or refused.
    pub decision: Decision,
    /// How long to wait before answering "allowed".
    pub delay: Duration,
    /// What gives the cost back if the caller goes before its moment: armed
    /// when `delay` is not zero.
    pub give_back: Option<GiveBack>,
}

/// Gives a waiting caller's cost back when dropped armed: the caller went
/// before its moment came. Sent once, never repeated (a refund sent twice
/// would give back twice), with the boundaries of the time it is sent.
pub struct GiveBack {
    redis: Redis,
    check: Option<OwnedCheck>,
    timeout: Duration,
}

/// What an unwait call names, owned: the call outlives the request.
struct OwnedCheck {
    redis_key: String,
    algorithm: Algorithm,
    limit: u64,
    period_micros: u64,
    calendar: Option<Calendar>,
    cost: u64,
    mark: i64,
    stamp: i64,
}

impl GiveBack {
    /// The caller got its answer: nothing to give back.
    pub fn disarm(mut self) {
        self.check = None;
    }

    /// Gives the cost back now, and waits for Redis to answer.
    pub async fn send(mut self) {
        if let Some(check) = self.check.take() {
            give_back(&self.redis, check, Instant::now() + self.timeout).await;
        }
    }
}

impl Drop for GiveBack {
    fn drop(&mut self) {
        let Some(check) = self.check.take() else {
            return;
        };
        let redis = self.redis.clone();
        let deadline = Instant::now() + self.timeout;
        tokio::spawn(give_back(redis, check, deadline));
    }
}

async fn give_back(redis: impl std::borrow::Borrow<Redis>, check: OwnedCheck, deadline: Instant) {
    let limit = LimitCheck {
        key: "",
        algorithm: check.algorithm,
        limit: check.limit,
        period_micros: check.period_micros,
        cost: check.cost,
        counting: Counting::Together,
        calendar: check.calendar,
    };
    let mut invocation = RATELIMIT.prepare();
    invocation
        .key(&check.redis_key)
        .arg("unwait")
        .arg(check.algorithm.code())
        .arg(check.limit)
        .arg(limit.period_argument())
        .arg(check.cost)
        .arg(check.mark)
        .arg(check.stamp);
    let given: Result<Vec<i64>, Error> = redis
        .borrow()
        .run(Op::write("ratelimit_unwait"), deadline, &invocation)
        .await;
    if let Err(error) = given {
        tracing::debug!(%error, "a waiting rate-limit check's cost was not given back");
    }
}

impl RateLimitStore {
    /// Decides `check` for a caller that may wait up to `wait` for its cost to
    /// fit: when it fits within the wait, the cost is counted now against the
    /// moment it fits, after every caller counted before, in one script call.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`] ([`Error::OutOfMemory`] when a
    /// full Redis could not take new state). Not sent again after a lost
    /// connection: the cost may have been counted.
    pub async fn wait(
        &self,
        space: &KeySpace,
        check: &LimitCheck<'_>,
        wait: Duration,
        deadline: Instant,
        give_back_timeout: Duration,
    ) -> Result<Turn, Error> {
        let redis_key = redis_key(space, check);
        let period = check.period_argument();
        let mut invocation = RATELIMIT.prepare();
        invocation
            .key(&redis_key)
            .arg("wait")
            .arg(check.algorithm.code())
            .arg(check.limit)
            .arg(&period)
            .arg(check.cost)
            .arg(u64::try_from(wait.as_micros()).unwrap_or(u64::MAX));
        let reply: Vec<i64> = self
            .redis
            .run(Op::write("ratelimit_wait"), deadline, &invocation)
            .await?;
        let &[allowed, remaining, reset, retry, delay, mark, stamp] = reply.as_slice() else {
            return Err(match reply.first() {
                Some(&SKEWED) => clocks_disagree(),
                Some(-1) => Error::OutOfMemory,
                _ => Error::Internal(format!("unexpected ratelimit wait answer {reply:?}")),
            });
        };
        match allowed {
            SKEWED => return Err(clocks_disagree()),
            -1 => return Err(Error::OutOfMemory),
            _ => {}
        }
        let delay = micros(delay);
        let give_back = (allowed == 1 && !delay.is_zero()).then(|| GiveBack {
            redis: self.redis.clone(),
            check: Some(OwnedCheck {
                redis_key,
                algorithm: check.algorithm,
                limit: check.limit,
                period_micros: check.period_micros,
                calendar: check.calendar.clone(),
                cost: check.cost,
                mark,
                stamp,
            }),
            timeout: give_back_timeout,
        });
        Ok(Turn {
            decision: Decision {
                allowed: allowed == 1,
                remaining: u64::try_from(remaining).unwrap_or(0),
                reset_after: micros(reset),
                retry_after: (retry >= 0).then(|| micros(retry)),
            },
            delay,
            give_back,
        })
    }
}

/// What a lease call answered (see [`RateLimitStore::lease`]).
pub struct Leased {
    /// The decision on the request's cost; `remaining` is what is left
    /// outside every slice.
    pub decision: Decision,
    /// The units counted for this instance: the cost and the slice beyond it
    /// (0 when refused).
    pub granted: u64,
    /// How long the slice may be used, from when the call was sent.
    pub life: Duration,
    /// What to send back with the slice's unused units.
    pub back: Back,
}

/// Units of a slice given back, and what its lease answered to place them: a
/// token bucket's TAT after the slice (mark), a fixed window's window (mark)
/// and state stamp.
#[derive(Debug, Clone, Copy, Default)]
pub struct Back {
    /// How many.
    pub units: u64,
    /// Where they were counted.
    pub mark: i64,
    /// In which state (fixed windows).
    pub stamp: i64,
}

/// One lease call, owning all it sends, so that it can run to its end after
/// the request that asked for it has gone (its units are counted either way).
pub struct LeaseCall {
    redis: Redis,
    invocation: Invocation,
}

impl LeaseCall {
    /// Sends the call.
    ///
    /// # Errors
    /// Redis failures and timeouts, as [`Error`] ([`Error::OutOfMemory`] when a
    /// full Redis could not take new state). Not sent again after a lost
    /// connection: the units may have been counted.
    pub async fn run(self, deadline: Instant) -> Result<Leased, Error> {
        let reply: Vec<i64> = self
            .redis
            .run(Op::write("ratelimit_lease"), deadline, &self.invocation)
            .await?;
        let &[allowed, granted, remaining, reset, retry, life, mark, stamp] = reply.as_slice() else {
            return Err(match reply.first() {
                Some(&SKEWED) => clocks_disagree(),
                Some(-1) => Error::OutOfMemory,
                _ => Error::Internal(format!("unexpected ratelimit lease answer {reply:?}")),
            });
        };
        Ok(Leased {
            decision: Decision {
                allowed: allowed == 1,
                remaining: u64::try_from(remaining).unwrap_or(0),
                reset_after: micros(reset),
                retry_after: (retry >= 0).then(|| micros(retry)),
            },
            granted: u64::try_from(granted).unwrap_or(0),
            life: micros(life),
            back: Back { units: 0, mark, stamp },
        })
    }
}

impl RateLimitStore {
    /// The call that gives `back` units of this instance's last slice back,
    /// then decides `check`'s cost and, when it fits, counts it and up to
    /// `more` units beyond it that fit too (at most a quarter of what is free),
    /// to be used within `life`: one script call.
    pub fn lease(&self, space: &KeySpace, check: &LimitCheck<'_>, more: u64, life: Duration, back: Back) -> LeaseCall {
        let mut invocation = RATELIMIT.prepare();
        invocation
            .key(redis_key(space, check))
            .arg("lease")
            .arg(check.algorithm.code())
            .arg(check.limit)
            .arg(check.period_argument())
            .arg(check.cost)
            .arg(more)
            .arg(u64::try_from(life.as_micros()).unwrap_or(u64::MAX))
            .arg(back.units)
            .arg(back.mark)
            .arg(back.stamp);
        LeaseCall {
            redis: self.redis.clone(),
            invocation,
        }
    }

    /// The key of `check`'s state: what identifies its limiter.
    pub fn state_key(space: &KeySpace, check: &LimitCheck<'_>) -> String {
        redis_key(space, check)
    }
}

/// The script call deciding one request's `checks` alone, as
/// [`RateLimitStore::check`] sends it when nothing else is queued.
pub fn invocation(space: &KeySpace, checks: &[LimitCheck<'_>]) -> Invocation {
    let limits: Vec<Limit> = checks.iter().map(|check| Limit::of(space, check)).collect();
    batch_invocation([limits.as_slice()], false)
}

/// The script call deciding `requests` one after the other, each its own group;
/// `roomy` when the last probe found Redis well below its maxmemory.
fn batch_invocation<'l>(requests: impl IntoIterator<Item = &'l [Limit]>, roomy: bool) -> Invocation {
    let mut invocation = RATELIMIT.prepare();
    for (index, limits) in requests.into_iter().enumerate() {
        let group = index + 1;
        for limit in limits.iter() {
            invocation
                .key(&limit.redis_key)
                .arg(limit.algorithm)
                .arg(limit.limit)
                .arg(&limit.period)
                .arg(limit.cost)
                .arg(match limit.counting {
                    Counting::Together => group.to_string(),
                    Counting::Alone => "0".to_owned(),
                    Counting::Follows => format!("f{group}"),
                    Counting::Quota => format!("q{group}"),
                });
        }
    }
    if roomy {
        invocation.arg("roomy");
    }
    invocation
}

fn micros(micros: i64) -> Duration {
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

/// The key holding one limiter's state.
fn redis_key(space: &KeySpace, check: &LimitCheck<'_>) -> String {
    match &check.calendar {
        None => space.ratelimit(
            check.key,
            check.algorithm.key_suffix(),
            check.limit,
            check.period_micros,
        ),
        Some(calendar) => space.ratelimit(
            check.key,
            &format!("{}.{}", check.algorithm.key_suffix(), calendar.identity()),
            check.limit,
            0,
        ),
    }
}
