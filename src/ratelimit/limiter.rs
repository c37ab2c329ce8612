//! The rate limiter both rate-limit APIs decide through: the native
//! `RateLimitService` and Envoy's. It asks Redis within the limiter's budget
//! and answers from the outage policy when Redis cannot decide in time.

use std::time::Duration;

use tonic::{Status, metadata::MetadataMap};

use super::{
    lease::Leases,
    store::{Decision, LimitCheck, RateLimitStore},
};
use crate::{
    config::{Config, OutagePolicy},
    context::Context,
    error::Error,
    redis::KeySpace,
    request::{Limits, budget, caller_budget},
    telemetry::{Meter, Metrics, ThrottledLog},
    time::duration_to_proto,
};
use tokio::sync::Semaphore;

/// The largest limit and cost: keeps every count exact in the script's doubles.
pub const MAX_LIMIT: u64 = 1_000_000_000;
/// Below this much time left, Redis is not asked at all: the policy answers.
const MIN_REDIS_BUDGET: Duration = Duration::from_millis(1);

static POLICY_ALLOWED: ThrottledLog =
    ThrottledLog::new("rate-limit checks allowed by the outage policy (fail open), not decided by Redis");
static POLICY_DENIED: ThrottledLog =
    ThrottledLog::new("rate-limit checks denied by the outage policy (fail closed), not decided by Redis");

/// The rate limiter's settings, from the configuration.
#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    /// The default outage policy.
    pub on_unavailable: OutagePolicy,
    /// Longest wait for Redis in one check.
    pub timeout: Duration,
    /// Longest wait for Redis in a Reset.
    pub operation_timeout: Duration,
    /// Longest period a check may ask for.
    pub max_period: Duration,
    /// Longest wait a check may ask for.
    pub max_wait: Duration,
    /// Most checks waiting for their turn at once.
    pub max_waiters: usize,
    /// Most limits in one CheckMany.
    pub max_batch: usize,
    /// What a policy denial tells the caller to wait: the health probe interval,
    /// after which the service knows more.
    pub outage_retry_after: Duration,
}

impl From<&Config> for RateLimitSettings {
    fn from(config: &Config) -> RateLimitSettings {
        RateLimitSettings {
            on_unavailable: config.ratelimit_on_unavailable,
            timeout: config.ratelimit_timeout,
            operation_timeout: config.operation_timeout,
            max_period: config.ratelimit_max_period,
            max_wait: config.ratelimit_max_wait,
            max_waiters: config.ratelimit_max_waiters,
            max_batch: config.ratelimit_max_batch,
            outage_retry_after: config.health_interval,
        }
    }
}

/// How a request was decided.
pub enum Outcome {
    /// By Redis, one decision per limit.
    Decided(Vec<Decision>),
    /// By the outage policy: allowed or not.
    Policy(bool),
}

/// How a check that may wait was decided.
pub enum Waiting {
    /// By Redis: the decision, answered after `waited`.
    Decided {
        /// The decision.
        decision: Decision,
        /// How long the answer waited for the cost to fit.
        waited: Duration,
    },
    /// By the outage policy: allowed or not.
    Policy(bool),
}

/// Decides limits in Redis, or by the outage policy when Redis cannot.
pub struct Limiter {
    store: RateLimitStore,
    limits: Limits,
    settings: RateLimitSettings,
    meter: Meter,
    /// A place for each check waiting for its turn.
    waiters: std::sync::Arc<Semaphore>,
    /// The slices of limits this instance decides in memory.
    leases: Leases,
    /// Turns true when the server drains: waiting callers are answered then.
    draining: tokio::sync::watch::Receiver<bool>,
}

impl Limiter {
    /// Where the limiter's figures go.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// A limiter over the context's Redis.
    pub fn new(context: &Context, settings: RateLimitSettings) -> Limiter {
        Limiter {
            store: RateLimitStore::new(context.redis.clone(), context.meter.clone()),
            limits: context.limits.clone(),
            waiters: std::sync::Arc::new(Semaphore::new(settings.max_waiters)),
            leases: Leases::default(),
            draining: context.draining.clone(),
            settings,
            meter: context.meter.clone(),
        }
    }

    /// The store the limits are kept in.
    pub fn store(&self) -> &RateLimitStore {
        &self.store
    }

    /// The request size limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The settings from the configuration.
    pub fn settings(&self) -> &RateLimitSettings {
        &self.settings
    }

    /// Asks Redis within the rate limiter's budget; falls back to `policy` when
    /// the last connection attempt failed, the caller's deadline is too near, or
    /// Redis fails, is full, or does not answer in time.
    ///
    /// # Errors
    /// What Redis answered that is not an outage (a script's refusal, a key of
    /// the wrong type): the caller's or the service's error, not the policy's.
    pub async fn decide(
        &self,
        space: &KeySpace,
        metadata: &MetadataMap,
        checks: &[LimitCheck<'_>],
        policy: OutagePolicy,
    ) -> Result<Outcome, Status> {
        let allowed = policy == OutagePolicy::FailOpen;
        let outcome = match budget(metadata, self.settings.timeout) {
            Ok(budget) if budget >= MIN_REDIS_BUDGET => {
                let deadline = tokio::time::Instant::now() + budget;
                match self.store.check(space, checks, deadline).await {
                    Ok(decisions) => Outcome::Decided(decisions),
                    Err(error) if error.is_outage() => by_policy(allowed, &error),
                    Err(error) => return Err(error.into()),
                }
            }
            Ok(_) | Err(_) => by_policy(allowed, &Error::DeadlineExceeded),
        };
        Ok(self.count(outcome))
    }

    /// Decides `checks` as [`Limiter::decide`] does, from slices of their limits
    /// this instance leases from Redis (see [`Leases`]): in memory while a slice
    /// lasts. A request refused by one limit puts back what the others took.
    /// Token buckets and fixed windows; a request that looks without consuming
    /// (a cost of 0) is decided exactly.
    ///
    /// # Errors
    /// As [`Limiter::decide`].
    pub async fn decide_leased(
        &self,
        space: &KeySpace,
        metadata: &MetadataMap,
        checks: &[LimitCheck<'_>],
        policy: OutagePolicy,
    ) -> Result<Outcome, Status> {
        if checks.iter().any(|check| check.cost == 0) {
            return self.decide(space, metadata, checks, policy).await;
        }
        let allowed = policy == OutagePolicy::FailOpen;
        let deadline = match budget(metadata, self.settings.timeout) {
            Ok(budget) if budget >= MIN_REDIS_BUDGET => tokio::time::Instant::now() + budget,
            Ok(_) | Err(_) => return Ok(self.count(by_policy(allowed, &Error::DeadlineExceeded))),
        };
        let mut taken = Vec::with_capacity(checks.len());
        for check in checks {
            let answer = self.leases.decide(&self.store, space, check, deadline).await;
            let failure = match answer {
                Ok(Some(one)) => {
                    taken.push(one);
                    continue;
                }
                Ok(None) => None,
                Err(error) => Some(error),
            };
            for one in taken {
                self.leases.give_back(one);
            }
            return match failure {
                // No room for more slices: decided exactly instead.
                None => self.decide(space, metadata, checks, policy).await,
                Some(error) if error.is_outage() => Ok(self.count(by_policy(allowed, &error))),
                Some(error) => Err(error.into()),
            };
        }
        if !taken.iter().all(super::lease::Taken::usable) {
            // A slice taken from ended while a later limit was leased: its units
            // may no longer be admitted, so the request is decided exactly.
            for one in taken {
                self.leases.give_back(one);
            }
            return self.decide(space, metadata, checks, policy).await;
        }
        let decisions: Vec<Decision> = taken.iter().map(|one| one.decision.clone()).collect();
        if !decisions.iter().all(|decision| decision.allowed) {
            for one in taken {
                self.leases.give_back(one);
            }
        }
        Ok(self.count(Outcome::Decided(decisions)))
    }

    /// Counts how a request was decided.
    fn count(&self, outcome: Outcome) -> Outcome {
        let result = match &outcome {
            Outcome::Decided(decisions) if decisions.iter().all(|decision| decision.allowed) => "allowed",
            Outcome::Decided(_) => "denied",
            Outcome::Policy(true) => "policy_allowed",
            Outcome::Policy(false) => "policy_denied",
        };
        self.meter
            .record(|metrics| Metrics::count(&metrics.ratelimit_decisions, result));
        outcome
    }

    /// Decides `check` for a caller that may wait up to `wait` for its cost to
    /// fit (see `CheckRequest.wait`): the cost is counted at once against the
    /// moment it fits, and the answer held until then. The wait is cut to what
    /// the caller's deadline leaves after Redis's answer. `None` when every
    /// waiter's place is taken: the caller is then decided at once.
    ///
    /// # Errors
    /// As [`Limiter::decide`].
    pub async fn waiting(
        &self,
        space: &KeySpace,
        metadata: &MetadataMap,
        check: &LimitCheck<'_>,
        wait: Duration,
        policy: OutagePolicy,
    ) -> Result<Option<Waiting>, Status> {
        let Ok(_place) = self.waiters.clone().try_acquire_owned() else {
            return Ok(None);
        };
        let allowed = policy == OutagePolicy::FailOpen;
        let budget = match budget(metadata, self.settings.timeout) {
            Ok(budget) if budget >= MIN_REDIS_BUDGET => budget,
            Ok(_) | Err(_) => {
                return Ok(Some(
                    self.count_waiting(by_policy_waiting(allowed, &Error::DeadlineExceeded)),
                ));
            }
        };
        let wait = match caller_budget(metadata)? {
            Some(left) => wait.min(left.saturating_sub(budget)),
            None => wait,
        };
        let deadline = tokio::time::Instant::now() + budget;
        let turn = match self
            .store
            .wait(space, check, wait, deadline, self.settings.operation_timeout)
            .await
        {
            Ok(turn) => turn,
            Err(error) if error.is_outage() => return Ok(Some(self.count_waiting(by_policy_waiting(allowed, &error)))),
            Err(error) => return Err(error.into()),
        };
        if let Some(give_back) = turn.give_back {
            // Dropped here, when the caller goes first, it gives the cost back.
            let moment = tokio::time::Instant::now() + turn.delay;
            let mut draining = self.draining.clone();
            tokio::select! {
                () = tokio::time::sleep_until(moment) => give_back.disarm(),
                () = async {
                    if draining.wait_for(|draining| *draining).await.is_err() {
                        // No drain will ever come.
                        std::future::pending::<()>().await;
                    }
                } => {
                    // The server stops: the cost goes back before it does, and the
                    // caller is told when to ask again (another instance, then).
                    give_back.send().await;
                    return Ok(Some(self.count_waiting(Waiting::Decided {
                        decision: Decision {
                            allowed: false,
                            retry_after: Some(moment.saturating_duration_since(tokio::time::Instant::now())),
                            ..turn.decision
                        },
                        waited: Duration::ZERO,
                    })));
                }
            }
        }
        Ok(Some(self.count_waiting(Waiting::Decided {
            decision: turn.decision,
            waited: turn.delay,
        })))
    }

    /// Counts how a waiting check was decided.
    fn count_waiting(&self, waiting: Waiting) -> Waiting {
        let result = match &waiting {
            Waiting::Decided { decision, waited } if decision.allowed && !waited.is_zero() => "waited",
            Waiting::Decided { decision, .. } if decision.allowed => "allowed",
            Waiting::Decided { .. } => "denied",
            Waiting::Policy(true) => "policy_allowed",
            Waiting::Policy(false) => "policy_denied",
        };
        self.meter
            .record(|metrics| Metrics::count(&metrics.ratelimit_decisions, result));
        waiting
    }

    /// What an answer of the outage policy tells the caller to wait.
    pub fn policy_retry_after(&self, allowed: bool) -> Option<prost_types::Duration> {
        Some(duration_to_proto(if allowed {
            Duration::ZERO
        } else {
            self.settings.outage_retry_after
        }))
    }
}

/// The policy's answer to a check that may wait, logged as [`by_policy`].
fn by_policy_waiting(allowed: bool, cause: &Error) -> Waiting {
    by_policy(allowed, cause);
    Waiting::Policy(allowed)
}

/// The policy's answer, logged with what kept Redis from deciding.
fn by_policy(allowed: bool, cause: &Error) -> Outcome {
    let log = if allowed { &POLICY_ALLOWED } else { &POLICY_DENIED };
    log.record_because(cause);
    Outcome::Policy(allowed)
}
